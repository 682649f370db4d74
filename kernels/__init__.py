"""supbench's fused training kernels: Triton for CUDA GPUs (train_*.py, sampling.py, ...) and numba
for CPUs (cpu_rng.py, cpu_train.py). Only kernel code and thin launchers live here; the engine
reaches them through engine/backends.py alone (engine/triton_backend.py, engine/cpu_backend.py)."""
