"""nopejax: decoder-only transformers with a static positional scheme per layer."""

from nopejax.model_api import forward, init, param_axes, positions_from_segments

__all__ = ["init", "forward", "param_axes", "positions_from_segments"]
