"""Greedy and beam search over an exported encoder and decoder (``qbench.models.seq2seq``).

numpy only: any two ``Session`` objects (ONNX Runtime, TensorRT, a quantized variant) can be
decoded. The search follows transformers' ``GenerationMixin`` step for step, so that FP32 greedy
output is token-identical to ``model.generate(do_sample=False, num_beams=1)``:

- the decoder starts from ``decoder_start_token_id``; a finished row is fed ``pad_token_id``;
- the logits processors HF turns on from a model's generation config are applied in HF's order:
  single-token ``bad_words_ids``, ``min_length``, ``forced_bos_token_id``, ``forced_eos_token_id``
  (at ``max_length - 1``), ``renormalize_logits``; other settings are refused (``spec.unsupported``);
- beam search is HF's vectorized beam search (``_beam_search`` in transformers 5.x): the top
  ``max(2, 1 + n_eos) * num_beams`` continuations per step; a candidate ending in EOS (or at the
  length limit) finishes only if it ranks within the first ``num_beams``; finished hypotheses score
  ``sum_logprobs / generated_len ** length_penalty`` (EOS counted, start token not);
  ``early_stopping`` True / False / "never" with HF's stopping heuristic. Ties in top-k go to the
  lower index; torch.topk does not document its order, the one place exactness is not guaranteed.

Returned sequences hold the generated ids only (no decoder start token), up to and including the
first EOS; a row without EOS has exactly ``max_new_tokens`` ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from qbench.config.errors import ConfigError, DataError, ModelError

if TYPE_CHECKING:
    from qbench.backends import Session

NEG = np.float32(-1.0e9)  # HF's "very large negative" for beams that must not be picked


@dataclass(frozen=True)
class DecoderFeeds:
    """One decoder call: ``feeds`` are exactly the graph inputs; ``token_mask`` [batch, tgt_len]
    marks the real target positions (False: right padding, or a row that had already finished).
    Calibration should take statistics at True positions only."""

    feeds: dict[str, np.ndarray]
    token_mask: np.ndarray


def pad_batch(sequences: Sequence[Sequence[int]], pad_token_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token id lists into (input_ids, attention_mask), both int64 [batch, max_len]."""
    if not sequences or any(len(s) == 0 for s in sequences):
        raise DataError("pad_batch: every sequence needs at least one token")
    width = max(len(s) for s in sequences)
    ids = np.full((len(sequences), width), pad_token_id, dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for i, s in enumerate(sequences):
        ids[i, :len(s)], mask[i, :len(s)] = s, 1
    return ids, mask


def generation_facts(gc: Any, model_type: str = "model") -> dict[str, Any]:
    """What this module needs from a transformers GenerationConfig, resolved as transformers'
    ``_prepare_special_tokens`` does (start falls back to bos, pad to the first EOS); EOS is
    dropped from bad_words_ids as NoBadWordsLogitsProcessor does. Plain attribute reads: no torch."""
    get = (lambda name: getattr(gc, name, None))  # noqa: E731
    as_ids = (lambda v: [] if v is None else [int(x) for x in (v if isinstance(v, list) else [v])])  # noqa: E731
    eos = as_ids(get("eos_token_id"))
    start = get("decoder_start_token_id")
    start = get("bos_token_id") if start is None else start
    if start is None or isinstance(start, list):
        raise ModelError(f"{model_type}: generation needs one decoder_start_token_id "
                         f"(or bos_token_id), got {start!r}")
    pad = get("pad_token_id") if get("pad_token_id") is not None else (eos[0] if eos else None)
    if pad is None:
        raise ModelError(f"{model_type}: neither pad_token_id nor eos_token_id is set")
    bad = [list(b) for b in (get("bad_words_ids") or []) if not (len(b) == 1 and b[0] in eos)]
    early = get("early_stopping")
    return {
        "decoder_start_token_id": int(start), "eos_token_ids": eos, "pad_token_id": int(pad),
        "forced_bos_token_id": None if get("forced_bos_token_id") is None
        else int(get("forced_bos_token_id")),
        "forced_eos_token_ids": as_ids(get("forced_eos_token_id")),
        "bad_token_ids": [b[0] for b in bad if len(b) == 1],
        "min_length": int(get("min_length") or 0),
        "renormalize_logits": bool(get("renormalize_logits")),
        "max_length": int(get("max_length") or 20), "num_beams": int(get("num_beams") or 1),
        "length_penalty": float(1.0 if get("length_penalty") is None else get("length_penalty")),
        "early_stopping": early if early == "never" else bool(early),
        "unsupported": _unsupported(get, bad),
    }


def _unsupported(get: Callable[[str], Any], bad: list[list[int]]) -> list[str]:
    """Settings that change greedy or beam results and that Generator does not implement."""
    checks = {
        "repetition_penalty": get("repetition_penalty") not in (None, 1.0),
        "encoder_repetition_penalty": get("encoder_repetition_penalty") not in (None, 1.0),
        "no_repeat_ngram_size": bool(get("no_repeat_ngram_size")),
        "encoder_no_repeat_ngram_size": bool(get("encoder_no_repeat_ngram_size")),
        "bad_words_ids (multi-token)": any(len(b) > 1 for b in bad),
        "min_new_tokens": bool(get("min_new_tokens")),
        "suppress_tokens": get("suppress_tokens") is not None,
        "begin_suppress_tokens": get("begin_suppress_tokens") is not None,
        "sequence_bias": get("sequence_bias") is not None,
        "exponential_decay_length_penalty": get("exponential_decay_length_penalty") is not None,
        "guidance_scale": get("guidance_scale") not in (None, 1.0),
        "remove_invalid_values": bool(get("remove_invalid_values")),
        "watermarking_config": get("watermarking_config") is not None,
        "num_beam_groups": (get("num_beam_groups") or 1) > 1,
        "constraints / force_words_ids": bool(get("constraints") or get("force_words_ids")),
    }
    return sorted(name for name, hit in checks.items() if hit)


def log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def topk(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Largest ``k`` along the last axis of a 2-D array, sorted descending (ties: lower index first)."""
    idx = np.argpartition(-x, k - 1, axis=-1)[:, :k] if k < x.shape[-1] else \
        np.broadcast_to(np.arange(x.shape[-1]), x.shape)
    vals = np.take_along_axis(x, idx, axis=-1)
    order = np.lexsort((idx, -vals), axis=-1)
    return np.take_along_axis(vals, order, axis=-1), np.take_along_axis(idx, order, axis=-1)


class Generator:
    """Decode with an encoder and a decoder session described by an export spec (a ``Seq2SeqExport``, not
    imported here: the exporter imports this module's ``generation_facts``)."""

    def __init__(self, encoder: "Session", decoder: "Session", spec: Any, fast: Any = None) -> None:
        if spec.unsupported:
            raise ConfigError(f"{spec.source}: the generation config sets {', '.join(spec.unsupported)}, "
                              "which qbench.models.generate does not reproduce")
        from qbench.models.layout import DECODER_INPUTS, past_names, present_names

        self.encoder, self.decoder, self.spec = encoder, decoder, spec
        # A qbench.models.fast_greedy.FastGreedy (or LazyFastGreedy: None from run() where the decoder does not
        # split): greedy search with the cross-attention K/V computed once per sentence (ONNX Runtime only);
        # beam search, traces and teacher forcing use the whole decoder.
        self.fast = fast
        self._past = past_names(spec.num_layers)
        missing = [n for n in (*DECODER_INPUTS, *self._past) if n not in decoder.input_names]
        outputs = ["logits", *present_names(spec.num_layers)]
        missing += [n for n in outputs if n not in decoder.output_names]
        if "last_hidden_state" not in encoder.output_names:
            missing.append("last_hidden_state (encoder)")
        if missing:
            raise ModelError(f"decoder/encoder sessions lack {', '.join(missing)}")
        self._out = [decoder.output_names.index(n) for n in outputs]
        self._eos = np.array(spec.eos_token_ids, dtype=np.int64)
        self._bad = np.array(spec.bad_token_ids, dtype=np.int64)

    # ------------------------------------------------------------------ sessions

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        outs = self.encoder.infer({"input_ids": input_ids, "attention_mask": attention_mask})
        return outs[self.encoder.output_names.index("last_hidden_state")]

    def empty_past(self, batch: int) -> list[np.ndarray]:
        shape = (batch, self.spec.num_heads, 0, self.spec.head_dim)
        return [np.zeros(shape, dtype=np.float32) for _ in self._past]

    def decoder_feeds(self, input_ids: np.ndarray, states: np.ndarray, mask: np.ndarray,
                      past: list[np.ndarray]) -> dict[str, np.ndarray]:
        return {"input_ids": input_ids, "encoder_hidden_states": states,
                "encoder_attention_mask": mask, **dict(zip(self._past, past))}

    def run_decoder(self, input_ids: np.ndarray, states: np.ndarray, mask: np.ndarray,
                    past: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """One decoder call: logits [batch, tgt_len, vocab] and the present K/V (past + new)."""
        return self._run(self.decoder_feeds(input_ids, states, mask, past))

    def _run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        outs = self.decoder.infer(feeds)
        logits, *present = (outs[i] for i in self._out)
        return logits, present

    def _decode(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Last-position logits [batch, vocab] as a float32 copy, and the present K/V."""
        logits, present = self._run(feeds)
        return logits[:, -1, :].astype(np.float32), present

    # ------------------------------------------------------------------ public API

    def generate(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None,
                 max_new_tokens: int | None = None, num_beams: int = 1, *,
                 length_penalty: float | None = None,
                 early_stopping: bool | str | None = None) -> list[list[int]]:
        """Generated ids per row; ``max_new_tokens`` defaults to the model's max_length - 1."""
        ids, mask, max_length = self._prepare(input_ids, attention_mask, max_new_tokens)
        if not isinstance(num_beams, int) or num_beams < 1:
            raise ConfigError(f"num_beams: must be an integer >= 1, got {num_beams!r}")
        states = self.encode(ids, mask)
        rows = self.fast.run(self, states, mask, max_length) if num_beams == 1 and self.fast else None
        if rows is not None:
            pass
        elif num_beams == 1:
            steps = self._greedy(states, mask, max_length)
            try:
                while True:
                    next(steps)
            except StopIteration as done:
                rows = done.value
        else:
            lp = self.spec.length_penalty if length_penalty is None else float(length_penalty)
            early = self.spec.early_stopping if early_stopping is None else early_stopping
            if not (isinstance(early, bool) or early == "never"):
                raise ConfigError(f"early_stopping: must be True, False or 'never', got {early!r}")
            rows = self._beam(states, mask, max_length, num_beams, lp, early)
        return [self._trim(row) for row in rows]

    def greedy_trace(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None,
                     max_new_tokens: int | None = None) -> Iterator[DecoderFeeds]:
        """The decoder feeds of every greedy step (first step past_len 0, then 1, 2, ...)."""
        ids, mask, max_length = self._prepare(input_ids, attention_mask, max_new_tokens)
        yield from self._greedy(self.encode(ids, mask), mask, max_length)

    def teacher_forced(self, input_ids: np.ndarray, attention_mask: np.ndarray | None,
                       targets: Sequence[Sequence[int]]) -> DecoderFeeds:
        """Decoder feeds for a whole reference at once (past_len 0): input_ids is the reference
        shifted right behind decoder_start_token_id (HF's labels -> decoder_input_ids)."""
        ids, mask, _ = self._prepare(input_ids, attention_mask, 1)
        if len(targets) != ids.shape[0] or any(len(t) == 0 for t in targets):
            raise DataError(f"teacher_forced: need one non-empty target per source row "
                            f"({ids.shape[0]} rows, {len(targets)} targets)")
        shifted = [[self.spec.decoder_start_token_id, *list(t)[:-1]] for t in targets]
        dec_ids, dec_mask = pad_batch(shifted, self.spec.pad_token_id)
        feeds = self.decoder_feeds(dec_ids, self.encode(ids, mask), mask, self.empty_past(len(ids)))
        return DecoderFeeds(feeds, dec_mask.astype(bool))

    # ------------------------------------------------------------------ search

    def _prepare(self, input_ids: np.ndarray, attention_mask: np.ndarray | None,
                 max_new_tokens: int | None) -> tuple[np.ndarray, np.ndarray, int]:
        ids = np.asarray(input_ids)
        if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] == 0 or ids.dtype.kind not in "iu":
            raise DataError(f"input_ids: need a non-empty 2-D integer array, got {ids.dtype} {ids.shape}")
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
        if mask.shape != ids.shape:
            raise DataError(f"attention_mask shape {mask.shape} != input_ids shape {ids.shape}")
        new = self.spec.max_length - 1 if max_new_tokens is None else max_new_tokens
        if not isinstance(new, (int, np.integer)) or new < 1:
            raise ConfigError(f"max_new_tokens: must be an integer >= 1, got {max_new_tokens!r}")
        return ids.astype(np.int64), mask.astype(np.int64), 1 + int(new)

    def _process(self, scores: np.ndarray, cur_len: int, max_length: int) -> np.ndarray:
        """HF's default logits processors, in HF's order. ``cur_len`` counts the start token."""
        spec = self.spec
        if self._bad.size:
            scores[:, self._bad] = -np.inf
        if cur_len < spec.min_length and self._eos.size:
            scores[:, self._eos] = -np.inf
        if spec.forced_bos_token_id is not None and cur_len == 1:
            scores[:] = -np.inf
            scores[:, spec.forced_bos_token_id] = 0
        if spec.forced_eos_token_ids and cur_len == max_length - 1:
            scores[:] = -np.inf
            scores[:, list(spec.forced_eos_token_ids)] = 0
        return log_softmax(scores) if spec.renormalize_logits else scores

    def _greedy(self, states: np.ndarray, mask: np.ndarray,
                max_length: int) -> Iterator[DecoderFeeds]:
        """Yield each step's feeds; return the [batch, cur_len] sequences (start token included)."""
        batch = states.shape[0]
        seqs = np.full((batch, 1), self.spec.decoder_start_token_id, dtype=np.int64)
        unfinished = np.ones(batch, dtype=bool)
        past = self.empty_past(batch)
        while True:
            feeds = self.decoder_feeds(seqs[:, -1:], states, mask, past)
            yield DecoderFeeds(feeds, unfinished[:, None].copy())
            logits, past = self._decode(feeds)
            scores = self._process(logits, seqs.shape[1], max_length)
            nxt = np.where(unfinished, scores.argmax(axis=-1), self.spec.pad_token_id)
            seqs = np.concatenate([seqs, nxt[:, None]], axis=1)
            unfinished &= ~np.isin(nxt, self._eos)
            if not unfinished.any() or seqs.shape[1] >= max_length:
                return seqs

    def _beam(self, states: np.ndarray, mask: np.ndarray, max_length: int, num_beams: int,
              length_penalty: float, early_stopping: bool | str) -> np.ndarray:
        """transformers' _beam_search, vectorized over [batch, beam]; returns the best sequences."""
        batch, nb = states.shape[0], num_beams
        keep = max(2, 1 + self._eos.size) * nb  # candidates kept per step, as HF
        top_nb = np.arange(keep) < nb
        # HF fills with `pad_token_id or eos_token_id[0]` (so a pad id of 0 fills with EOS).
        fill = self.spec.pad_token_id or (int(self._eos[0]) if self._eos.size else -1)
        running = np.full((batch, nb, max_length), fill, dtype=np.int64)
        running[:, :, 0] = self.spec.decoder_start_token_id
        seqs = running.copy()
        run_scores = np.zeros((batch, nb), np.float32)
        run_scores[:, 1:] = NEG  # only beam 0 expands at the first step
        fin_scores = np.full((batch, nb), NEG, np.float32)
        finished = np.zeros((batch, nb), dtype=bool)
        improvable = np.ones((batch, 1), dtype=bool)
        states, mask = np.repeat(states, nb, axis=0), np.repeat(mask, nb, axis=0)
        past, cur_len = self.empty_past(batch * nb), 1
        offsets = (np.arange(batch) * nb)[:, None]
        while True:
            ids = running.reshape(batch * nb, max_length)[:, cur_len - 1:cur_len]
            logits, past = self._decode(self.decoder_feeds(ids, states, mask, past))
            logp = self._process(log_softmax(logits), cur_len, max_length)
            vocab = logp.shape[-1]
            logp = (logp.reshape(batch, nb, vocab) + run_scores[:, :, None]).reshape(batch, -1)
            cand_scores, cand_idx = topk(logp, keep)
            cand_beam, cand_tok = cand_idx // vocab, cand_idx % vocab
            cand_seqs = np.take_along_axis(running, cand_beam[:, :, None], axis=1)
            cand_seqs[:, :, cur_len] = cand_tok
            hits = np.isin(cand_tok, self._eos) | (cur_len + 1 >= max_length)
            # Running beams for the next step: the best candidates that did not just finish.
            cand_run = cand_scores + hits.astype(np.float32) * NEG
            _, pick = topk(cand_run, nb)
            running = np.take_along_axis(cand_seqs, pick[:, :, None], axis=1)
            run_scores = np.take_along_axis(cand_run, pick, axis=1)
            source = np.take_along_axis(cand_beam + offsets, pick, axis=1).reshape(-1)
            seqs, fin_scores, finished = self._merge_finished(
                (seqs, fin_scores, finished), (cand_seqs, cand_scores, hits & top_nb[None, :]),
                improvable, cur_len, length_penalty, early_stopping)
            past = [p[source] for p in past]
            cur_len += 1
            improvable = self._improvable(improvable, run_scores, fin_scores, finished, cur_len,
                                          max_length, early_stopping, length_penalty)
            open_beam = not (finished.all() and early_stopping is True)
            if not (improvable.any() and open_beam and not hits.all()):
                return seqs[:, 0, :]

    @staticmethod
    def _merge_finished(best: tuple, cand: tuple, improvable: np.ndarray, cur_len: int,
                        length_penalty: float, early_stopping: bool | str) -> tuple:
        """HF's _update_finished_beams: candidates that just finished (ranked within num_beams),
        scored sum_logprobs / generated_len ** length_penalty, merged with the best so far.
        The -1e9 terms are added one by one, as HF does, so ties resolve the same way."""
        seqs, scores, finished = best
        cand_seqs, cand_scores, just = cand
        scored = cand_scores / np.float32(float(cur_len) ** length_penalty)
        full = finished.all(axis=1, keepdims=True) & (early_stopping is True)
        scored = scored + full.astype(np.float32) * NEG
        scored = scored + (~improvable).astype(np.float32) * NEG
        scored = scored + (~just).astype(np.float32) * NEG
        merged = np.concatenate([scores, scored], axis=1)
        _, pick = topk(merged, scores.shape[1])
        return (np.take_along_axis(np.concatenate([seqs, cand_seqs], axis=1), pick[:, :, None], axis=1),
                np.take_along_axis(merged, pick, axis=1),
                np.take_along_axis(np.concatenate([finished, just], axis=1), pick, axis=1))

    @staticmethod
    def _improvable(improvable: np.ndarray, run_scores: np.ndarray, fin_scores: np.ndarray,
                    finished: np.ndarray, cur_len: int, max_length: int,
                    early_stopping: bool | str, length_penalty: float) -> np.ndarray:
        """HF's _check_early_stop_heuristic: can a running beam still beat the worst finished one?"""
        if early_stopping == "never" and length_penalty > 0.0:
            best_len = max_length - 1
        else:
            best_len = cur_len - 1
        best_running = run_scores[:, :1] / np.float32(float(best_len) ** length_penalty)
        worst = np.where(finished, fin_scores.min(axis=1, keepdims=True), NEG)
        return improvable & (best_running > worst).any(axis=-1, keepdims=True)

    def _trim(self, row: np.ndarray) -> list[int]:
        """Drop the start token; cut after the first EOS."""
        out = row[1:].tolist()
        hit = np.flatnonzero(np.isin(row[1:], self._eos))
        return out[:hit[0] + 1] if hit.size else out


# ---------------------------------------------------------------------- calibration feeds


def iter_teacher_forced(generator: Generator, batches: Iterable[tuple[np.ndarray, np.ndarray,
                                                                      Sequence[Sequence[int]]]]
                        ) -> Iterator[DecoderFeeds]:
    """Teacher-forced decoder feeds for (input_ids, attention_mask, reference target ids) batches."""
    for input_ids, attention_mask, targets in batches:
        yield generator.teacher_forced(input_ids, attention_mask, targets)


def iter_greedy_traces(generator: Generator, batches: Iterable[tuple[np.ndarray, np.ndarray]],
                       max_new_tokens: int | None = None) -> Iterator[DecoderFeeds]:
    """Every step's decoder feeds while greedy-decoding each (input_ids, attention_mask) batch."""
    for input_ids, attention_mask in batches:
        yield from generator.greedy_trace(input_ids, attention_mask, max_new_tokens)
