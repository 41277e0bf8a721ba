"""Training memory and step time by sequence length: the issue's tiny model on the flash path.

  for n in 1024 2048 4096 8192 16384 32768 65536; do
    JAX_PLATFORMS=cpu python -m nopejax.bench --config=configs/long_context.py:seq_len=$n \
      --steps=2 --warmup=1
  done

4 layers x 64 wide in SmolLM3's pattern, one sequence per step, byte vocabulary. The bench feeds
synthetic tokens, so the data group only has to validate. `attention_impl=auto` takes the flash
path above model.flash_above tokens; `attention=reference` forces the O(T^2) einsum to compare.
"""

from nopejax import experiment


def get_config(arg=None):
  a = experiment.parse_arg(
    arg, seq_len=32768, batch_size=1, positions="smollm3", attention="auto", context=1
  )
  c = experiment.base_config()
  m = c.model
  m.vocab_size = 256
  m.d_model = 64
  m.num_layers = 4
  m.num_heads = 4
  m.num_kv_heads = 4
  m.d_ff = 256
  m.positions = a.positions
  m.attention_impl = a.attention
  c.mesh.context = a.context
  c.data.seq_len = a.seq_len
  c.data.batch_size = a.batch_size
  c.opt.lr = 1e-3
  c.opt.warmup_steps = 10
  c.train.steps = 1000
  c.train.progress = False
  return c
