"""The model: layer patterns, positional schemes, attention paths, KV cache, decoder, generation."""
