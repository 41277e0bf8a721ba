"""NoPE (Kazemnejad et al. 2023): no positional signal, order only from the causal mask.

The one option is Llama 4's query temperature for its global NoPE layers
(`model.query_temperature`), which scales queries by a function of their position; without it a
NoPE layer compiles to nothing positional.
"""

import jax.numpy as jnp

from nopejax.model.schemes import base


def query_temperature(positions_BT, *, floor_scale, attn_scale):
  """Llama 4's NoPE query scale: log(floor((pos + 1) / floor_scale) + 1) * attn_scale + 1."""
  pos = positions_BT.astype(jnp.float32)
  return jnp.log(jnp.floor((pos + 1.0) / floor_scale) + 1.0) * attn_scale + 1.0


class NoPE(base.Scheme):
  def queries_keys(self, module, spec, q_BTNH, k_BSKH, keys):
    del module
    if not spec.query_temperature:
      return q_BTNH, k_BSKH
    temp_BT = query_temperature(
      keys.q_pos_BT,
      floor_scale=spec.temperature_floor_scale,
      attn_scale=spec.temperature_attn_scale,
    )
    return q_BTNH * temp_BT[:, :, None, None].astype(q_BTNH.dtype), k_BSKH


NOPE = NoPE("nope")
