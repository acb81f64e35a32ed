"""Export a Hugging Face encoder to ONNX with the sentence embedding computed in-graph.

The exported graph is the FP32 baseline every quantized variant is measured against,
so it is cached by content: ``<cache>/<key>/`` holds ``model.onnx``, the tokenizer
files and ``export.json``. A cache hit needs neither torch nor transformers; only a
real export imports them (inside the functions below), so ``import qbench.models.export``
stays cheap.
"""

from __future__ import annotations

import collections
import hashlib
import importlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qbench.config.errors import ConfigError, ModelError, first_line

# Bump when the graph layout (wrapper, input/output names, exporter settings) changes,
# so stale cache entries are not mistaken for the new format.
EXPORT_VERSION = 1

POOLINGS = ("mean", "cls", "none")
INPUT_NAMES = ("input_ids", "attention_mask")
# The TorchScript exporter emits LayerNormalization only from opset 17, and stops at 20.
MIN_OPSET, MAX_OPSET = 17, 20

# Files that make up a tokenizer; copied byte for byte so the runtime side sees exactly
# what the source shipped.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)

# Fixed check batch: three lengths so padding and the attention mask are exercised.
CHECK_SENTENCES = (
    "Quantization trades a little accuracy for a lot of speed.",
    "Short one.",
    "A considerably longer sentence, with punctuation, numbers like 3.14 and 2048, "
    "and enough words that it is padded against nothing but forces the others to pad.",
)
# The export trace uses a different batch shape than the check, so the check also
# proves the dynamic axes work.
TRACE_SENTENCES = ("hello world", "an export trace input")

_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# Directories that are not model content (VCS data, huggingface local_dir metadata).
_SKIP_DIRS = {".git", ".cache", "__pycache__"}


@dataclass(frozen=True)
class ExportedModel:
    onnx_path: Path
    tokenizer_dir: Path
    key: str
    source: str
    resolved: str
    max_abs_diff: float
    opset: int
    pooling: str
    from_cache: bool


# --------------------------------------------------------------------------- sources


def resolve_source(source: str) -> str:
    """Map a user-given model source to a local directory or a hub id.

    ``pkg:NAME`` -> the directory a python package ships (``get_model_path()`` or a
    ``model`` folder); an existing directory -> its absolute path; a path-like string
    that does not exist -> ModelError; anything else is a Hugging Face hub id.
    """
    if source.startswith("pkg:"):
        return _resolve_package(source[len("pkg:"):].strip())
    try:
        path = Path(source).expanduser()
        if path.is_dir():
            return str(path.resolve())
        exists = path.exists()
    except (OSError, ValueError, RuntimeError) as e:  # a NUL byte, a name too long, an unknown ~user
        raise ModelError(f"model path is not usable: {source[:200]!r} ({e})") from None
    if exists:
        raise ModelError(f"model path is not a directory: {source}")
    if _looks_like_path(source):
        raise ModelError(f"model path not found: {source}")
    return source


def _looks_like_path(source: str) -> bool:
    if source.startswith((".", "/", "~")):
        return True
    # 'org/name' is a hub id; 'a/b/c' or a Windows path can only be a local path.
    has_sep = "/" in source or os.sep in source
    return has_sep and not _HUB_ID_RE.match(source)


def _resolve_package(name: str) -> str:
    if not name:
        raise ModelError("empty package name in model source 'pkg:'")
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        hint = name.replace("_", "-")
        raise ModelError(f"model package not installed: {name} (pip install {hint})")
    try:
        module = importlib.import_module(name)
        path = Path(module.get_model_path()) if hasattr(module, "get_model_path") else None
    except Exception as e:  # noqa: BLE001 - a broken package is the user's to fix, not our bug
        reason = first_line(e, 200)
        raise ModelError(f"model package {name} cannot be loaded ({type(e).__name__}"
                         f"{': ' + reason if reason else ''})") from None
    if path is None and module.__file__ is not None:
        path = Path(module.__file__).parent / "model"
    elif path is None:
        raise ModelError(f"package {name} has neither get_model_path() nor a 'model' directory")
    if not path.is_dir():
        raise ModelError(f"package {name} has no model directory at {path}")
    return str(path.resolve())


