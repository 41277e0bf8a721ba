"""Pattern parsing, presets, periods and the rotary width: Python values resolved before tracing."""

import pytest

from nopejax.model import patterns as layers
from nopejax.model import spec as config_lib
from nopejax.model.patterns import LayerType


def _schemes(positions, num_layers, windows="full"):
  return [t.scheme for t in layers.layer_types(positions, windows, num_layers)]


def test_a_period_is_tiled_over_the_depth():
  assert _schemes("rope,nope", 4) == ["rope", "nope", "rope", "nope"]
  assert _schemes("alibi", 3) == ["alibi"] * 3
  assert _schemes(["t5", "nope", "rope"], 3) == ["t5", "nope", "rope"]


def test_windows_tile_independently_and_a_positions_token_overrides_them():
  types = layers.layer_types("rope@chunked:8,nope", "sliding:4,full,full,sliding:2", 4)
  assert types == (
    LayerType("rope", "chunked", 8),
    LayerType("nope", "full", 0),
    LayerType("rope", "chunked", 8),
    LayerType("nope", "sliding", 2),
  )
  assert str(types[0]) == "rope@chunked:8" and str(types[1]) == "nope"


def test_period_is_the_shortest_repeat():
  types = layers.layer_types("rope,rope,rope,nope", "full", 8)
  assert layers.period(types) == types[:4]
  assert len(layers.period(layers.layer_types("rope,nope,rope,nope", "full", 4))) == 2
  assert len(layers.period(layers.layer_types("nope", "full", 6))) == 1
  mixed = layers.layer_types("rope", "full,full,sliding:4", 6)
  assert len(layers.period(mixed)) == 3


def test_preset_smollm3_puts_nope_at_layers_3_7_11():
  schemes = _schemes("smollm3", 12)
  assert [i for i, s in enumerate(schemes) if s == "nope"] == [3, 7, 11]
  assert set(schemes[:3]) == {"rope"}
  # transformers' SmolLM3 default: layer i uses RoPE iff (i + 1) % 4 != 0.
  assert [s == "rope" for s in schemes] == [bool((i + 1) % 4) for i in range(12)]


def test_preset_llama4_is_chunked_rope_then_global_nope_with_temperature():
  types = layers.layer_types("llama4", "full", 8)
  assert types[:4] == (LayerType("rope", "chunked", 8192),) * 3 + (LayerType("nope"),)
  assert layers.layer_types("llama4:16", "full", 4)[0] == LayerType("rope", "chunked", 16)
  assert layers.uses_temperature("llama4", None)
  assert layers.uses_temperature("llama4:16", None)
  assert not layers.uses_temperature("llama4", False)
  assert not layers.uses_temperature("smollm3", None)
  assert layers.uses_temperature("rope,nope", True)


def test_preset_rnope_swa_is_sliding_rope_then_full_nope():
  types = layers.layer_types("rnope_swa:512", "full", 4)
  assert types == (LayerType("rope", "sliding", 512),) * 3 + (LayerType("nope"),)
  assert layers.layer_types("rnope_swa", "full", 4)[0].window_size == 4096


def test_preset_alternate_starts_with_nope():
  assert _schemes("alternate", 4) == ["nope", "rope", "nope", "rope"]


def test_presets_resolve_through_the_config():
  cfg = config_lib.model_config()
  cfg.num_layers, cfg.positions = 4, "llama4:16"
  spec = config_lib.resolve(cfg)
  assert spec.query_temperature and spec.period[3] == LayerType("nope", query_scaling="llama4")
  assert spec.period[0] == LayerType("rope", "chunked", 16)
  cfg.query_temperature = False
  spec = config_lib.resolve(cfg)
  assert not spec.query_temperature and spec.period[3] == LayerType("nope")


@pytest.mark.parametrize("head_dim,fraction,want", [(16, 1.0, 16), (16, 0.25, 4), (64, 0.5, 32)])
def test_rotary_dim(head_dim, fraction, want):
  assert layers.rotary_dim(head_dim, fraction) == want


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.1875, 1.5, -0.5, float("nan"), float("inf")])
def test_rotary_dim_rejects_odd_zero_or_too_wide(fraction):
  with pytest.raises(ValueError, match="model.rope_fraction"):
    layers.rotary_dim(16, fraction)


@pytest.mark.parametrize(
  "positions,windows,match",
  [
    ("rope,bogus", "full", "model.positions: unknown scheme 'bogus'"),
    ("rope@window:3", "full", "model.positions: unknown window"),
    ("rope", "slide:4", "model.windows: unknown window"),
    ("rope", "sliding:0", "model.windows"),
    ("rope", "chunked:x", "model.windows"),
    ("rope", "full:4", "model.windows"),
    ("rope,,nope", "full", "model.positions: empty entry"),
    ("rope,rope,nope", "full", "model.positions: a period of 3"),
    ("rope", "full,sliding:4,full", "model.windows: a period of 3"),
  ],
)
def test_parse_errors_name_the_key(positions, windows, match):
  with pytest.raises(ValueError, match=match):
    layers.layer_types(positions, windows, 4)
