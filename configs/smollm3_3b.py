"""SmolLM3-3B's shape for TPU/GPU pods: 36 layers, RoPE in three of four (NoPE at 3, 7, ...).

  python -m nopejax.aot --config=configs/smollm3_3b.py --topology=v5p:2x2x1
  python -m nopejax.aot --config=configs/smollm3_3b.py:seq_len=65536,batch_size=4,context=2 \
      --topology=v5p:2x2x2   # 64k tokens per sequence, the sequence over 2 chips
  python -m nopejax.train --config=configs/smollm3_3b.py --workdir=gs://bucket/smollm3 \
      --config.data.tokenizer=hf:/path/to/tokenizer.json --config.data.corpus=/data/text
  # fine-tune released weights: python -m nopejax.hf import --hf_dir=D --workdir=W, then
  #   --config.train.init_from=W
"""

from nopejax import experiment


def get_config(arg=None):
  a = experiment.parse_arg(arg, seq_len=4096, batch_size=32, steps=100_000, context=1)
  c = experiment.base_config()
  m = c.model
  m.vocab_size = 128256  # Llama 3 tokenizer, as SmolLM3
  m.d_model = 2048
  m.num_layers = 36
  m.num_heads = 16
  m.num_kv_heads = 4  # GQA 4:1
  m.head_dim = 128
  m.d_ff = 11008
  m.positions = "smollm3"  # rope,rope,rope,nope: the period scanned 9 times
  m.rope_theta = 5_000_000.0  # the released config's theta (after long-context extension)
  m.tie_embeddings = True
  m.norm_eps = 1e-6
  m.dtype = "bfloat16"  # compute; parameters stay fp32 masters
  m.param_dtype = "float32"
  m.remat = "full"  # activations of 36 layers at 4k tokens would not fit otherwise
  m.max_len = 65536
  c.data.kind = "text"
  c.data.tokenizer = "byte"  # set data.tokenizer=hf:PATH/tokenizer.json for the real vocabulary
  c.data.seq_len = a.seq_len
  c.data.batch_size = a.batch_size
  c.opt.lr = 2e-4  # SmolLM3's peak
  c.opt.schedule = "wsd"  # SmolLM3 trained with warmup-stable-decay
  c.opt.warmup_steps = 2000
  c.opt.decay_fraction = 0.1
  c.opt.b2 = 0.95
  c.opt.weight_decay = 0.1
  c.opt.clip_norm = 1.0
  c.train.steps = a.steps
  c.train.log_every = 10
  c.train.eval_every = 1000
  c.train.checkpoint_every = 1000
  c.mesh.data = 1
  c.mesh.fsdp = -1  # ZeRO-3 style: parameters and optimizer state over every chip
  c.mesh.context = a.context  # context parallelism for long sequences
  c.mesh.tensor = 1
  return c