# --------------------------------------------------------------------------- cache key


def cache_key(resolved: str, *, opset: int, pooling: str, normalize: bool,
              revision: str | None = None) -> str:
    """16-hex content hash of the model bytes and the export settings.

    torch/transformers versions are deliberately left out: they are recorded in
    export.json, and leaving them out lets a cache built on another machine be reused.
    """
    h = hashlib.sha256()
    settings = {"export_version": EXPORT_VERSION, "opset": opset, "pooling": pooling,
                "normalize": normalize, "inputs": list(INPUT_NAMES)}
    h.update(json.dumps(settings, sort_keys=True).encode())
    root = Path(resolved)
    if root.is_dir():
        for rel, path in _model_files(root):
            # Name and size delimit each file, so a rename or a split changes the key.
            h.update(f"\0{rel}\0{path.stat().st_size}\0".encode())
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    else:
        # A hub id has no local bytes to hash: the id and revision stand in for them.
        h.update(f"\0hub\0{resolved}\0{revision or ''}".encode())
    return h.hexdigest()[:16]


def _model_files(root: Path) -> list[tuple[str, Path]]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
        for name in filenames:
            path = Path(dirpath) / name
            files.append((path.relative_to(root).as_posix(), path))
    return sorted(files)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- public entry


def export_encoder(source: str, cache_dir: Path, *, opset: int = 17, pooling: str = "mean",
                   normalize: bool = True, check: bool = True, atol: float = 1e-4,
                   revision: str | None = None) -> ExportedModel:
    """Export (or reuse from cache) the ONNX sentence encoder for ``source``.

    The ONNX-vs-PyTorch diff is always measured and stored; ``check`` decides whether a
    diff above ``atol`` raises (also on a cache hit, against the stored diff).
    """
    _validate_settings(opset, pooling, atol)
    # L2-normalizing per-token states is not a sentence embedding; 'none' ignores it.
    normalize = normalize and pooling != "none"
    resolved = resolve_source(source)
    cache_dir = Path(cache_dir).expanduser()
    key = cache_key(resolved, opset=opset, pooling=pooling, normalize=normalize,
                    revision=revision)
    final = cache_dir / key
    cached = _load_cached(final, source, resolved, key)
    if cached is None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        cached = _export_into_cache(source, resolved, final, opset=opset, pooling=pooling,
                                    normalize=normalize, revision=revision)
    if check and cached.max_abs_diff > atol:
        raise ModelError(f"ONNX export of {source} differs from PyTorch by "
                         f"{cached.max_abs_diff:.3g} > atol {atol:g} ({cached.onnx_path})")
    return cached


def _validate_settings(opset: int, pooling: str, atol: float) -> None:
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling: must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(f"opset: must be {MIN_OPSET}..{MAX_OPSET} (LayerNormalization "
                          f"needs >= 17; the TorchScript exporter stops at 20), got {opset}")
    if not atol > 0:
        raise ConfigError(f"atol: must be > 0, got {atol}")


def _is_complete(final: Path) -> bool:
    return all((final / rel).is_file()
               for rel in ("model.onnx", "export.json", "tokenizer/tokenizer.json"))


def _load_cached(final: Path, source: str, resolved: str, key: str) -> ExportedModel | None:
    """Return the cache entry at ``final`` if it is complete; no torch import here."""
    if not _is_complete(final):
        if final.exists():
            # Entries are installed atomically, so a partial one is foreign damage
            # (a hand-deleted file); rebuild rather than fail forever.
            shutil.rmtree(final, ignore_errors=True)
        return None
    try:
        meta = json.loads((final / "export.json").read_text())
        return _result(final, meta, source, resolved, key, from_cache=True)
    except (ValueError, KeyError, TypeError):
        shutil.rmtree(final, ignore_errors=True)
        return None


