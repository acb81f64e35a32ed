"""The statistics pass: one streaming run over the calibration set on ONNX Runtime CPU.

The tensors to calibrate become extra graph outputs (as ONNX Runtime's own calibrators do); each
batch's values are reduced to absmax and a |x| histogram, then dropped, so memory stays bounded by
one batch. Padded positions never enter the statistics: which axes of each tensor are batch and
sequence is found by probing the model at two shapes, and the attention mask is applied along them
(so additive -inf masks and garbage at padded tokens are ignored). A non-finite value that remains
is an error naming the tensor and the batch.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from qbench.calib import TensorStats
from qbench.config.errors import DataError, ModelError, first_line

STATS_VERSION = 2  # 2: statistics taken with graph optimizations off
MIN_BIN_WIDTH = 2.0 ** -40
PROBES = ((2, 5), (3, 7))  # (batch, sequence) pairs unlikely to collide with model dimensions


def _lattice_width(absmax: float, bins: int) -> float:
    """Smallest power of two w with absmax < bins * w (strictly: no value ever sits on the top edge,
    so doubling w maps old bin k exactly onto new bin k // 2)."""
    if absmax <= 0:
        return MIN_BIN_WIDTH
    w = 2.0 ** math.ceil(math.log2(absmax / bins))
    if absmax >= bins * w:
        w *= 2.0
    return max(MIN_BIN_WIDTH, w)


def _absorb(t: TensorStats, values: np.ndarray) -> np.ndarray | None:
    """Update absmax, count and per-batch maxima; return |x| flattened (None for an empty batch)."""
    a = np.abs(values.astype(np.float32, copy=False)).ravel()
    if a.size == 0:
        return None
    m = float(a.max())
    t.batch_absmax.append(m)
    t.absmax = max(t.absmax, m)
    t.count += a.size
    return a


def update(t: TensorStats, values: np.ndarray, bins: int) -> None:
    """Merge one batch's |x| into ``t``: exact, order-independent (power-of-two bin widths only double)."""
    a = _absorb(t, values)
    if a is None:
        return
    w = _lattice_width(t.absmax, bins)
    if t.hist is None:
        t.hist, t.bin_width = np.zeros(bins, dtype=np.int64), w
    elif w > t.bin_width:
        factor = int(round(w / t.bin_width))
        # Every old bin k lands in new bin k // factor; beyond `bins` they all land in bin 0.
        merged = t.hist.reshape(-1, factor).sum(axis=1) if factor <= bins else t.hist.sum(keepdims=True)
        t.hist = np.concatenate([merged, np.zeros(bins - len(merged), dtype=np.int64)])
        t.bin_width = w
    idx = np.minimum((a * np.float32(1.0 / t.bin_width)).astype(np.int64), bins - 1)
    t.hist += np.bincount(idx, minlength=bins)


def update_fixed(t: TensorStats, values: np.ndarray, bins: int, top: float) -> None:
    """Merge one batch into a histogram with fixed edges linspace(0, top, bins + 1): TensorRT's layout.

    ``top`` is the tensor's absmax from a first pass, so no value falls outside. Edges follow
    numpy's convention (a value on an inner edge goes to the upper bin; ``top`` to the last bin).
    """
    a = _absorb(t, values)
    if a is None:
        return
    if t.hist is None:
        t.hist, t.bin_width = np.zeros(bins, dtype=np.int64), (top / bins if top > 0 else MIN_BIN_WIDTH)
    edges = np.linspace(0.0, top, bins + 1) if top > 0 else np.arange(bins + 1) * MIN_BIN_WIDTH
    idx = np.clip(np.searchsorted(edges, a, side="right") - 1, 0, bins - 1)
    t.hist += np.bincount(idx, minlength=bins)


def update_channels(t: TensorStats, arr: np.ndarray, mask: np.ndarray | None) -> None:
    """Merge one batch's max |x| per channel of the last axis; padded positions (``mask`` False) count as 0."""
    if arr.ndim == 0 or arr.size == 0:
        return
    a = np.abs(arr.astype(np.float32, copy=False))
    if mask is not None:
        a = np.where(mask, a, np.float32(0))
    m = a.reshape(-1, a.shape[-1]).max(axis=0).astype(np.float64)
    t.channel_absmax = m if t.channel_absmax is None else np.maximum(t.channel_absmax, m)


def augmented_model(model_path: Path, tensors: list[str], out_dir: Path) -> Path:
    """Copy of the model with every tensor to calibrate exposed as a graph output."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(model_path))
    existing = {o.name for o in model.graph.output}
    for t in tensors:
        if t not in existing:
            model.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    path = out_dir / "augmented.onnx"
    onnx.save(model, str(path))
    return path


def _axis_roles(shape_a, shape_b) -> list[str]:
    (b1, s1), (b2, s2) = PROBES
    roles = []
    for x, y in zip(shape_a, shape_b):
        if (x, y) == (b1, b2):
            roles.append("b")
        elif (x, y) == (s1, s2):
            roles.append("s")
        elif (x, y) == (b1 * s1, b2 * s2):
            roles.append("bs")
        else:
            roles.append("." if x == y else "?")
    return roles


def discover_axes(sess, names: list[str], feeds: dict[str, np.ndarray],
                  seq_inputs: list[str] | None = None) -> dict[str, list[str]]:
    """Run two reshaped copies of a real batch and label each output axis b / s / bs / static.

    Rows and tokens are repeated cyclically to reach each probe shape, so any first batch works;
    only the shapes of the outputs matter here, not their values. Axis 1 is the token axis of the
    inputs in ``seq_inputs`` (default: every input); other inputs only get their batch axis resized
    (a decoder's past K/V has heads on axis 1, its encoder states the source length).
    """
    shapes = []
    for b, s in PROBES:
        probe = {k: np.take(np.take(v, np.arange(b), axis=0, mode="wrap"), np.arange(s), axis=1, mode="wrap")
                 if seq_inputs is None or k in seq_inputs else np.take(v, np.arange(b), axis=0, mode="wrap")
                 for k, v in feeds.items()}
        shapes.append([o.shape for o in sess.run(names, probe)])
    return {n: _axis_roles(a, c) for n, a, c in zip(names, *shapes)}


def token_mask(roles: list[str], mask2d: np.ndarray, shape: tuple) -> np.ndarray | None:
    """Boolean mask of valid (non-padded) positions for a tensor of ``shape``, or None if unmaskable."""
    if "bs" in roles:
        shp = [1] * len(shape)
        shp[roles.index("bs")] = -1
        return np.broadcast_to(mask2d.reshape(shp), shape)
    if "b" not in roles or "s" not in roles:
        return None
    bax = roles.index("b")
    out = np.ones([1] * len(shape), dtype=bool)
    for j, r in enumerate(roles):
        if r == "s":
            shp = [1] * len(shape)
            shp[bax], shp[j] = mask2d.shape
            # A sequence axis before the batch axis needs the mask transposed, not merely reshaped.
            out = out & (mask2d if bax < j else mask2d.T).reshape(shp)
    return np.broadcast_to(out, shape)


def collect(model_path: Path, tensors: list[str], batches: Iterable[dict[str, np.ndarray]],
            bins: int = 2048, threads: int = 2, mask_input: str = "attention_mask",
            fixed_top: dict[str, float] | None = None,
            seq_inputs: list[str] | None = None, channels: bool = False) -> dict[str, TensorStats]:
    """Stream the batches once; per tensor, absmax and a |x| histogram.

    By default the histogram sits on the power-of-two lattice (one pass). With ``fixed_top`` (each
    tensor's absmax from an earlier pass) it uses TensorRT's fixed [0, absmax] layout instead.
    ``mask_input`` names the [batch, tokens] validity mask; when it is not a graph input (a decoder's
    target mask) it is taken out of the feeds. ``seq_inputs``: see discover_axes. ``channels``: also keep
    max |x| per channel of the last axis (``TensorStats.channel_absmax``), in the same pass.
    """
    import onnxruntime as ort

    stats = {t: TensorStats() for t in tensors}
    with tempfile.TemporaryDirectory(prefix="qbench-stats-") as tmp:
        aug = augmented_model(model_path, tensors, Path(tmp))
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        # No graph fusions: the statistics describe the tensors as the ONNX graph defines them (a fused
        # kernel may never materialise one), and match ONNX Runtime's own calibrators bit for bit.
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            sess = ort.InferenceSession(str(aug), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - ORT's Fail/InvalidGraph: the model is the user's to fix
            raise ModelError(f"{model_path}: ONNX Runtime cannot load the model for the statistics pass: "
                             f"{first_line(e)}") from None
        graph_inputs = {i.name for i in sess.get_inputs()}
        roles: dict[str, list[str]] | None = None
        varying: set[str] = set()  # tensors whose last axis changed length: no channel maxima for them
        n_batches = first = 0  # first: index of the batch's first sample in the calibration set
        for bi, feeds in enumerate(batches):
            n_batches += 1
            rows = len(next(iter(feeds.values()))) if feeds else 0
            mask2d = feeds[mask_input].astype(bool) if mask_input in feeds else None
            feeds = {k: v for k, v in feeds.items() if k in graph_inputs}
            if roles is None and mask2d is not None:
                roles = discover_axes(sess, tensors, feeds, seq_inputs)
            for name, arr in zip(tensors, sess.run(tensors, feeds)):
                m = token_mask(roles[name], mask2d, arr.shape) if (roles and mask2d is not None) else None
                vals = arr[m] if m is not None else arr
                if not np.isfinite(vals).all():
                    nan = int(np.isnan(vals).sum())
                    bad = int((~np.isfinite(vals)).sum())
                    kinds = ", ".join(f"{c} {k}" for c, k in ((nan, "NaN"), (bad - nan, "inf")) if c)
                    where = f" (samples {first}..{first + rows - 1} of the set)" if rows else ""
                    raise DataError(f"tensor '{name}': {bad} non-finite value(s) ({kinds}) at valid positions "
                                    f"in calibration batch {bi}{where}")
                if channels and name not in varying and (roles is None or roles[name][-1:] == ["."]):
                    # Without a mask (an encoder fed no mask_input) the axes are not discovered: a last axis
                    # whose length changes between batches (attention scores over keys) has no channels.
                    t = stats[name]
                    if t.channel_absmax is not None and arr.ndim and t.channel_absmax.shape[0] != arr.shape[-1]:
                        varying.add(name)
                        t.channel_absmax = None
                    else:
                        update_channels(t, arr, m)
                if fixed_top is None:
                    update(stats[name], vals, bins)
                else:
                    update_fixed(stats[name], vals, bins, fixed_top[name])
            first += rows
    if n_batches == 0:
        raise DataError("calibration set is empty: no batch reached the statistics pass")
    return stats


def sample_keys(samples, prefix: str = "") -> list[str]:
    """One key per calibration sample: its id and a digest of what the model is fed from it.

    Ids alone are not enough: two manifests over the same rows (XX->EN and EN->XX) share ids but swap text
    and reference, and a changed source prefix changes every input while the ids stay."""
    keys = []
    for s in samples:
        fed = "\0".join((prefix, s.text, s.reference or "", s.language, s.label or ""))
        keys.append(f"{s.id}:{hashlib.sha256(fed.encode()).hexdigest()[:12]}")
    return keys


def cache_key(model_sha: str, sample_keys: list[str], tensors: list[str], bins: int, batch_size: int,
              histogram: str = "lattice", channels: bool = False) -> str:
    h = hashlib.sha256()
    key = [STATS_VERSION, model_sha, sample_keys, tensors, bins, batch_size, histogram]
    h.update(json.dumps(key + (["channels"] if channels else [])).encode())  # per-channel max |x| kept too
    return h.hexdigest()[:16]


def save(stats: dict[str, TensorStats], path: Path) -> None:
    from qbench.util.io import atomic_write

    names = list(stats)
    arrays = {"names": np.array(json.dumps(names))}
    for i, n in enumerate(names):
        t = stats[n]
        arrays[f"h{i}"] = t.hist if t.hist is not None else np.zeros(0, np.int64)
        arrays[f"m{i}"] = np.array([t.absmax, t.count, t.bin_width], dtype=np.float64)
        arrays[f"b{i}"] = np.array(t.batch_absmax, dtype=np.float64)
        if t.channel_absmax is not None:
            arrays[f"c{i}"] = t.channel_absmax

    def write(p: Path) -> None:
        with open(p, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)


def load(path: Path) -> dict[str, TensorStats]:
    with np.load(path) as z:
        names = json.loads(str(z["names"]))
        out = {}
        for i, n in enumerate(names):
            absmax, count, width = z[f"m{i}"]
            hist = z[f"h{i}"]
            out[n] = TensorStats(float(absmax), int(count), hist if hist.size else None, float(width),
                                 [float(x) for x in z[f"b{i}"]], z[f"c{i}"] if f"c{i}" in z.files else None)
    return out


def iter_batches(items: list, batch_size: int) -> Iterator[list]:
    for i in range(0, len(items), batch_size):
        yield items[i:i + batch_size]
