"""p-RoPE (Barbero et al. 2024, "Round and Round We Go! What makes Rotary Positional Encodings
useful?"): RoPE that rotates only the highest-frequency share p of its pairs
(`model.prope_fraction`); the lowest-frequency 1 - p are left unrotated, since they carry
semantics rather than position. The frequencies are RoPE's own over the rotated dims,
theta^(-2i/d) for pair i, the kept ones unchanged: p = 1 is RoPE, p = 0 is NoPE.

Not `model.rope_fraction`, which rotates the first dims with frequencies recomputed over them
(so it keeps the lowest frequency); rope_fraction still chooses the dims p-RoPE works on. RoPE
scaling (llama3, YaRN, ...) does not apply to p-RoPE layers.
"""

import numpy as np

from nopejax.model.schemes import base, rope


def prope_frequencies(rotary_dim, theta, fraction):
  """RoPE's inverse frequencies [rotary_dim / 2] with the lowest 1 - fraction of them set to 0."""
  inv_freq_R, _ = rope.rope_frequencies(rotary_dim, theta)
  kept = int(round(fraction * inv_freq_R.shape[0]))
  return np.where(np.arange(inv_freq_R.shape[0]) < kept, inv_freq_R, 0.0).astype(np.float32)


class PRoPE(base.Scheme):
  def queries_keys(self, module, spec, q_BTNH, k_BSKH, keys):
    del module
    inv_freq_R = prope_frequencies(spec.rope_dim, spec.rope_theta, spec.prope_fraction)
    rotate = lambda x, pos: rope.rotate(x, rope.angles(pos, inv_freq_R), spec.rope_dim)
    return rotate(q_BTNH, keys.q_pos_BT), rotate(k_BSKH, keys.k_pos_BS)


PROPE = PRoPE("prope", rotary=True)
