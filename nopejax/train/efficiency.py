"""How well a run uses its devices: FLOPs per token, the peak FLOP/s MFU is measured against,
peak memory, and the goodput account of where a run's wall time went.

The bench (`python -m nopejax.bench`) and every training log row use the same counts, so a
row's `mfu` and the bench's agree for the same step.

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

import contextlib
import functools
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

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


@functools.cache
def cpu_matmul_peak(n=2048, reps=3):
  """FLOP/s of the best of `reps` fp32 [n, n] @ [n, n] matmuls: this machine's practical roof,
  measured once per process (about half a second)."""
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


def peak_flops_total(devices=None, given=None):
  """(peak FLOP/s of `devices` together, where it came from). A process's CPU devices (several
  with --xla_force_host_platform_device_count) share its cores: each process counts once."""
  devices = jax.devices() if devices is None else devices
  per_device, source = peak_flops(devices[0], given)
  if devices[0].platform == "cpu":
    return per_device * len({d.process_index for d in devices}), source
  return per_device * len(devices), source


def peak_memory(device):
  """(bytes, source): the device allocator's peak where it keeps one, else the process's max RSS."""
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process max RSS"


def mfu_fields(spec, seq_len, tokens_per_s, peak_total):
  """FLOPs per token and MFU by both attention conventions (see the module docstring)."""
  flops = flops_per_token(spec, seq_len)
  flops_full = flops_per_token(spec, seq_len, masked=False)
  return {
    "flops_per_token": flops,
    "flops_per_token_full_attention": flops_full,
    "mfu": tokens_per_s * flops / peak_total,
    "mfu_full_attention": tokens_per_s * flops_full / peak_total,
  }


# ----------------------------------------------------------------------------- goodput

# Where a training process's wall time goes, by where its host thread is. `step` is productive:
# the loop's time outside the other kinds (dispatching steps, waiting for their results, the
# log rows). `data` is the wait for the next batch, which overlaps device work while the host
# runs ahead, so an input pipeline that keeps up shows about 0. `compile` includes loading from
# the compilation cache, `restore` includes a fresh init, `checkpoint` is the blocking part of
# saves and the wait for the last one. `other` is what no kind claims: building the mesh, the
# input pipeline and the writers, and exporting params at the end.
GOODPUT_KINDS = ("compile", "restore", "checkpoint", "data", "eval", "profile", "step")


class Goodput:
  """The account of one (re)start of a run: seconds per kind, from the moment it is made."""

  def __init__(self):
    self.started = time.perf_counter()
    self.seconds = dict.fromkeys(GOODPUT_KINDS, 0.0)

  @contextlib.contextmanager
  def timing(self, kind):
    start = time.perf_counter()
    try:
      yield
    finally:
      self.seconds[kind] += time.perf_counter() - start

  def start_laps(self):
    self._lap_time, self._lap_claimed = time.perf_counter(), sum(self.seconds.values())

  def lap(self):
    """Credits to `step` the wall time since the last lap (or `start_laps`) that no other kind
    claimed: in the loop, the host is either stepping or in one of the timed kinds."""
    now, claimed = time.perf_counter(), sum(self.seconds.values())
    self.seconds["step"] += max(now - self._lap_time - (claimed - self._lap_claimed), 0.0)
    self._lap_time, self._lap_claimed = now, sum(self.seconds.values())

  def goodput(self):
    """The share of wall time so far spent in productive steps."""
    return self.seconds["step"] / max(time.perf_counter() - self.started, 1e-9)

  def account(self):
    """{"goodput", "time_<kind>_s" for each kind, "time_other_s", "time_total_s"}."""
    total = time.perf_counter() - self.started
    row = {"goodput": self.seconds["step"] / max(total, 1e-9)}
    row.update({f"time_{kind}_s": s for kind, s in self.seconds.items()})
    row["time_other_s"] = max(total - sum(self.seconds.values()), 0.0)
    row["time_total_s"] = total
    return row


def account_table(account):
  """The account as aligned text lines, largest first, for the end of a run."""
  total = account["time_total_s"]
  kinds = [*GOODPUT_KINDS, "other"]
  parts = sorted(((account[f"time_{k}_s"], k) for k in kinds), reverse=True)
  lines = [f"goodput {account['goodput']:.1%} of {total:.1f} s wall:"]
  lines += [f"  {kind:<10} {s:9.2f} s  {s / max(total, 1e-9):6.1%}" for s, kind in parts]
  return "\n".join(lines)


class Live:
  """The efficiency fields of a training log row: MFU by both attention conventions against
  the devices' peak (the table, or on a CPU the measured matmul roof) and the peak memory of
  this process's first device (its allocator's peak, else the process's max RSS)."""

  def __init__(self, spec, seq_len):
    self.flops = flops_per_token(spec, seq_len)  # once: every row's MFU uses the same counts
    self.flops_full = flops_per_token(spec, seq_len, masked=False)
    self.device = jax.local_devices()[0]
    try:
      self.peak_total, self.peak_source = peak_flops_total()
    except ValueError as e:  # a device kind the table lacks: rows carry no MFU, the run goes on
      logging.warning("%s; the log rows carry no mfu", e)
      self.peak_total, self.peak_source = None, "unknown"

  def startup(self):
    """The fields that do not change during a run (the first row carries them)."""
    return {
      "flops_per_token": self.flops,
      "flops_per_token_full_attention": self.flops_full,
      "peak_flops": self.peak_total or 0.0,
      "peak_source": self.peak_source,
      "memory_source": peak_memory(self.device)[1],
    }

  def fields(self, tokens_per_s):
    row = {"peak_memory_gib": peak_memory(self.device)[0] / 2**30}
    if self.peak_total:
      row["mfu"] = tokens_per_s * self.flops / self.peak_total
      row["mfu_full_attention"] = tokens_per_s * self.flops_full / self.peak_total
    return row
