"""The CPU throughput reference: nopejax vs transformers' SmolLM3 (PyTorch) at equal shapes.

  JAX_PLATFORMS=cpu python -m nopejax.bench --config=configs/bench_cpu.py --steps=20 --compare_torch

Shapes are small enough for a 2-core CPU and large enough that matmuls dominate. The bench feeds
synthetic random tokens of [batch_size, seq_len], so the data group only has to validate.
"""

from nopejax import experiment


def get_config(arg=None):
  a = experiment.parse_arg(arg, positions="smollm3", seq_len=256, batch_size=16, layers=4)
  c = experiment.base_config()
  m = c.model
  m.vocab_size = 256  # byte-sized vocabulary: the head is a small share of the FLOPs
  m.d_model = 256
  m.num_layers = a.layers  # 4: one SmolLM3 period (rope,rope,rope,nope)
  m.num_heads = 4
  m.num_kv_heads = 2  # GQA 2:1, as SmolLM3's grouped heads
  m.d_ff = 1024  # SwiGLU hidden: 4 x d_model
  m.positions = a.positions  # SmolLM3: NoPE at 0-indexed layer 3
  m.tie_embeddings = True  # SmolLM3 ties its head
  m.dtype = "float32"  # the CPU has no fast bf16; PyTorch runs fp32 too
  c.data.seq_len = a.seq_len
  c.data.batch_size = a.batch_size
  c.opt.lr = 1e-3
  c.opt.clip_norm = 1.0  # AdamW with global-norm clipping, as the PyTorch side
  c.opt.warmup_steps = 10
  c.train.steps = 1000
  c.train.progress = False
  return c