def _result(final: Path, meta: dict[str, Any], source: str, resolved: str, key: str,
            *, from_cache: bool) -> ExportedModel:
    # source/resolved come from this call: an entry is keyed by content, so it may
    # have been built from a different path holding the same bytes.
    return ExportedModel(
        onnx_path=final / "model.onnx", tokenizer_dir=final / "tokenizer", key=key,
        source=source, resolved=resolved, max_abs_diff=float(meta["max_abs_diff"]),
        opset=int(meta["opset"]), pooling=str(meta["pooling"]), from_cache=from_cache)


def _export_into_cache(source: str, resolved: str, final: Path, *, opset: int, pooling: str,
                       normalize: bool, revision: str | None) -> ExportedModel:
    """Build the entry in a temp dir next to ``final`` and rename it into place."""
    key = final.name
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=final.parent))
    try:
        meta = _build_entry(source, resolved, tmp, opset=opset, pooling=pooling,
                            normalize=normalize, revision=revision)
        meta["key"] = key
        (tmp / "export.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        # mkdtemp makes the dir 0700; a shared cache must be readable by other users.
        tmp.chmod(0o755)
        try:
            os.replace(tmp, final)
        except OSError:
            # Another process installed the same key first; its entry is equivalent.
            if not _is_complete(final):
                raise
            meta = json.loads((final / "export.json").read_text())
            return _result(final, meta, source, resolved, key, from_cache=True)
        return _result(final, meta, source, resolved, key, from_cache=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- export (torch)


def _build_entry(source: str, resolved: str, out: Path, *, opset: int, pooling: str,
                 normalize: bool, revision: str | None) -> dict[str, Any]:
    """Export model.onnx + tokenizer/ into ``out``; return the export.json record."""
    import torch

    started = time.perf_counter()
    model, tokenizer = _load_hf(source, resolved, revision)
    wrapper = _make_wrapper(model, pooling, normalize)
    output_name = "last_hidden_state" if pooling == "none" else "embedding"
    onnx_path = out / "model.onnx"
    _torch_export(wrapper, tokenizer, onnx_path, opset, output_name)
    _save_tokenizer(tokenizer, resolved, out / "tokenizer")
    with torch.no_grad():
        diff = _check_diff(wrapper, tokenizer, onnx_path)
    return _export_record(source, resolved, revision, onnx_path, opset=opset, pooling=pooling,
                          normalize=normalize, output_name=output_name, max_abs_diff=diff,
                          hidden_size=getattr(model.config, "hidden_size", None),
                          seconds=time.perf_counter() - started)


def _load_hf(source: str, resolved: str, revision: str | None) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    try:
        # Eager attention traces to plain MatMul/Softmax, which quantizers understand;
        # SDPA would leave a fused op or a different graph per torch version.
        model = AutoModel.from_pretrained(resolved, revision=revision, dtype=torch.float32,
                                          attn_implementation="eager")
        tokenizer = AutoTokenizer.from_pretrained(resolved, revision=revision)
    except Exception as err:  # any load failure is the user's model, not our bug
        reason = first_line(err, None)
        where = f" ({resolved})" if resolved != source else ""
        raise ModelError(f"cannot load model {source}{where}: {reason}") from err
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"model {source} has no fast tokenizer (tokenizer.json is needed)")
    return model.eval(), tokenizer


def _make_wrapper(model: Any, pooling: str, normalize: bool) -> Any:
    """A torch module: (input_ids, attention_mask) -> pooled, normalized embedding."""
    import inspect

    import torch

    # Sentence encoders are single-segment: feed zeros in-graph so the ONNX model
    # keeps exactly two inputs instead of a constant third one.
    takes_token_types = "token_type_ids" in inspect.signature(model.forward).parameters

    class EncoderWrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model  # attribute name shows up as the '/model/...' node prefix

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            extra = {"token_type_ids": torch.zeros_like(input_ids)} if takes_token_types else {}
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                **extra).last_hidden_state
            if pooling == "none":
                return hidden
            if pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1) if normalize else pooled

    return EncoderWrapper().eval()


