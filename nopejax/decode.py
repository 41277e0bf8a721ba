"""0.1's import path of generation, kept so `nopejax.decode.generate` goes on working; the code
lives in nopejax/model/generate.py (also `nopejax.generate`)."""

from nopejax.model.generate import generate, left_pad

__all__ = ["generate", "left_pad"]
