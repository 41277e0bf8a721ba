"""A ~1B SmolLM3-shaped model in bf16 at 4096 tokens: the one-GPU MFU benchmark.

  bash launch/bench_gpu.sh            # python -m nopejax.bench --config=configs/bench_gpu_1b.py
  bash launch/bench_gpu.sh --dry-run  # print the command

About 0.97B non-embedding parameters (16 layers of 2048 wide, SwiGLU 8192, GQA 16/4 with
head_dim 128 so cuDNN flash attention applies) plus a 128256 x 2048 tied embedding.
"""

from nopejax import experiment


def get_config(arg=None):
  a = experiment.parse_arg(arg, seq_len=4096, batch_size=4, layers=16, remat="none")
  c = experiment.base_config()
  m = c.model
  m.vocab_size = 128256  # Llama 3 tokenizer, as SmolLM3
  m.d_model = 2048
  m.num_layers = a.layers  # 16: four SmolLM3 periods
  m.num_heads = 16
  m.num_kv_heads = 4  # GQA 4:1, as SmolLM3
  m.head_dim = 128  # cuDNN flash attention takes head_dim <= 128
  m.d_ff = 8192
  m.positions = "smollm3"  # rope,rope,rope,nope
  m.rope_theta = 5_000_000.0
  m.tie_embeddings = True
  m.dtype = "bfloat16"  # compute; fp32 master weights and AdamW state
  m.param_dtype = "float32"
  m.remat = a.remat  # none fits 4 x 4096 tokens in 80 GB; dots/full for larger batches
  m.max_len = 65536
  c.data.kind = "text"  # validated only: the bench feeds synthetic tokens
  c.data.tokenizer = "byte"
  c.data.seq_len = a.seq_len
  c.data.batch_size = a.batch_size
  c.data.pack = False  # the synthetic rows are one document each: cuDNN runs without a mask
  c.opt.lr = 2e-4
  c.opt.b2 = 0.95
  c.opt.clip_norm = 1.0
  c.opt.warmup_steps = 100
  c.train.steps = 1000
  c.train.progress = False
  c.mesh.data = -1
  return c
