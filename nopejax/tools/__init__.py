"""Tools: the benchmarks, ahead-of-time compilation and sweeps behind their commands."""
