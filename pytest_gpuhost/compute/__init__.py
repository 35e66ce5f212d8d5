"""The host side of the compute workloads: running a workload script and judging its numbers."""
