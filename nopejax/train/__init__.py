"""Training: the step, the run builder, the loop, the optimizer, checkpoints and metrics."""
