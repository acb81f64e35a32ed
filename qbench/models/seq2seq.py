"""Export a Hugging Face seq2seq model (Marian, T5/Flan-T5, mBART, M2M100) to two ONNX graphs.

``encoder.onnx``: (input_ids, attention_mask) -> last_hidden_state, with whatever the family's
encoder ends in (T5's final layer norm, mBART's layer_norm).

``decoder.onnx``: (input_ids, encoder_hidden_states, encoder_attention_mask, past.{i}.key/value)
-> (logits, present.{i}.key/value). One graph serves the first step and teacher forcing
(past_len 0) as well as incremental steps (past_len > 0). The self-attention cache is an input;
graph holds the cross-attention K/V projections of encoder_hidden_states, so one decoder graph has
one set of tensors to calibrate; greedy decoding splits it (``qbench.models.decoder_split``) and
computes those projections once per sentence. The export check covers that split too.

Cached by content like ``qbench.models.export``: ``<out_dir>/<key>/`` holds both graphs, ``export.json``
(the facts ``qbench.models.generate`` needs) and, where the source has one, ``tokenizer/``. A cache hit
needs neither torch nor transformers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from qbench.config.errors import ModelError, first_line
from qbench.models.layout import DECODER_INPUTS, ENCODER_INPUTS, past_names, present_names  # noqa: F401
from qbench.models.export import (TOKENIZER_FILES, _export_record, _validate_settings, cache_key,
                           resolve_source)

# Bump when the graph layout (wrappers, names, exporter settings) or export.json changes.
SEQ2SEQ_EXPORT_VERSION = 2  # 2: export.json records decoder_split_max_abs_diff
# The TorchScript exporter (torch.onnx.export(dynamo=False)): it traces the transformers cache
# code as plain Python, so shapes such as past_len stay symbolic; the dynamo exporter fails on T5
# (see DESIGN.md, "Traps").
EXPORTER = "torchscript"
# Marian ships its sentencepiece models under these names; the rest are qbench.models.export's.
_EXTRA_TOKENIZER_FILES = ("source.spm", "target.spm")
# (batch, src_len, tgt_len, past_len) of the trace: all different, so no axis is confused with
# another, and past_len > 0 so the cache length is traced as a shape, not the constant 0.
_TRACE = (2, 5, 3, 2)


@dataclass(frozen=True)
class Seq2SeqExport:
    encoder_path: Path
    decoder_path: Path
    tokenizer_dir: Path | None
    key: str
    source: str
    resolved: str
    from_cache: bool
    opset: int
    exporter: str
    model_type: str
    # Generation facts, resolved as transformers' generate() resolves them.
    decoder_start_token_id: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    forced_bos_token_id: int | None
    forced_eos_token_ids: tuple[int, ...]
    bad_token_ids: tuple[int, ...]   # single-token bad_words_ids (EOS excluded, as HF does)
    min_length: int
    renormalize_logits: bool
    max_length: int                  # includes the decoder start token, as in HF
    num_beams: int
    length_penalty: float
    early_stopping: bool | str
    unsupported: tuple[str, ...]     # generation settings qbench.models.generate does not reproduce
    # Graph dimensions.
    num_layers: int
    num_heads: int
    head_dim: int
    d_model: int
    vocab_size: int
    # ONNX Runtime vs PyTorch, measured at export.
    encoder_max_abs_diff: float
    decoder_max_abs_diff: float       # past_len 0, whole target
    decoder_past_max_abs_diff: float  # incremental steps with past_len > 0
    decoder_split_max_abs_diff: float | None = None  # the same steps through the split graphs (None: no split)

    @property
    def eos_token_id(self) -> int:
        return self.eos_token_ids[0]

    @property
    def max_abs_diff(self) -> float:
        return max(self.encoder_max_abs_diff, self.decoder_max_abs_diff, self.decoder_past_max_abs_diff,
                   self.decoder_split_max_abs_diff or 0.0)


_SPEC_FIELDS = tuple(f.name for f in fields(Seq2SeqExport)
                     if f.name not in {"encoder_path", "decoder_path", "tokenizer_dir", "key",
                                       "source", "resolved", "from_cache"})
_TUPLE_FIELDS = {"eos_token_ids", "forced_eos_token_ids", "bad_token_ids", "unsupported"}


# --------------------------------------------------------------------------- public entry


def export_seq2seq(source: str, out_dir: Path, *, opset: int = 17, check: bool = True,
                   atol: float = 1e-4, revision: str | None = None) -> Seq2SeqExport:
    """Export (or reuse from ``out_dir/<key>/``) the encoder and decoder graphs of ``source``.

    The ONNX-vs-PyTorch diffs are always measured and stored; ``check`` makes a diff above
    ``atol`` raise ModelError (also on a cache hit, against the stored diffs).
    """
    _validate_settings(opset, "none", atol)
    resolved = resolve_source(source)
    out_dir = Path(out_dir).expanduser()
    key = seq2seq_cache_key(resolved, opset=opset, revision=revision)
    final = out_dir / key
    result = _load_cached(final, source, resolved)
    if result is None:
        out_dir.mkdir(parents=True, exist_ok=True)
        result = _export_into_cache(source, resolved, final, opset=opset, revision=revision)
    if check and result.max_abs_diff > atol:
        raise ModelError(f"ONNX export of {source} differs from PyTorch by "
                         f"{result.max_abs_diff:.3g} > atol {atol:g} ({final})")
    return result


def load_export(entry_dir: Path) -> Seq2SeqExport:
    """Read an export entry (a directory holding export.json and both graphs)."""
    entry_dir = Path(entry_dir).expanduser()
    if not _is_complete(entry_dir):
        raise ModelError(f"not a complete seq2seq export: {entry_dir} (needs encoder.onnx, "
                         "decoder.onnx and export.json)")
    try:
        meta = json.loads((entry_dir / "export.json").read_text())
        return _result(entry_dir, meta, meta["source"], meta["resolved"], from_cache=True)
    except (ValueError, KeyError, TypeError) as err:
        raise ModelError(f"{entry_dir / 'export.json'}: unreadable export record ({err})") from None


def seq2seq_cache_key(resolved: str, *, opset: int, revision: str | None = None) -> str:
    """16-hex key: qbench.models.export's content hash of the model, combined with this layout's settings."""
    content = cache_key(resolved, opset=opset, pooling="seq2seq", normalize=False,
                        revision=revision)
    settings = {"seq2seq_export_version": SEQ2SEQ_EXPORT_VERSION, "exporter": EXPORTER,
                "content": content}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- cache entry


def _is_complete(final: Path) -> bool:
    return all((final / n).is_file() for n in ("encoder.onnx", "decoder.onnx", "export.json"))


def _load_cached(final: Path, source: str, resolved: str) -> Seq2SeqExport | None:
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
            from_cache: bool) -> Seq2SeqExport:
    spec = {name: meta[name] for name in _SPEC_FIELDS}
    for name in _TUPLE_FIELDS:
        spec[name] = tuple(spec[name])
    tok = final / "tokenizer"
    return Seq2SeqExport(encoder_path=final / "encoder.onnx", decoder_path=final / "decoder.onnx",
                         tokenizer_dir=tok if tok.is_dir() else None, key=final.name,
                         source=source, resolved=resolved, from_cache=from_cache, **spec)


def _export_into_cache(source: str, resolved: str, final: Path, *, opset: int,
                       revision: str | None) -> Seq2SeqExport:
    """Build the entry in a temp dir next to ``final`` and rename it into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        meta = _build_entry(source, resolved, tmp, opset=opset, revision=revision)
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


