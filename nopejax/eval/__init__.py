"""Evaluation: one module per kind (tasks, lm, passkey), outputs and plots, the sweep report."""