def _torch_export(wrapper: Any, tokenizer: Any, onnx_path: Path, opset: int,
                  output_name: str) -> None:
    import warnings

    import torch

    batch = tokenizer(list(TRACE_SENTENCES), padding=True, return_tensors="pt")
    args = (batch["input_ids"].long(), batch["attention_mask"].long())
    dynamic_axes: dict[str, dict[int, str]] = {
        name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    # A pooled embedding has no sequence axis; per-token states keep it.
    dynamic_axes[output_name] = ({0: "batch"} if output_name == "embedding"
                                 else {0: "batch", 1: "sequence"})
    wrapper.eval()
    with torch.no_grad(), warnings.catch_warnings():
        # The legacy exporter's deprecation and tracer chatter is expected noise here.
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, args, str(onnx_path), dynamo=False, opset_version=opset,
                          input_names=list(INPUT_NAMES), output_names=[output_name],
                          dynamic_axes=dynamic_axes, do_constant_folding=True)
    # The exporter restores the module's previous mode; force eval so dropout stays
    # off for the PyTorch reference computed next.
    wrapper.eval()
    if wrapper.training or wrapper.model.training:
        raise ModelError(f"model for {onnx_path} is still in train mode after export")


def _save_tokenizer(tokenizer: Any, resolved: str, out: Path) -> None:
    out.mkdir(parents=True)
    src = Path(resolved)
    if src.is_dir() and (src / "tokenizer.json").is_file():
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, out / name)
        return
    # Hub ids and slow-only local dirs: let transformers write a tokenizer.json.
    tokenizer.save_pretrained(str(out))
    if not (out / "tokenizer.json").is_file():
        raise ModelError(f"no tokenizer.json could be written for {resolved}")


def _check_diff(wrapper: Any, tokenizer: Any, onnx_path: Path) -> float:
    """Max |ONNX Runtime - PyTorch| over the fixed, padded check batch."""
    import numpy as np
    import onnxruntime as ort

    batch = tokenizer(list(CHECK_SENTENCES), padding=True, return_tensors="pt")
    feeds_pt = {name: batch[name].long() for name in INPUT_NAMES}
    if wrapper.training:
        raise ModelError(f"refusing to compute the reference in train mode ({onnx_path})")
    reference = wrapper(**feeds_pt).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {k: v.numpy() for k, v in feeds_pt.items()})[0]
    if got.shape != reference.shape:
        raise ModelError(f"ONNX output shape {got.shape} != PyTorch {reference.shape} "
                         f"({onnx_path})")
    return float(np.max(np.abs(got.astype(np.float64) - reference.astype(np.float64))))


def _export_record(source: str, resolved: str, revision: str | None, onnx_path: Path,
                   **fields: Any) -> dict[str, Any]:
    import onnx
    import onnxruntime
    import torch
    import transformers

    import qbench

    model = onnx.load(str(onnx_path), load_external_data=False)
    opset_seen = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                      None)
    if opset_seen != fields["opset"]:
        raise ModelError(f"exported {onnx_path} has opset {opset_seen}, "
                         f"asked for {fields['opset']}")
    op_counts = collections.Counter(node.op_type for node in model.graph.node)
    return {
        **fields, "export_version": EXPORT_VERSION, "source": source, "resolved": resolved,
        "revision": revision, "onnx_sha256": _sha256_file(onnx_path),
        "inputs": [i.name for i in model.graph.input],
        "outputs": [o.name for o in model.graph.output],
        "op_counts": dict(sorted(op_counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                     "qbench": qbench.__version__},
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
