"""A light tokenizer for exported models: the ``tokenizers`` library only, no torch.

It reproduces ``AutoTokenizer(...)(texts, padding=True, truncation=True,
max_length=max_length)`` from the files ``qbench.models.export`` copies into
``<cache>/<key>/tokenizer/``, so benchmarks and calibration can run where only
onnxruntime (or TensorRT) is installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from qbench.config.errors import ConfigError, ModelError, first_line


class Tokenizer:
    """Batch encoder padding to the longest text, truncating to ``max_length``."""

    def __init__(self, tokenizer_dir: Path, max_length: int = 128) -> None:
        from tokenizers import Tokenizer as _HfTokenizer

        self.tokenizer_dir = Path(tokenizer_dir)
        path = self.tokenizer_dir / "tokenizer.json"
        if not path.is_file():
            raise ModelError(f"tokenizer.json not found: {path}")
        config = _read_config(self.tokenizer_dir)
        self.model_max_length = _model_max_length(config)
        if not 0 < max_length <= self.model_max_length:
            raise ConfigError(f"max_length: must be 1..{self.model_max_length} for "
                              f"{self.tokenizer_dir}, got {max_length}")
        self.max_length = max_length
        try:
            self._tok = _HfTokenizer.from_file(str(path))
        except Exception as err:  # a corrupt file is the user's model, not our bug
            raise ModelError(f"cannot read {path}: {first_line(err, None)}") from err
        self.pad_token = _pad_token(config, path)
        pad_id = self._tok.token_to_id(self.pad_token)
        if pad_id is None:
            raise ModelError(f"pad token {self.pad_token!r} is not in the vocabulary of {path}")
        self.pad_id: int = pad_id
        self._configure(config)

    def _configure(self, config: dict[str, Any]) -> None:
        # tokenizer.json may carry its own padding/truncation (all-MiniLM ships
        # 'pad to 128'); replace them with what transformers' call would apply.
        self._tok.no_padding()
        self._tok.no_truncation()
        self._tok.enable_truncation(self.max_length, stride=0, strategy="longest_first",
                                    direction=config.get("truncation_side", "right"))
        self._tok.enable_padding(direction=config.get("padding_side", "right"),
                                 pad_id=self.pad_id, pad_type_id=0, pad_token=self.pad_token)

    def encode_batch(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Return int64 ``input_ids`` and ``attention_mask`` of shape [B, S], S = longest."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("encode_batch expects a list of str")
        if not texts:
            empty = np.zeros((0, 0), dtype=np.int64)
            return {"input_ids": empty, "attention_mask": empty.copy()}
        encodings = self._tok.encode_batch(list(texts), add_special_tokens=True)
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        }

    def decode_batch(self, ids: list[list[int]]) -> list[str]:
        """Token ids back to text, special tokens (pad, eos, language tags) dropped."""
        return self._tok.decode_batch([list(map(int, row)) for row in ids], skip_special_tokens=True)


def _read_config(tokenizer_dir: Path) -> dict[str, Any]:
    """tokenizer_config.json overlaid on special_tokens_map.json (the former wins, as in transformers)."""
    config: dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = tokenizer_dir / name
        if path.is_file():
            try:
                config.update(json.loads(path.read_text(encoding="utf-8")))
            except ValueError as err:
                raise ModelError(f"invalid JSON in {path}: {err}") from err
    return config


def _token_text(value: Any) -> str | None:
    # Special tokens are stored either as a string or as an AddedToken dict.
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _pad_token(config: dict[str, Any], tokenizer_json: Path) -> str:
    token = _token_text(config.get("pad_token"))
    if token is None:
        padding = json.loads(tokenizer_json.read_text(encoding="utf-8")).get("padding") or {}
        token = _token_text(padding.get("pad_token"))
    if token is None:
        raise ModelError(f"no pad token defined for {tokenizer_json.parent}; "
                         "batch padding needs one")
    return token


def _model_max_length(config: dict[str, Any]) -> int:
    # transformers uses a huge sentinel (int(1e30)) when the model sets no limit.
    value = config.get("model_max_length")
    return int(value) if isinstance(value, (int, float)) and value > 0 else int(1e30)
