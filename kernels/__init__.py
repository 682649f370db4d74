"""Triton kernels for supbench. Only @triton.jit code and thin launchers live here; the engine
reaches them through engine/backends.py alone."""
