"""Float comparisons that hold on any x86-64 CPU and thread count.

Kernels differ between CPUs (AVX2 vs AVX-512, blocking, thread count) in the order they add
floats, so an element that is near zero can differ by more than any fixed absolute tolerance in
relative terms, while the tensor as a whole agrees to a few ulps of its scale. Compare the error's
norm with the tensor's norm instead of element by element.
"""

from __future__ import annotations

import torch


def assert_rel(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4, msg: str = "") -> None:
    """‖actual − expected‖ ≤ rtol · max(‖actual‖, ‖expected‖), same shape (both zero passes)."""
    assert actual.shape == expected.shape, f"{msg} shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    err, scale = float((a - e).norm()), max(float(a.norm()), float(e.norm()))
    assert err <= rtol * scale, f"{msg} ‖Δ‖ = {err:.3g} > {rtol:g} · {scale:.3g}"
