"""supbench benchmark suite: workloads, providers (eager PyTorch, torch.compile, JAX, supbench
triton fp32/tf32 and the supbench cpu backend), an interleaved runner that records JSON results, and
the BENCHMARKS.md report."""
