"""The train-step benchmark behind `python -m nopejax.bench`.

Times the real jitted train step (train/build.py) (the config's model, optimizer and mesh) on
synthetic tokens and prints one final JSON line: `tokens_per_s`, `step_s` (median), `compile_s`,
`flops_per_token`, `mfu`, peak memory and the attention path of every layer. `--compare_torch`
also trains transformers' SmolLM3 (PyTorch, same shapes, AdamW after clipping, same batch),
interleaving its steps with ours so machine load hits both alike, and reports the ratio.

FLOPs per token (useful work, counted the way PaLM's appendix B does, but honest about masks):
  6 * (non-embedding matmul params + d_model * vocab for the output head)
  + sum over layers of 12 * num_heads * head_dim * mean attended keys
The head counts whether or not it is tied: its matmul is computed either way; the input lookup
is not a matmul and does not count. A causal row of length T attends (T + 1) / 2 keys on
average, a sliding window W min(t + 1, W) at query t, a chunk W (t mod W) + 1: masked-out work
is not counted, so the figure does not reward computing it. For a causal layer that is
MaxText's convention since 2025 (causal attention halved); `mfu_full_attention` and
`flops_per_token_full_attention` count every query against all T keys instead (PaLM's
12 * layers * heads * head_dim * T, masks ignored), the convention of older MFU tables.
"""

import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from nopejax.model import decoder
from nopejax.train import build as build_lib

# Dense bf16 peak FLOP/s per chip (public specs; H100/H200: SXM, without sparsity). Matched
# against jax's device_kind, first hit wins.
PEAK_FLOPS = {
  "v4": 275e12,
  "v5e": 197e12,
  "v5p": 459e12,
  "v6e": 918e12,
  "A100": 312e12,
  "H100": 989e12,
  "H200": 989e12,
}
_DEVICE_KINDS = (
  ("TPU v5 lite", "v5e"),
  ("TPU v5e", "v5e"),
  ("TPU v5p", "v5p"),
  ("TPU v5", "v5p"),
  ("TPU v6 lite", "v6e"),
  ("TPU v6e", "v6e"),
  ("TPU v4", "v4"),
  ("A100", "A100"),
  ("H100", "H100"),
  ("H200", "H200"),
)


CPU_BF16_NOTE = (
  "bf16 on a CPU: XLA's CPU dots do not reach AMX or AVX512-BF16 (every XLA CPU flag tried, on "
  "an Intel Xeon with AMX: 165-273 GFLOP/s where PyTorch's oneDNN reached 1.1-2.75 TFLOP/s), "
  "so model.dtype=bfloat16 trains no faster than float32 here; see the README's Performance."
)

# ----------------------------------------------------------------------------- FLOPs


def attended_keys(layer, length):
  """Mean number of keys a query attends to in a causal row of `length` under the layer's window."""
  t = np.arange(length)
  if layer.window == "sliding":
    keys = np.minimum(t + 1, layer.window_size)
  elif layer.window == "chunked":
    keys = t % layer.window_size + 1
  else:
    keys = t + 1
  return float(keys.mean())


def matmul_params(spec):
  """Weights that multiply activations once per token: every layer's projections and the head."""
  attn = spec.d_model * spec.head_dim * (2 * spec.num_heads + 2 * spec.num_kv_heads)
  mlp = 3 * spec.d_model * spec.d_ff
  return spec.num_layers * (attn + mlp) + spec.d_model * spec.vocab_size


def flops_per_token(spec, length, masked=True):
  """Training FLOPs per token (forward + backward), see the module docstring. masked=False:
  every query attends to all `length` keys, whatever its mask (PaLM's count, which MaxText used
  before it halved causal attention in 2025)."""
  attn = sum(
    12 * spec.num_heads * spec.head_dim * (attended_keys(layer, length) if masked else length)
    for layer in spec.layers
  )
  return 6 * matmul_params(spec) + attn


# ----------------------------------------------------------------------------- peaks


def chip_name(device_kind):
  for pattern, name in _DEVICE_KINDS:
    if pattern.lower() in device_kind.lower():
      return name
  return None


def cpu_matmul_peak(n=2048, reps=5):
  """FLOP/s of the best of `reps` fp32 [n, n] @ [n, n] matmuls: this machine's practical roof."""
  a = jnp.ones((n, n), jnp.float32)
  matmul = jax.jit(jnp.dot)
  matmul(a, a).block_until_ready()
  best = float("inf")
  for _ in range(reps):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best


def peak_flops(device, given=None):
  """(peak FLOP/s of one device, where it came from)."""
  if given:
    return float(given), "--peak_flops"
  name = chip_name(device.device_kind)
  if name:
    return PEAK_FLOPS[name], f"table:{name} bf16"
  if device.platform == "cpu":
    return cpu_matmul_peak(), "measured fp32 matmul"
  raise ValueError(
    f"no peak FLOP/s known for device kind {device.device_kind!r}; "
    f"pass --peak_flops (known: {', '.join(PEAK_FLOPS)})"
  )


def peak_memory(device):
  """(bytes, source): the device allocator's peak where it keeps one, else the process's max RSS."""
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process max RSS"


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
  peak_per_device, peak_source = peak_flops(device, peak)
  peak_total = peak_per_device * jax.device_count()
  batch = synthetic_batch(spec.vocab_size, batch_size, seq_len, exp.train.seed)

  ours = JaxStepper(exp, batch)
  steppers = [ours]
  if compare_torch:
    steppers.append(TorchStepper(exp, batch))
  step_times = time_interleaved(steppers, steps, warmup)

  flops = flops_per_token(spec, seq_len)
  flops_full = flops_per_token(spec, seq_len, masked=False)

  def report(step_s, compile_s):
    return {
      "tokens_per_s": tokens / step_s,
      "step_s": step_s,
      "compile_s": compile_s,
      "flops_per_token": flops,
      "flops_per_token_full_attention": flops_full,
      "mfu": tokens / step_s * flops / peak_total,
      "mfu_full_attention": tokens / step_s * flops_full / peak_total,
    }

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
