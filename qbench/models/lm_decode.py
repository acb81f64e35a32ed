"""Greedy decoding and prefill/decode timing on the causal-LM graph of ``qbench.models.causal_lm``.

Works on any session with ``infer(feeds) -> outputs`` in the graph's output order (``qbench.backends.ort``'s
OrtSession, or a TensorRT session), so a quantized variant decodes through the same loop as the FP32 graph.
The loop is transformers' greedy ``generate()`` restated: prompts left-padded, positions from the mask (in the
graph), argmax of the last logits, a row that has emitted an EOS is finished and fed the pad id from then on.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from qbench.config.errors import ConfigError

if TYPE_CHECKING:
    from qbench.models.causal_lm import CausalLMExport


def left_pad(prompts: Sequence[Sequence[int]], pad_token_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), both int64 [batch, longest], padded on the left as decoders need."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ConfigError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad_token_id, np.int64)
    mask = np.zeros((len(prompts), width), np.int64)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = p
        mask[row, width - len(p):] = 1
    return ids, mask


class CausalDecoder:
    def __init__(self, session: Any, spec: CausalLMExport) -> None:
        self.session, self.spec = session, spec

    def forward(self, ids: np.ndarray, mask: np.ndarray, past: dict[str, np.ndarray] | None
                ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(logits [batch, seq, vocab], the new cache). ``past`` None is a prefill."""
        from qbench.models.causal_lm import past_names

        past = self.spec.empty_past(ids.shape[0]) if past is None else past
        out = self.session.infer({"input_ids": ids, "attention_mask": mask, **past})
        return out[0], dict(zip(past_names(self.spec.num_layers), out[1:]))

    def greedy(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        """The new tokens of each prompt, decoded together as one left-padded batch; each list ends at its first
        EOS (included) or after ``max_new_tokens``."""
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens: must be >= 1, got {max_new_tokens}")
        eos = np.array(self.spec.eos_token_ids)
        ids, mask = left_pad(prompts, self.spec.pad_token_id)
        logits, past = self.forward(ids, mask, None)
        done = np.zeros(len(prompts), bool)
        new: list[np.ndarray] = []
        for step in range(max_new_tokens):
            nxt = np.where(done, self.spec.pad_token_id, logits[:, -1].argmax(-1)).astype(np.int64)
            new.append(nxt)
            done |= np.isin(nxt, eos)
            if done.all() or step == max_new_tokens - 1:
                break
            mask = np.concatenate([mask, np.ones((len(prompts), 1), np.int64)], axis=1)
            logits, past = self.forward(nxt[:, None], mask, past)
        return [trim(row, self.spec.eos_token_ids) for row in np.stack(new, 1).tolist()]


def trim(tokens: Sequence[int], eos_token_ids: Sequence[int]) -> list[int]:
    """``tokens`` up to and including the first EOS (what follows is padding)."""
    out = []
    for t in tokens:
        out.append(int(t))
        if t in eos_token_ids:
            break
    return out


def time_prefill_decode(decoder: CausalDecoder, *, prompt_len: int = 128, new_tokens: int = 32, batch: int = 1,
                        repeats: int = 5, seed: int = 0) -> dict[str, float]:
    """Median ms of a ``prompt_len``-token prefill, and median ms per decode step over ``new_tokens`` steps that
    follow it, at ``batch`` rows of random non-special ids; one warm-up round first. The decode steps feed fixed
    ids (argmax is not timed), so every round does the same work. The process CPU time of the same spans is
    reported beside the wall time: on a shared machine it moves far less (all threads summed)."""
    rng = np.random.default_rng(seed)
    specials = {decoder.spec.pad_token_id, *decoder.spec.eos_token_ids}
    ids = rng.integers(3, decoder.spec.vocab_size, size=(batch, prompt_len)).astype(np.int64)
    ids = np.where(np.isin(ids, list(specials)), 3, ids)
    step_ids = ids[:, :1]
    rows: list[tuple[float, float, float, float]] = []
    for r in range(repeats + 1):
        mask = np.ones_like(ids)
        t0, c0 = time.perf_counter(), time.process_time()
        _, past = decoder.forward(ids, mask, None)
        t1, c1 = time.perf_counter(), time.process_time()
        for _ in range(new_tokens):
            mask = np.concatenate([mask, np.ones((batch, 1), np.int64)], axis=1)
            _, past = decoder.forward(step_ids, mask, past)
        t2, c2 = time.perf_counter(), time.process_time()
        if r:  # round 0 warms up
            rows.append(((t1 - t0) * 1e3, (t2 - t1) * 1e3 / new_tokens, (c1 - c0) * 1e3, (c2 - c1) * 1e3 / new_tokens))
    med = [statistics.median(col) for col in zip(*rows)]
    return {"prefill_ms": med[0], "decode_ms_per_token": med[1], "prefill_cpu_ms": med[2],
            "decode_cpu_ms_per_token": med[3], "prompt_len": prompt_len, "new_tokens": new_tokens, "batch": batch,
            "repeats": repeats}