def _build_entry(source: str, resolved: str, out: Path, *, opset: int,
                 revision: str | None) -> dict[str, Any]:
    """Export both graphs into ``out``, measure them against PyTorch; return the export.json record."""
    import torch

    from qbench.models.generate import generation_facts
    from qbench.models.seq2seq_check import check_diffs

    started = time.perf_counter()
    model = _load_model(source, resolved, revision)
    facts = generation_facts(model.generation_config, model.config.model_type)
    with torch.no_grad():
        dims = _probe_dims(model)
    encoder, decoder = _wrappers(model, dims["num_layers"])
    _export_graphs(encoder, decoder, out, opset, dims)
    for module in (model, encoder, decoder):
        module.eval()  # the exporter restores the previous mode; references need dropout off
    if model.training or encoder.training or decoder.training:
        raise ModelError(f"model {source} is still in train mode after export")
    with torch.no_grad():
        diffs = check_diffs(model, out, dims, facts)
    has_tokenizer = _save_tokenizer(resolved, revision, out / "tokenizer")
    files = {name: _export_record(source, resolved, revision, out / f"{name}.onnx", opset=opset)
             for name in ("encoder", "decoder")}
    return {**facts, **dims, **diffs, "opset": opset, "exporter": EXPORTER,
            "model_type": str(getattr(model.config, "model_type", "")),
            "export_version": SEQ2SEQ_EXPORT_VERSION, "source": source, "resolved": resolved,
            "revision": revision, "has_tokenizer": has_tokenizer, "files": files,
            "seconds": round(time.perf_counter() - started, 3)}


