"""Activation-aware weight scales (AWQ, Lin et al., 2024) for the weight-only formats, from statistics alone.

AWQ protects the input channels that carry large activations: the weights W read by an activation X are scaled
per input channel, W' = s * W (rows), quantized, and X is divided by s, so X @ W = (X / s) @ (s * W) exactly in
FP32 and only the rounding of s * W changes. The division by s is folded into the graph exactly as SmoothQuant's
is (qbench.quantize.smoothquant: into the producing LayerNorm, else an inserted Mul).

The search, per activation (jointly over every weight that reads it, as AWQ does for Q, K and V):

    s(alpha) = a ** alpha, normalized to a geometric mean of 1 over its extremes, alpha in {0, 0.05, ..., 1}
    err(alpha) = sum_j a_j^2 * sum_n (W_jn - Q(s_j W_jn) / s_j)^2

``a`` is the per-input-channel max |x| of the one statistics pass (``channel_absmax``, what SmoothQuant reads), so no
second pass over the data is made: a_j^2 stands for E[x_j^2] in the output error E||X W - X W_q||^2, with the
channels taken as uncorrelated. AWQ proper measures the output error on cached activations and weights channels by
mean |x|; this is the statistics-only variant of it. alpha = 0 is plain max scaling (s = 1), so the chosen
scales never do worse than max scaling on this objective.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

GRID = np.linspace(0.0, 1.0, 21)


def fake_quantizer(fmt, weights=None) -> Callable[[np.ndarray], np.ndarray]:
    """W [in, out] -> what the format's DequantizeLinear gives back for it (rows are input channels). ``weights``:
    int8_wo's weight rule (calibrators.weights; per output channel by default), the one the build uses."""
    from qbench.quantize import formats

    if fmt.name == "int4_wo":
        def q4(w: np.ndarray) -> np.ndarray:
            q, sc = formats.int4_blocks(w, fmt.block_size, 0)
            return formats.int4_dequantize(q, sc, fmt.block_size, 0)
        return q4

    from calibrators.weights import PerChannel

    rule = weights or PerChannel()

    def q8(w: np.ndarray) -> np.ndarray:
        axis = rule.axis("MatMul", 1, 2, {})
        q, sc = rule.quantize(w, axis)
        return q.astype(np.float32) * (sc if axis is None else np.expand_dims(sc, 1 - axis))
    return q8


def weighted_error(a: np.ndarray, weights: list[np.ndarray], s: np.ndarray, quant) -> float:
    """sum_j a_j^2 sum_n (W_jn - Q(s_j W_jn) / s_j)^2 over every weight: the activation-weighted rounding error."""
    a2 = np.asarray(a, np.float64) ** 2
    s32 = s.astype(np.float32)[:, None]
    return float(sum((a2 * ((w - quant(w * s32) / s32).astype(np.float64) ** 2).sum(axis=1)).sum() for w in weights))


def search(a: np.ndarray, weights: list[np.ndarray], quant, grid: np.ndarray = GRID) -> tuple[np.ndarray, float]:
    """(s per input channel, the alpha it came from) minimizing ``weighted_error``; ties go to the smaller alpha."""
    from qbench.quantize.smoothquant import S_MAX, S_MIN

    a = np.asarray(a, np.float64)
    live = a > 0
    base = np.where(live, a, 1.0)
    best: tuple[float, np.ndarray, float] | None = None
    for alpha in grid:
        s = base ** alpha
        if live.any():
            s = s / np.sqrt(s[live].max() * s[live].min())
        s = np.clip(np.where(live, s, 1.0), S_MIN, S_MAX).astype(np.float32)
        err = weighted_error(a, weights, s, quant)
        if best is None or err < best[0]:
            best = (err, s, float(alpha))
    assert best is not None
    return best[1], best[2]
