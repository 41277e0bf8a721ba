"""Fine-tune imported weights: the model group comes from the imported workdir.

  python -m nopejax.hf import --hf_dir=/models/SmolLM3-3B --workdir=runs/smollm3-init
  python -m nopejax.train --config=configs/finetune.py:init_from=runs/smollm3-init \
      --workdir=runs/smollm3-ft --config.data.corpus=/data/my_text

The tokenizer is the imported `tokenizer.json` when the checkpoint had one, else bytes.
"""

import os

from nopejax import experiment, hf


def get_config(arg=None):
  a = experiment.parse_arg(
    arg, init_from="", steps=1000, seq_len=1024, batch_size=8, corpus="stdlib"
  )
  if not a.init_from:
    raise ValueError(
      "config arg init_from: give the workdir written by `python -m nopejax.hf "
      "import`, e.g. configs/finetune.py:init_from=runs/smollm3-init"
    )
  c = experiment.base_config()
  c.model = hf.workdir_model_config(a.init_from)  # shapes and layer pattern of the checkpoint
  c.train.init_from = a.init_from  # its params/ replace the random init
  tokenizer = os.path.join(a.init_from, "tokenizer.json")
  c.data.kind = "text"
  c.data.tokenizer = f"hf:{tokenizer}" if os.path.isfile(tokenizer) else "byte"
  c.data.corpus = a.corpus
  c.data.seq_len = a.seq_len
  c.data.batch_size = a.batch_size
  c.opt.lr = 2e-5  # fine-tuning: a small step from a good point
  c.opt.schedule = "cosine"
  c.opt.warmup_steps = min(100, a.steps)
  c.opt.weight_decay = 0.0
  c.train.steps = a.steps
  c.train.log_every = 10
  c.train.eval_every = 200
  c.train.checkpoint_every = 500
  return c