def _load_model(source: str, resolved: str, revision: str | None) -> Any:
    import torch
    from transformers import AutoModelForSeq2SeqLM

    try:
        # Eager attention traces to plain MatMul/Softmax, which quantizers understand.
        # float32 whatever the checkpoint stores (ours ship fp16): the ONNX is the FP32 reference.
        model = AutoModelForSeq2SeqLM.from_pretrained(resolved, revision=revision, dtype=torch.float32,
                                                      attn_implementation="eager")
    except Exception as err:  # any load failure is the user's model, not our bug
        reason = first_line(err, None)
        where = f" ({resolved})" if resolved != source else ""
        raise ModelError(f"cannot load seq2seq model {source}{where}: {reason}") from err
    if not getattr(model.config, "is_encoder_decoder", False):
        raise ModelError(f"model {source} is not an encoder-decoder model")
    return model.eval()


# --------------------------------------------------------------------------- torch wrappers


def _probe_dims(model: Any) -> dict[str, int]:
    """Layer count and K/V shapes read off one real forward: no per-family config names needed."""
    import torch

    ids = torch.zeros((1, 3), dtype=torch.long)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), decoder_input_ids=ids[:, :2],
                use_cache=True)
    cache = getattr(out.past_key_values, "self_attention_cache", None)
    if cache is None or not len(cache.layers):
        raise ModelError(f"{model.config.model_type}: the decoder returned no EncoderDecoderCache")
    keys = cache.layers[0].keys
    return {"num_layers": len(cache.layers), "num_heads": int(keys.shape[1]),
            "head_dim": int(keys.shape[3]), "d_model": int(out.encoder_last_hidden_state.shape[-1]),
            "vocab_size": int(out.logits.shape[-1])}


def _head_rule(model: Any) -> tuple[float | None, Any]:
    """What the family's *ForConditionalGeneration.forward does between decoder and logits.

    T5/LongT5 rescale by d_model**-0.5 when ``config.scale_decoder_outputs`` (transformers 5.x;
    set from tie_word_embeddings), UMT5 when tie_word_embeddings; MT5 does not rescale in 5.x.
    Marian and mBART add ``final_logits_bias``. A family with another rule fails the export check.
    """
    cfg = model.config
    flag = getattr(cfg, "scale_decoder_outputs", None)
    if flag is None and cfg.model_type == "umt5":
        flag = cfg.tie_word_embeddings
    return (float(cfg.d_model) ** -0.5 if flag else None), getattr(model, "final_logits_bias", None)


