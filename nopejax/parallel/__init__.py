"""Parallelism: the device mesh, logical-axis rules, multi-process start-up."""
