"""Input validation shared by the public DSP wrappers (no numba here)."""

from __future__ import annotations

import numpy as np


def check_windows(x: np.ndarray, min_samples: int = 2) -> np.ndarray:
    """Return `x` as a C-contiguous (B, N) float64 array or raise ValueError/TypeError."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"windows: expected numpy.ndarray, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"windows: expected shape (B, N), got {x.shape}")
    if x.dtype != np.float64:
        raise ValueError(f"windows: expected float64, got {x.dtype}")
    b, n = x.shape
    if b < 1:
        raise ValueError("windows: batch is empty")
    if n < min_samples:
        raise ValueError(f"windows: need at least {min_samples} samples, got {n}")
    return np.ascontiguousarray(x)


def check_fs(fs_hz: float) -> float:
    """Return `fs_hz` as float or raise ValueError unless finite and > 0."""
    fs = float(fs_hz)
    if not (np.isfinite(fs) and fs > 0.0):
        raise ValueError(f"fs_hz: must be finite and > 0, got {fs_hz}")
    return fs