def _wrappers(model: Any, num_layers: int) -> tuple[Any, Any]:
    """(encoder, decoder) torch modules with the graphs' signatures; attribute names become the
    ONNX node prefixes (/encoder/..., /decoder/..., /lm_head/...)."""
    import torch
    from transformers.cache_utils import DynamicCache, DynamicLayer, EncoderDecoderCache

    scale, bias = _head_rule(model)

    class EncoderWrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = model.get_encoder()

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                return_dict=True).last_hidden_state

    class DecoderWrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.decoder, self.lm_head = model.get_decoder(), model.get_output_embeddings()
            self.final_logits_bias = bias

        def forward(self, input_ids: torch.Tensor, encoder_hidden_states: torch.Tensor,
                    encoder_attention_mask: torch.Tensor, *past: torch.Tensor) -> tuple:
            self_cache = DynamicCache()
            for i in range(num_layers):
                layer = DynamicLayer()
                layer.lazy_initialization(past[2 * i], past[2 * i + 1])
                layer.keys, layer.values = past[2 * i], past[2 * i + 1]
                self_cache.layers.append(layer)
            # An empty cross-attention cache: every layer recomputes K/V from the encoder states.
            cache = EncoderDecoderCache(self_cache, DynamicCache())
            hidden = self.decoder(input_ids=input_ids, encoder_hidden_states=encoder_hidden_states,
                                  encoder_attention_mask=encoder_attention_mask,
                                  past_key_values=cache, use_cache=True,
                                  return_dict=True).last_hidden_state
            logits = self.lm_head(hidden if scale is None else hidden * scale)
            if self.final_logits_bias is not None:
                logits = logits + self.final_logits_bias
            return (logits, *(t for layer in self_cache.layers for t in (layer.keys, layer.values)))

    return EncoderWrapper().eval(), DecoderWrapper().eval()


def _export_graphs(encoder: Any, decoder: Any, out: Path, opset: int, dims: dict[str, int]) -> None:
    import warnings

    import torch

    batch, src, tgt, past_len = _TRACE
    gen = torch.Generator().manual_seed(0)
    mask = torch.ones((batch, src), dtype=torch.long)
    mask[1, src - 2:] = 0  # padding in the trace, so no mask shortcut is taken
    kv_shape = (batch, dims["num_heads"], past_len, dims["head_dim"])
    past = [torch.randn(kv_shape, generator=gen) for _ in range(2 * dims["num_layers"])]
    pasts, presents = past_names(dims["num_layers"]), present_names(dims["num_layers"])
    states = torch.randn((batch, src, dims["d_model"]), generator=gen)
    src_axes = {0: "batch", 1: "src_len"}
    jobs = [
        (encoder, (torch.full((batch, src), 5), mask), "encoder.onnx", [*ENCODER_INPUTS],
         ["last_hidden_state"], {n: src_axes for n in (*ENCODER_INPUTS, "last_hidden_state")}),
        (decoder, (torch.full((batch, tgt), 5), states, mask, *past), "decoder.onnx",
         [*DECODER_INPUTS, *pasts], ["logits", *presents],
         {"input_ids": {0: "batch", 1: "tgt_len"}, "logits": {0: "batch", 1: "tgt_len"},
          "encoder_hidden_states": src_axes, "encoder_attention_mask": src_axes,
          **{n: {0: "batch", 2: "past_len"} for n in pasts},
          **{n: {0: "batch", 2: "total_len"} for n in presents}}),
    ]
    for module, args, name, inputs, outputs, axes in jobs:
        module.eval()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer chatter
            torch.onnx.export(module, args, str(out / name), dynamo=False, opset_version=opset,
                              input_names=inputs, output_names=outputs, dynamic_axes=axes,
                              do_constant_folding=True)


def _save_tokenizer(resolved: str, revision: str | None, out: Path) -> bool:
    """Copy the source's tokenizer files byte for byte; hub ids go through transformers. Optional."""
    src = Path(resolved)
    if src.is_dir():
        names = [n for n in (*TOKENIZER_FILES, *_EXTRA_TOKENIZER_FILES) if (src / n).is_file()]
        if not names:
            return False
        out.mkdir(parents=True)
        for name in names:
            shutil.copy2(src / name, out / name)
        return True
    try:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(resolved, revision=revision).save_pretrained(str(out))
    except Exception:  # a model without a tokenizer still exports; generation works on ids
        shutil.rmtree(out, ignore_errors=True)
        return False
    return True
