"""Reading an ONNX ``model.source`` (see qbench.config.onnx_source) into what the sweep uses: an ExportedModel
(retrieval) or a Seq2SeqExport (translation), after checking each graph's interface."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

from qbench.config.errors import ModelError
from qbench.config.onnx_source import GRAPHS, INTERFACE, RETRIEVAL_INPUTS, _path, problems, tokenizer_dir


def _check(cfg) -> None:
    from qbench.config.errors import ConfigError

    bad = problems(cfg)
    if bad:
        raise ConfigError(bad[0])


def _sha256(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _dims(value_info) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in value_info.type.tensor_type.shape.dim]


def _io(model) -> tuple[dict, dict]:
    inits = {t.name for t in model.graph.initializer}
    return ({i.name: i for i in model.graph.input if i.name not in inits}, {o.name: o for o in model.graph.output})


def encoder(cfg):
    """A retrieval model's ``.onnx`` file, checked against the interface qbench feeds; an ExportedModel."""
    from qbench.models.export import ExportedModel
    from qbench.quantize.qdq import load_model

    _check(cfg)
    path = _path(cfg).resolve()
    model = load_model(path)  # missing, corrupt or of an unsupported opset: one ModelError line naming it
    inputs, outputs = _io(model)
    for name in RETRIEVAL_INPUTS:
        if name not in inputs:
            raise ModelError(f"{path}: no graph input '{name}' (a retrieval model takes {INTERFACE['retrieval']})")
    extra = [n for n in inputs if n not in RETRIEVAL_INPUTS]
    if extra:
        raise ModelError(f"{path}: graph input '{extra[0]}' is not one qbench feeds (a retrieval model takes "
                         f"{INTERFACE['retrieval']})")
    out = next(iter(outputs.values()))
    if len(outputs) != 1 or len(_dims(out)) not in (0, 2):
        raise ModelError(f"{path}: output '{out.name}' has {len(_dims(out))} axes, not a pooled sentence embedding "
                         f"[batch, dim] (a retrieval model has {INTERFACE['retrieval']}; pool in the graph)")
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return ExportedModel(onnx_path=path, tokenizer_dir=tokenizer_dir(cfg), key="onnx-" + _sha256([path])[:16],
                         source=cfg.model.source, resolved=str(path), max_abs_diff=None, opset=opset,
                         pooling="in the graph", from_cache=False)


def seq2seq(cfg):
    """A translation model's folder (encoder.onnx + decoder.onnx), checked against the decoding interface of
    qbench.models.generate; a Seq2SeqExport."""
    from qbench.models.seq2seq import (DECODER_INPUTS, ENCODER_INPUTS, Seq2SeqExport, load_export, past_names,
                                       present_names)
    from qbench.models.generate import generation_facts
    from qbench.quantize.qdq import load_model

    _check(cfg)
    folder = _path(cfg).resolve()
    if (folder / "export.json").is_file():  # one of qbench's own export entries: its record has every fact
        exp = load_export(folder)
        return _replace(exp, source=cfg.model.source, resolved=str(folder), tokenizer_dir=tokenizer_dir(cfg))
    enc, dec = (load_model(folder / g) for g in GRAPHS)
    enc_in, enc_out = _io(enc)
    dec_in, dec_out = _io(dec)
    layers = sum(1 for n in dec_in if n.startswith("past.") and n.endswith(".key"))
    for graph, have, want, what in (("encoder.onnx", enc_in, ENCODER_INPUTS, "input"),
                                    ("decoder.onnx", dec_in, (*DECODER_INPUTS, *past_names(layers)), "input"),
                                    ("decoder.onnx", dec_out, ("logits", *present_names(layers)), "output")):
        missing = [n for n in want if n not in have]
        if missing or not layers:
            name = missing[0] if missing else "past.0.key"
            raise ModelError(f"{folder / graph}: no graph {what} '{name}' (a decoder has {INTERFACE['decoder']}; "
                             "qbench sweep exports one in this layout from a Hugging Face model)")
    past, logits = _dims(dec_in["past.0.key"]), _dims(dec_out["logits"])
    d_model = _dims(next(iter(enc_out.values())))[-1:] or [None]
    dims = {"num_heads": past[1] if len(past) == 4 else None, "head_dim": past[3] if len(past) == 4 else None,
            "d_model": d_model[0], "vocab_size": logits[-1] if logits else None}
    unknown = [k for k, v in dims.items() if not isinstance(v, int) or v <= 0]
    if unknown:
        raise ModelError(f"{folder / 'decoder.onnx'}: {unknown[0]} is not a fixed dimension of the graph (past.0.key "
                         f"{past}, logits {logits}); qbench needs it to allocate the first step's empty past")
    gen, model_type = _generation_config(folder)
    facts = generation_facts(gen, f"{folder}: {model_type}")  # its errors name the folder
    opset = next(o.version for o in dec.opset_import if o.domain in ("", "ai.onnx"))
    return Seq2SeqExport(
        encoder_path=folder / "encoder.onnx", decoder_path=folder / "decoder.onnx",
        tokenizer_dir=tokenizer_dir(cfg), key="onnx-" + _sha256([folder / g for g in GRAPHS])[:16],
        source=cfg.model.source, resolved=str(folder), from_cache=False, opset=opset, exporter="(given as ONNX)",
        model_type=model_type, num_layers=layers, **dims,
        encoder_max_abs_diff=None, decoder_max_abs_diff=None, decoder_past_max_abs_diff=None,
        decoder_split_max_abs_diff=None,
        **{k: tuple(v) if isinstance(v, list) else v for k, v in facts.items()})


def _generation_config(folder: Path) -> tuple[SimpleNamespace, str]:
    """The special tokens and decoding settings, from generation_config.json over config.json (plain JSON: the
    attributes generation_facts reads, as transformers' GenerationConfig would hold them)."""
    merged: dict = {}
    model_type = "onnx"
    for name in ("config.json", "generation_config.json"):
        f = folder / name
        if f.is_file():
            try:
                data = json.loads(f.read_text())
            except (ValueError, UnicodeDecodeError) as e:
                raise ModelError(f"{f}: not readable JSON ({e})") from None
            if not isinstance(data, dict):
                raise ModelError(f"{f}: expected a JSON object")
            model_type = str(data.get("model_type", model_type))
            merged.update(data)
    if not merged:
        raise ModelError(f"{folder}: no generation_config.json or config.json beside the graphs (the decoder's "
                         "start, end and padding token ids come from there)")
    return SimpleNamespace(**merged), model_type


def _replace(exp, **changes):
    from dataclasses import replace

    return replace(exp, **changes)
