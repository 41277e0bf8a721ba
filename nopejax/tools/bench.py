"""The train-step benchmark behind `python -m nopejax.bench`.

Times the real jitted train step (train/build.py) (the config's model, optimizer and mesh) on
synthetic tokens and prints one final JSON line: `tokens_per_s`, `step_s` (median), `compile_s`,
`flops_per_token`, `mfu`, peak memory and the attention path of every layer. `--compare_torch`
also trains transformers' SmolLM3 (PyTorch, same shapes, AdamW after clipping, same batch),
interleaving its steps with ours so machine load hits both alike, and reports the ratio.

FLOPs per token and the peaks MFU is measured against: nopejax/train/efficiency.py.
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from nopejax.model import decoder
from nopejax.train import build as build_lib
from nopejax.train.efficiency import mfu_fields, peak_flops_total, peak_memory

CPU_BF16_NOTE = (
  "bf16 on a CPU: XLA's CPU dots do not reach AMX or AVX512-BF16 (every XLA CPU flag tried, on "
  "an Intel Xeon with AMX: 165-273 GFLOP/s where PyTorch's oneDNN reached 1.1-2.75 TFLOP/s), "
  "so model.dtype=bfloat16 trains no faster than float32 here; see the README's Performance."
)

# ----------------------------------------------------------------------------- steppers


def synthetic_batch(vocab_size, batch_size, seq_len, seed=0):
  """Random tokens of the train step's batch layout: one document per row, every token scored."""
  rng = np.random.default_rng(seed)
  shape = (batch_size, seq_len)
  return {
    "inputs": rng.integers(0, vocab_size, shape, dtype=np.int32),
    "targets": rng.integers(0, vocab_size, shape, dtype=np.int32),
    "segment_ids": np.ones(shape, np.int32),
    "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), shape).copy(),
    "loss_mask": np.ones(shape, np.float32),
  }


class JaxStepper:
  """The run's sharded, donated train step (train/build.py), compiled ahead of time; `step()`
  blocks."""

  def __init__(self, exp, batch):
    run = build_lib.build(exp)
    self.state = run.init_state()
    with run.context():
      self.batch = jax.device_put(batch, run.batch_sharding)
      start = time.perf_counter()
      self.compiled = run.train_step.lower(self.state, self.batch).compile()
      self.compile_s = time.perf_counter() - start

  def step(self):
    self.state, metrics = self.compiled(self.state, self.batch)
    return float(jax.block_until_ready(metrics["loss"]))

  def analysis(self):
    """XLA's own FLOP count and the program's temporary bytes."""
    out = {}
    cost = self.compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    if cost and "flops" in cost:
      out["xla_flops_per_step"] = float(cost["flops"])
    memory = self.compiled.memory_analysis()
    if memory is not None:
      out["temp_bytes"] = int(memory.temp_size_in_bytes)
    return out


class TorchStepper:
  """transformers' SmolLM3ForCausalLM with the same shapes and layer pattern, AdamW after
  clipping."""

  def __init__(self, exp, batch):
    import torch  # the hf extra; only --compare_torch needs it
    import transformers

    from nopejax import hf

    spec = exp.model
    hf.check_expressible(spec)
    hf_cfg = hf.hf_config(spec, "smollm3", "float32")
    torch.manual_seed(exp.train.seed)
    self.torch = torch
    self.model = transformers.SmolLM3ForCausalLM(transformers.SmolLM3Config.from_dict(hf_cfg))
    self.model.train()
    o = exp.opt
    self.opt = torch.optim.AdamW(
      self.model.parameters(), lr=o.lr, betas=(o.b1, o.b2), eps=o.eps, weight_decay=o.weight_decay
    )
    self.clip_norm = o.clip_norm
    self.autocast = spec.dtype == jnp.bfloat16
    self.inputs = torch.from_numpy(np.asarray(batch["inputs"], np.int64))
    self.targets = torch.from_numpy(np.asarray(batch["targets"], np.int64))
    self.compile_s = 0.0  # eager

  def step(self):
    torch = self.torch
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
      logits = self.model(input_ids=self.inputs, use_cache=False).logits
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), self.targets.flatten())
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    if self.clip_norm > 0:
      torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
    self.opt.step()
    return loss.detach().item()


def time_interleaved(steppers, steps, warmup):
  """Median seconds per step of each stepper, their steps alternating so load hits all alike."""
  for stepper in steppers:
    for _ in range(warmup):
      stepper.step()
  times = [[] for _ in steppers]
  for _ in range(steps):
    for stepper, out in zip(steppers, times):
      start = time.perf_counter()
      stepper.step()
      out.append(time.perf_counter() - start)
  return [statistics.median(t) for t in times]


# ----------------------------------------------------------------------------- the benchmark


def layer_paths(spec, length, backend=None, documents=True):
  """The attention path `auto` (or the config) gives each layer, as `index:scheme@window:path`;
  `documents`: whether rows pack several documents (`data.pack`)."""
  out = []
  for i, layer in enumerate(spec.layers):
    path = decoder.path_for(spec, layer, length, backend=backend, documents=documents)
    out.append(f"{i}:{layer}:{path}")
  return out


def run(exp, *, steps=20, warmup=2, peak=None, compare_torch=False):
  """Benchmarks the Experiment's train step; returns the report (and PyTorch's under "torch")."""
  spec = exp.model
  seq_len, batch_size = exp.data.seq_len, exp.data.batch_size
  tokens = seq_len * batch_size
  device = jax.devices()[0]
  peak_total, peak_source = peak_flops_total(given=peak)
  batch = synthetic_batch(spec.vocab_size, batch_size, seq_len, exp.train.seed)

  ours = JaxStepper(exp, batch)
  steppers = [ours]
  if compare_torch:
    steppers.append(TorchStepper(exp, batch))
  step_times = time_interleaved(steppers, steps, warmup)

  def report(step_s, compile_s):
    fields = {"tokens_per_s": tokens / step_s, "step_s": step_s, "compile_s": compile_s}
    return {**fields, **mfu_fields(spec, seq_len, tokens / step_s, peak_total)}

  result = report(step_times[0], ours.compile_s)
  memory, memory_source = peak_memory(device)
  result.update(
    peak_flops=peak_total,
    peak_source=peak_source,
    peak_memory_bytes=memory,
    memory_source=memory_source,
    backend=jax.default_backend(),
    device_kind=device.device_kind,
    num_devices=jax.device_count(),
    steps=steps,
    batch_size=batch_size,
    seq_len=seq_len,
    dtype=np.dtype(spec.dtype).name,
    remat=spec.remat,
    attention=layer_paths(spec, seq_len, documents=exp.data.pack),
    **ours.analysis(),
  )
  if result["backend"] == "cpu" and spec.dtype == jnp.bfloat16:
    result["note"] = CPU_BF16_NOTE
  if "xla_flops_per_step" in result:
    result["xla_flops_per_s"] = result["xla_flops_per_step"] / step_times[0]
  if compare_torch:
    result["torch"] = report(step_times[1], steppers[1].compile_s)
    result["jax_over_torch"] = result["tokens_per_s"] / result["torch"]["tokens_per_s"]
  return result
