"""Small models shared by the model, format and CLI tests (deterministic)."""

from __future__ import annotations

import numpy as np


def small_model(seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny transformer-like dict: matrices of odd sizes, a bias, a norm and an int buffer."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.02, size=(48, 70)).astype(np.float32)
    w1[rng.random(w1.shape) < 0.002] *= 30  # a few outliers
    return {
        "embed.weight": rng.normal(0, 0.05, size=(100, 32)).astype(np.float32),
        "fc1.weight": w1,
        "fc1.bias": rng.normal(0, 0.01, size=48).astype(np.float32),
        "fc2.weight": rng.normal(0, 0.02, size=(17, 48)).astype(np.float16),
        "conv.weight": rng.normal(0, 0.1, size=(8, 3, 5, 5)).astype(np.float64),
        "norm.weight": np.ones(32, np.float32),
        "step": np.array(7, dtype=np.int64),
        "position_ids": np.arange(12, dtype=np.int32).reshape(1, 12),
    }
