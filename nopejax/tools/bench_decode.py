"""The decoding benchmark behind `python -m nopejax.bench --decode`.

Greedy generation with the KV cache (model/generate.py) from random prompts of
[batch, prompt_len] tokens: the prefill (one jitted program) and the decode loop (another, the
cache donated) are timed apart, each the median of `repeats` runs after a compiling one.
`--compare_torch` saves the same weights with `nopejax.hf.save`, runs transformers' `generate`
(greedy, its own KV cache, `min_new_tokens` so no row stops early) on the same prompts, times
its prefill as one forward pass, and reports the ratio and the share of generated tokens that
agree.

Rates: `prefill_tokens_per_s` = batch x prompt_len / prefill; `decode_tokens_per_s` = batch /
one decode step; `tokens_per_s` = batch x new_tokens / (prefill + decode loop), the whole
generate call, which is what the ratio compares.
"""

import statistics
import tempfile
import time

import jax
import numpy as np

from nopejax.model import api
from nopejax.model import generate as generate_lib


def _median_s(fn, repeats):
  """(median seconds of `repeats` calls after one untimed call, the last result)."""
  out = fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times), out


def _rates(batch_size, prompt_len, new_tokens, prefill_s, decode_s):
  return {
    "prefill_s": prefill_s,
    "prefill_tokens_per_s": batch_size * prompt_len / prefill_s,
    "decode_step_s": decode_s / max(new_tokens - 1, 1),
    "decode_tokens_per_s": batch_size * max(new_tokens - 1, 1) / decode_s,
    "tokens_per_s": batch_size * new_tokens / (prefill_s + decode_s),
  }


class JaxDecoder:
  """generate.prefill and generate.decode of the spec, timed apart."""

  def __init__(self, spec, params, prompts_BP, new_tokens, prefill_chunk):
    self.spec, self.params, self.new_tokens = spec, params, new_tokens
    self.prefill_chunk = prefill_chunk
    tokens, positions, segments, self.cache_len = generate_lib.layout(
      list(prompts_BP), new_tokens, prefill_chunk=prefill_chunk
    )
    self.inputs = tuple(jax.device_put(a) for a in (tokens, positions, segments))
    self.next_pos_B = jax.device_put(positions[:, -1] + 1)
    self.rng_N = jax.random.split(jax.random.key(0), new_tokens - 1)

  def prefill(self):
    last_BV, cache = generate_lib.prefill(
      self.params,
      *self.inputs,
      spec=self.spec,
      cache_len=self.cache_len,
      chunk=self.prefill_chunk,
    )
    return jax.block_until_ready((np.asarray(last_BV).argmax(-1).astype(np.int32), cache))

  def decode(self, first_B, cache):
    out, _ = generate_lib.decode(
      self.params,
      cache,
      first_B,
      self.next_pos_B,
      np.int32(self.inputs[0].shape[1]),
      self.rng_N,
      spec=self.spec,
      cache_len=self.cache_len,
      temperature=0.0,
    )
    return np.asarray(out)

  def run(self, repeats):
    prefill_s, (first_B, _) = _median_s(self.prefill, repeats)
    times = []
    for _ in range(repeats + 1):  # each decode donates its cache: a fresh prefill feeds it
      _, cache = self.prefill()
      start = time.perf_counter()
      rest = self.decode(first_B, cache)
      times.append(time.perf_counter() - start)
    tokens = np.concatenate([first_B[:, None], rest], axis=1)
    return prefill_s, statistics.median(times[1:]), tokens


class TorchDecoder:
  """transformers' `generate` on the same weights (nopejax.hf.save), greedy, with its cache."""

  def __init__(self, spec, params, prompts_BP, new_tokens):
    import torch  # the hf extra; only --compare_torch needs it
    import transformers

    from nopejax import hf

    self.torch, self.new_tokens = torch, new_tokens
    with tempfile.TemporaryDirectory() as directory:
      hf.save(directory, spec, params)
      self.model = transformers.AutoModelForCausalLM.from_pretrained(directory)
    self.model.eval()
    self.inputs = torch.from_numpy(np.asarray(prompts_BP, np.int64))

  def prefill(self):
    with self.torch.no_grad():
      return self.model(input_ids=self.inputs, use_cache=True).logits

  def generate(self):
    with self.torch.no_grad():
      out = self.model.generate(
        input_ids=self.inputs,
        attention_mask=self.torch.ones_like(self.inputs),
        max_new_tokens=self.new_tokens,
        min_new_tokens=self.new_tokens,
        do_sample=False,
        pad_token_id=0,
      )
    return out[:, self.inputs.shape[1] :].numpy()

  def run(self, repeats):
    prefill_s, _ = _median_s(self.prefill, repeats)
    total_s, tokens = _median_s(self.generate, repeats)
    return prefill_s, total_s - prefill_s, tokens


def run(
  exp,
  *,
  batch_size=8,
  prompt_len=128,
  new_tokens=128,
  repeats=3,
  prefill_chunk=generate_lib.PREFILL_CHUNK,
  compare_torch=False,
):
  """Benchmarks greedy KV-cache generation of the Experiment's model; returns the report."""
  spec = exp.model
  if new_tokens < 2:
    raise ValueError(f"--new_tokens: expected at least 2, got {new_tokens}")
  spec.check_length(prompt_len + new_tokens - 1, "--prompt_len + --new_tokens")
  params = api.init(spec, jax.random.key(exp.train.seed))
  rng = np.random.default_rng(exp.train.seed)
  prompts_BP = rng.integers(1, spec.vocab_size, (batch_size, prompt_len), dtype=np.int32)

  ours = JaxDecoder(spec, params, prompts_BP, new_tokens, prefill_chunk)
  prefill_s, decode_s, tokens = ours.run(repeats)
  result = _rates(batch_size, prompt_len, new_tokens, prefill_s, decode_s)
  result.update(
    batch_size=batch_size,
    prompt_len=prompt_len,
    new_tokens=new_tokens,
    prefill_chunk=prefill_chunk,
    dtype=np.dtype(spec.dtype).name,
    backend=jax.default_backend(),
    device_kind=jax.devices()[0].device_kind,
  )
  if compare_torch:
    torch_prefill_s, torch_decode_s, torch_tokens = TorchDecoder(
      spec, params, prompts_BP, new_tokens
    ).run(repeats)
    result["torch"] = _rates(batch_size, prompt_len, new_tokens, torch_prefill_s, torch_decode_s)
    result["jax_over_torch"] = result["tokens_per_s"] / result["torch"]["tokens_per_s"]
    result["tokens_equal"] = float(np.mean(tokens == torch_tokens))
  return result
