"""NoPE (Kazemnejad et al. 2023, "The Impact of Positional Encoding on Length Generalization in
Transformers"): no positional signal, order only from the causal mask. A NoPE layer compiles to
nothing positional; a query scaling (schemes/scaling.py: Llama 4's temperature, SSMax, a scale
per head) is a separate per-layer choice."""

from nopejax.model.schemes import base

NOPE = base.Scheme("nope")
