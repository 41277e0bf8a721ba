"""nopejax: decoder-only transformers with a static positional scheme per layer."""

from nopejax.model.api import forward, init, param_axes, positions_from_segments
from nopejax.model.generate import generate

__all__ = ["init", "forward", "generate", "param_axes", "positions_from_segments"]
