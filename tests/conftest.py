"""Shared pytest configuration: a deterministic hypothesis profile for CI, and Triton's
interpreter on machines without CUDA (set before any kernel is compiled, so the Triton
backend's tests run its kernels on the CPU)."""

import os

import torch
from hypothesis import HealthCheck, settings

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# "ci": derandomized (fixed seed per test), no deadline (CI machines are slow and shared).
settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=40,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# "dev": more examples, random seeds, for hunting bugs locally.
settings.register_profile("dev", deadline=None, max_examples=300)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
