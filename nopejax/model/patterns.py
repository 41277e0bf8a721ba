"""Per-layer positional schemes and attention windows, resolved in Python before tracing.

Syntax of `model.positions` (and `model.windows`): comma-separated tokens, either one per layer
or a period that is tiled over the depth. A positions token is `SCHEME[@WINDOW]`; a window is
`full`, `sliding:W` (a query sees the W most recent tokens, itself included) or `chunked:W`
(a query sees earlier tokens of its own W-aligned chunk). Presets name whole periods.
"""

import dataclasses
import math

from nopejax.model.schemes import SCHEMES

WINDOW_KINDS = ("full", "sliding", "chunked")
# Per-layer query scalings (`model.query_scaling`, tiled like windows); schemes/scaling.py.
QUERY_SCALINGS = ("none", "llama4", "ssmax", "headscale")

# Presets are periods; `{w}` is the window size given as `PRESET:W` (defaults below).
PRESETS = {
  # SmolLM3: RoPE in three layers of four; 0-indexed layers 3, 7, 11, ... are NoPE.
  "smollm3": ("rope,rope,rope,nope", None),
  # NoPE and RoPE alternating, NoPE first.
  "alternate": ("nope,rope", None),
  # Cohere Command A (RNoPE-SWA): three sliding-window RoPE layers, then one full NoPE layer.
  "rnope_swa": ("rope@sliding:{w},rope@sliding:{w},rope@sliding:{w},nope", 4096),
  # Llama 4 iRoPE: three chunked RoPE layers, then one global NoPE layer with query temperature.
  "llama4": ("rope@chunked:{w},rope@chunked:{w},rope@chunked:{w},nope", 8192),
}
# Presets whose NoPE layers use Llama 4's query temperature unless model.query_temperature says.
TEMPERATURE_PRESETS = ("llama4",)


@dataclasses.dataclass(frozen=True)
class LayerType:
  scheme: str  # a key of schemes.SCHEMES
  window: str = "full"  # one of WINDOW_KINDS
  window_size: int = 0  # tokens; 0 for full
  query_scaling: str = "none"  # one of QUERY_SCALINGS

  def __str__(self):
    window = "" if self.window == "full" else f"@{self.window}:{self.window_size}"
    scaling = "" if self.query_scaling == "none" else f"[{self.query_scaling}]"
    return self.scheme + window + scaling


def _split(text, key):
  if isinstance(text, (list, tuple)):
    tokens = [str(t).strip() for t in text]
  else:
    tokens = [t.strip() for t in str(text).split(",")]
  if not tokens or any(not t for t in tokens):
    raise ValueError(f"{key}: empty entry in {text!r}; expected comma-separated layer tokens")
  return tokens


def expand_preset(text):
  """`llama4:4096` -> the preset's period with its window size; other text unchanged."""
  if not isinstance(text, str):
    return text
  name, _, size = text.partition(":")
  if name not in PRESETS:
    return text
  period, default_size = PRESETS[name]
  return period.format(w=size or default_size)


def parse_window(token, key):
  kind, _, size = token.partition(":")
  if kind not in WINDOW_KINDS:
    raise ValueError(f"{key}: unknown window {token!r}; expected full, sliding:W or chunked:W")
  if kind == "full":
    if size:
      raise ValueError(f"{key}: window 'full' takes no size, got {token!r}")
    return kind, 0
  if not size.isdigit() or int(size) <= 0:
    raise ValueError(f"{key}: window {token!r} needs a positive integer size, e.g. {kind}:128")
  return kind, int(size)


def _tile(tokens, num_layers, key):
  if num_layers % len(tokens):
    raise ValueError(
      f"{key}: a period of {len(tokens)} layers does not divide model.num_layers={num_layers}"
    )
  return tokens * (num_layers // len(tokens))


def layer_types(positions, windows, num_layers, query_scaling="none", temperature=False):
  """Resolves the per-layer (scheme, window, query scaling) list from the config strings.

  `temperature` (model.query_temperature, or a preset's default): NoPE layers whose
  query_scaling is none take Llama 4's temperature.
  """
  pos_tokens = _tile(
    _split(expand_preset(positions), "model.positions"), num_layers, "model.positions"
  )
  win_tokens = _tile(_split(windows, "model.windows"), num_layers, "model.windows")
  scale_tokens = _tile(
    _split(query_scaling, "model.query_scaling"), num_layers, "model.query_scaling"
  )
  types = []
  for pos, win, scaling in zip(pos_tokens, win_tokens, scale_tokens):
    if scaling not in QUERY_SCALINGS:
      raise ValueError(
        f"model.query_scaling: unknown {scaling!r}; known: {', '.join(QUERY_SCALINGS)}"
      )
    scheme, at, own_window = pos.partition("@")
    if scheme not in SCHEMES:
      raise ValueError(f"model.positions: unknown scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    kind, size = parse_window(
      own_window if at else win, "model.positions" if at else "model.windows"
    )
    if temperature and scheme == "nope" and scaling == "none":
      scaling = "llama4"
    types.append(LayerType(scheme, kind, size, scaling))
  return tuple(types)


def period(types):
  """The shortest repeating period of the layer list (its length divides the depth)."""
  n = len(types)
  for p in range(1, n + 1):
    if n % p == 0 and all(types[i] == types[i % p] for i in range(n)):
      return types[:p]
  raise AssertionError("unreachable: the whole list is always a period")


def uses_temperature(positions, query_temperature):
  """Whether NoPE layers scale queries by Llama 4's temperature."""
  if query_temperature is not None:
    return bool(query_temperature)
  name = positions.partition(":")[0] if isinstance(positions, str) else ""
  return name in TEMPERATURE_PRESETS


def rotary_dim(head_dim, fraction):
  """Number of rotated dims per head; even and positive or a ValueError naming the key."""
  # Checked before rounding: int(round(nan)) would raise an error that names no key.
  dim = int(round(head_dim * fraction)) if math.isfinite(fraction) else 0
  if dim <= 0 or dim % 2 or dim > head_dim:
    raise ValueError(
      f"model.rope_fraction={fraction} gives {dim} rotated dims of head_dim={head_dim}; "
      "expected an even number in (0, head_dim]"
    )
  return dim
