"""``model.source`` as ONNX: the model a TensorRT user already has, used as is (no export, no PyTorch).

- **retrieval**: a ``.onnx`` file taking ``input_ids`` and ``attention_mask`` [batch, sequence] (int64) and
  returning one pooled sentence embedding [batch, dim], as ``qbench.models.export`` writes it.
- **translation**: a folder holding ``encoder.onnx`` and ``decoder.onnx`` in ``qbench.models.seq2seq``'s
  layout (the decoder takes the self-attention past as ``past.{i}.key/value`` and returns ``logits`` and
  ``present.{i}.key/value``), with ``generation_config.json`` (or ``config.json``) for the special tokens;
  qbench's own export entries (with ``export.json``) qualify as they are.

Both need the tokenizer the model was exported with: ``tokenizer.json`` in ``model.tokenizer`` or beside
the model. Config-level problems (a missing file, the wrong task, no tokenizer) are one line each from
``problems`` at ``qbench validate``; a graph that is not the expected interface is one ``ModelError`` line
naming the file and the tensor when the sweep loads it. With no PyTorch model there is no export check:
the manifest's ``export_max_abs_diff`` is null.

This module holds what the config checks (it imports nothing of qbench, so ``qbench.config.schema`` may use it);
``qbench.models.onnx_load`` reads the graphs.
"""

from __future__ import annotations

from pathlib import Path

GRAPHS = ("encoder.onnx", "decoder.onnx")
RETRIEVAL_INPUTS = ("input_ids", "attention_mask")
INTERFACE = {"retrieval": "inputs input_ids, attention_mask [batch, sequence] -> one embedding [batch, dim]",
             "decoder": "inputs input_ids, encoder_hidden_states, encoder_attention_mask, past.{i}.key/value "
                        "-> logits, present.{i}.key/value (qbench.models.seq2seq's layout)"}


def _path(cfg) -> Path:
    p = Path(cfg.model_source()).expanduser()
    return p if p.is_absolute() else Path(cfg.base_dir) / p


def kind(cfg) -> str | None:
    """``file`` (a .onnx file), ``folder`` (a folder holding encoder.onnx or decoder.onnx), or None: a model
    that qbench exports itself (a package, a Hugging Face folder or hub id)."""
    src = cfg.model.source
    if src.startswith("pkg:"):
        return None
    if src.endswith(".onnx"):
        return "file"
    p = _path(cfg)
    return "folder" if p.is_dir() and any((p / g).is_file() for g in GRAPHS) else None


def tokenizer_dir(cfg) -> Path:
    """The folder whose tokenizer.json the model uses: ``model.tokenizer`` (a folder or the file itself),
    else the model's own folder."""
    if cfg.model.tokenizer:
        t = Path(cfg.model.tokenizer).expanduser()
        t = t if t.is_absolute() else Path(cfg.base_dir) / t
        return (t.parent if t.name == "tokenizer.json" else t).resolve()
    p = _path(cfg)
    return (p if kind(cfg) == "folder" else p.parent).resolve()


def problems(cfg) -> list[str]:
    """What is wrong with an ONNX ``model.source`` before any graph is read: ``key: message`` lines."""
    p, k = _path(cfg), kind(cfg)
    if k == "file":
        if not p.is_file():
            return [f"model.source: ONNX file not found: {p}"]
        if cfg.task != "retrieval":
            return [f"model.source: an ONNX file serves task retrieval; a {cfg.task} model is a folder "
                    f"holding {' and '.join(GRAPHS)}"]
    else:
        if cfg.task != "translation":
            return [f"model.source: {p} holds {'/'.join(g for g in GRAPHS if (p / g).is_file())}, a translation "
                    f"model; task {cfg.task} takes a .onnx file"]
        lacking = [g for g in GRAPHS if not (p / g).is_file()]
        if lacking:
            return [f"model.source: {p} has no {lacking[0]}: the translation task needs both "
                    f"{' and '.join(GRAPHS)} (a decoder alone is a decoder-only model, which it does not run)"]
    tok = tokenizer_dir(cfg)
    if not (tok / "tokenizer.json").is_file():
        key = "model.tokenizer" if cfg.model.tokenizer else "model.source"
        return [f"{key}: no tokenizer.json in {tok} (an ONNX model needs the tokenizer it was exported with; "
                "set model.tokenizer to its folder)"]
    return []
