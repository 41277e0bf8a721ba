"""Data: sources (tasks, passkey, corpora), tokenizers, and the pipeline that makes rows.

The `data` config group is validated once into a `DataSpec` (spec.py); everything here reads
that spec.
"""

from nopejax.data.examples import passkey_examples, task_examples, test_lengths, text_documents
from nopejax.data.pipeline import eval_iter, train_iter
from nopejax.data.spec import DataSpec, default_config, resolve, vocab_size

__all__ = [
  "DataSpec",
  "default_config",
  "eval_iter",
  "passkey_examples",
  "resolve",
  "task_examples",
  "test_lengths",
  "text_documents",
  "train_iter",
  "vocab_size",
]
