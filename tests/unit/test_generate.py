"""Search logic of qbench.models.generate: greedy EOS handling, HF's logits processors, beam search.

The decoder here is a fake (``ScriptedSession``) on purpose: these tests check the search itself,
which needs logits chosen by the test, not by a model. The fake keeps the token history in its
past/present tensors, exactly where a real decoder keeps its K/V cache, so a wrong cache reorder
in beam search feeds the script a wrong history and changes the results. Agreement with a real
model and transformers' generate() is tested in tests/integration/test_seq2seq_export.py.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from types import SimpleNamespace
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from qbench.config.errors import ConfigError, DataError, ModelError
from qbench.models.seq2seq import Seq2SeqExport
from qbench.models.generate import DecoderFeeds, Generator, generation_facts, pad_batch, topk

START, EOS, PAD = 0, 1, 5  # PAD differs from START here, so the two cannot be confused


def make_spec(vocab: int = 6, **overrides) -> Seq2SeqExport:
    fields = dict(
        encoder_path=Path("encoder.onnx"), decoder_path=Path("decoder.onnx"), tokenizer_dir=None,
        key="0" * 16, source="scripted", resolved="scripted", from_cache=False, opset=17,
        exporter="none", model_type="scripted", decoder_start_token_id=START, eos_token_ids=(EOS,),
        pad_token_id=PAD, forced_bos_token_id=None, forced_eos_token_ids=(), bad_token_ids=(),
        min_length=0, renormalize_logits=False, max_length=20, num_beams=1, length_penalty=1.0,
        early_stopping=False, unsupported=(), num_layers=1, num_heads=1, head_dim=1, d_model=1,
        vocab_size=vocab, encoder_max_abs_diff=0.0, decoder_max_abs_diff=0.0,
        decoder_past_max_abs_diff=0.0)
    fields.update(overrides)
    return Seq2SeqExport(**fields)


class RowIdEncoder:
    """Fake encoder: the hidden state of source row r is r, so the scripted decoder knows which
    row (and, after beam expansion, which row's beam) it is decoding."""

    input_names = ["input_ids", "attention_mask"]
    output_names = ["last_hidden_state"]

    def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        batch, length = feeds["input_ids"].shape
        rows = np.arange(batch, dtype=np.float32)[:, None, None]
        return [np.broadcast_to(rows, (batch, length, 1)).copy()]

    def close(self) -> None:
        pass


class ScriptedSession:
    """Fake decoder session returning predetermined logits: ``script(row, history)`` gives the
    logits [vocab] for the token after ``history`` (a tuple starting with the decoder start token).

    Used instead of a model because these tests are about the search logic; see the module
    docstring. The history is carried in present.0.key / present.0.value ([batch, 1, len, 1], the
    token ids as floats) and read back from past.0.key, like a K/V cache."""

    input_names = ["input_ids", "encoder_hidden_states", "encoder_attention_mask",
                   "past.0.key", "past.0.value"]
    output_names = ["logits", "present.0.key", "present.0.value"]

    def __init__(self, script: Callable[[int, tuple[int, ...]], np.ndarray]) -> None:
        self.script = script
        self.calls: list[dict[str, np.ndarray]] = []

    def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.calls.append({k: v.copy() for k, v in feeds.items()})
        np.testing.assert_array_equal(feeds["past.0.key"], feeds["past.0.value"])
        ids = feeds["input_ids"]
        rows = feeds["encoder_hidden_states"][:, 0, 0].astype(int)
        past = feeds["past.0.key"][:, 0, :, 0].astype(np.int64)
        history = np.concatenate([past, ids], axis=1)
        start = past.shape[1]
        logits = np.array([[self.script(int(r), tuple(h[:start + t + 1].tolist()))
                            for t in range(ids.shape[1])] for r, h in zip(rows, history)],
                          dtype=np.float32)
        kv = history[:, None, :, None].astype(np.float32)
        return [logits, kv, kv.copy()]

    def close(self) -> None:
        pass


def generator(script, **spec) -> tuple[Generator, ScriptedSession]:
    decoder = ScriptedSession(script)
    return Generator(RowIdEncoder(), decoder, make_spec(**spec)), decoder


def sources(rows: int) -> tuple[np.ndarray, np.ndarray]:
    return pad_batch([[2] * (r + 1) for r in range(rows)], PAD)


def from_probs(probs: dict[int, float], vocab: int = 6) -> np.ndarray:
    """Log-probabilities: the given tokens, the rest of the mass spread over the other tokens
    except START (which gets ~0)."""
    out = np.full(vocab, 1e-12)
    rest = [t for t in range(vocab) if t not in probs and t != START]
    if rest:
        out[rest] = max((1.0 - sum(probs.values())) / len(rest), 1e-12)
    for t, p in probs.items():
        out[t] = p
    return np.log(out / out.sum())


def random_tree(seed: int, vocab: int = 4) -> Callable:
    """Logits that depend on the whole history and the source row; START (0) is never likely."""
    def script(row: int, history: tuple[int, ...]) -> np.ndarray:
        logits = 2.0 * np.random.default_rng([seed, row, *history]).standard_normal(vocab)
        logits[START] = -1e4
        return logits
    return script


# --------------------------------------------------------------------------- greedy


def test_greedy_pads_finished_rows_and_stops_at_the_limit() -> None:
    script_tokens = {0: [2, EOS], 1: [3, 3, 2, EOS], 2: [2, 3, 4, 2, 3, 4, 2, 3]}

    def script(row, history):
        step = len(history) - 1
        logits = np.zeros(6)
        tokens = script_tokens[row]
        logits[tokens[step] if step < len(tokens) else 4] = 5.0
        return logits

    gen, decoder = generator(script)
    ids, mask = sources(3)
    assert gen.generate(ids, mask, max_new_tokens=6) == [[2, EOS], [3, 3, 2, EOS], [2, 3, 4, 2, 3, 4]]
    assert len(decoder.calls) == 6  # ran to max_new_tokens for the row without EOS
    fed = np.concatenate([c["input_ids"] for c in decoder.calls], axis=1)
    np.testing.assert_array_equal(fed, [[START, 2, EOS, PAD, PAD, PAD],
                                        [START, 3, 3, 2, EOS, PAD],
                                        [START, 2, 3, 4, 2, 3]])
    assert [c["past.0.key"].shape[2] for c in decoder.calls] == [0, 1, 2, 3, 4, 5]


def test_greedy_stops_when_every_row_has_finished() -> None:
    def script(row, history):
        logits = np.zeros(6)
        logits[EOS if len(history) == 2 + 2 * row else 3] = 5.0
        return logits

    gen, decoder = generator(script)
    assert gen.generate(*sources(2), max_new_tokens=10) == [[3, EOS], [3, 3, 3, EOS]]
    assert len(decoder.calls) == 4


def test_greedy_follows_the_argmax_of_a_history_dependent_model() -> None:
    script = random_tree(seed=11, vocab=6)
    gen, _ = generator(script)
    got = gen.generate(*sources(4), max_new_tokens=7)
    for row, tokens in enumerate(got):
        history, expected = (START,), []
        while len(expected) < 7 and (not expected or expected[-1] != EOS):
            expected.append(int(np.argmax(script(row, history))))
            history += (expected[-1],)
        assert tokens == expected


def test_processors_forced_eos_min_length_forced_bos_bad_tokens() -> None:
    eos_first = lambda row, history: from_probs({EOS: 0.9, 2: 0.05})  # noqa: E731
    never_eos = lambda row, history: from_probs({3: 0.9, 2: 0.05, EOS: 0.01})  # noqa: E731
    ids, mask = sources(2)
    gen, _ = generator(never_eos, forced_eos_token_ids=(EOS,))
    assert gen.generate(ids, mask, max_new_tokens=4) == [[3, 3, 3, EOS]] * 2
    gen, _ = generator(eos_first, min_length=3)  # start + 2 tokens before EOS is allowed
    assert gen.generate(ids, mask, max_new_tokens=5) == [[2, 2, EOS]] * 2
    gen, _ = generator(never_eos, forced_bos_token_id=4, bad_token_ids=(3,))
    assert gen.generate(ids, mask, max_new_tokens=3) == [[4, 2, 2]] * 2
    gen, _ = generator(never_eos, eos_token_ids=(EOS, 3))  # several EOS ids: any one ends a row
    assert gen.generate(ids, mask, max_new_tokens=4) == [[3]] * 2
    gen, _ = generator(never_eos, renormalize_logits=True)
    assert gen.generate(ids, mask, max_new_tokens=2, num_beams=2) == [[3, 3]] * 2


# --------------------------------------------------------------------------- beam search


def brute_force_best(script, row: int, vocab: int, max_new: int, length_penalty: float) -> list[int]:
    """Exhaustive search, HF's hypothesis score: sum of log-probs / generated_len ** length_penalty
    (EOS counted, start token not); a hypothesis ends at EOS or at max_new tokens."""
    def logp(history):
        x = np.asarray(script(row, history), dtype=np.float64)
        return x - x.max() - math.log(np.exp(x - x.max()).sum())

    best, best_score = None, -math.inf
    for n in range(1, max_new + 1):
        for body in itertools.product(range(1, vocab), repeat=n):
            if EOS in body[:-1] or (n < max_new and body[-1] != EOS):
                continue
            total, history = 0.0, (START,)
            for tok in body:
                total += logp(history)[tok]
                history += (tok,)
            score = total / n ** length_penalty
            if score > best_score:
                best, best_score = list(body), score
    return best


@pytest.mark.parametrize("length_penalty", [-1.0, -0.5, 0.0, 1.0, 2.0])
def test_beam_search_is_exact_when_nothing_is_pruned(length_penalty: float) -> None:
    """32 beams cover every live prefix of a 3-token tree 4 deep, and early_stopping='never'
    only stops when no running beam can win: the result must be the exhaustive optimum."""
    for seed in range(6):
        script = random_tree(seed, vocab=4)
        gen, _ = generator(script, vocab=4, pad_token_id=START)
        got = gen.generate(*sources(3), max_new_tokens=4, num_beams=32,
                           length_penalty=length_penalty, early_stopping="never")
        assert got == [brute_force_best(script, row, 4, 4, length_penalty) for row in range(3)]


# Trees where the choice depends on the beam-search settings; log-probs by hand (lp = 1):
#   "2 EOS"      .6 * .55                sum -1.109   score -0.554
#   "2 4 4 EOS"  .6 * .45 * .99 * .99    sum -1.330   score -0.333
#   "3 3 3 EOS"  .4 * .7 * .7 * .7       sum -1.986   score -0.497
#   B: "3 EOS"   .4 * .8                 sum -1.139   score -0.570
#   C: "EOS"     .3                      sum -1.204   score -1.204
COMMON = {(START, 2): {EOS: .55, 4: .45}, (START, 2, 4): {4: .99}, (START, 2, 4, 4): {EOS: .99}}
TREE = {**COMMON, (START,): {2: .6, 3: .4}, (START, 3): {3: .7}, (START, 3, 3): {3: .7},
        (START, 3, 3, 3): {EOS: .7}}
TREE_B = {**COMMON, (START,): {2: .6, 3: .4}, (START, 3): {EOS: .8, 3: .2}}
TREE_C = {**COMMON, (START,): {2: .6, EOS: .3, 3: .1}}


def tree_script(tree: dict = TREE) -> Callable:
    return lambda row, history: from_probs(tree.get(history, {2: .4, 3: .3, 4: .2, EOS: .0001}))


@pytest.mark.parametrize("tree, early_stopping, expected", [
    # B: "2 EOS" and "3 EOS" finish together at step 2; the running "2 4" (-1.310) trails.
    (TREE_B, True, [2, EOS]),           # num_beams hypotheses finished: stop
    (TREE_B, False, [2, EOS]),          # HF heuristic: -1.310 / 2 < worst finished -1.139 / 2
    (TREE_B, "never", [2, 4, 4, EOS]),  # bound with max_length: -1.310 / 4 could still win
    # C: "EOS" finished at step 1 (-1.204), "2 EOS" at step 2: the heuristic lets "2 4" go on.
    (TREE_C, True, [2, EOS]),
    (TREE_C, False, [2, 4, 4, EOS]),    # -1.310 / 2 > -1.204: improvement possible
    (TREE_C, "never", [2, 4, 4, EOS]),
])
def test_early_stopping_semantics(tree, early_stopping, expected) -> None:
    gen, decoder = generator(tree_script(tree))
    got = gen.generate(*sources(2), max_new_tokens=4, num_beams=2, early_stopping=early_stopping)
    assert got == [expected, expected]
    assert len(decoder.calls) == len(expected)  # stopped as soon as the rule allows


@pytest.mark.parametrize("length_penalty, expected", [(0.0, [2, EOS]), (1.0, [2, 4, 4, EOS]),
                                                      (2.0, [2, 4, 4, EOS])])
def test_length_penalty_divides_by_generated_length(length_penalty, expected) -> None:
    gen, _ = generator(tree_script())
    got = gen.generate(*sources(2), max_new_tokens=4, num_beams=2, length_penalty=length_penalty,
                       early_stopping="never")
    assert got == [expected, expected]
    assert expected == brute_force_best(tree_script(), 0, 6, 4, length_penalty)


def test_finished_rows_take_no_new_hypotheses_with_early_stopping() -> None:
    """Row 0 (tree C) has num_beams finished hypotheses after step 2 and early_stopping=True, so
    it is done even though row 1 keeps the loop running; "2 4 4 EOS" must not replace "2 EOS"."""
    tree_c, endless = tree_script(TREE_C), (lambda history: from_probs({3: .9, EOS: .001}))
    gen, decoder = generator(lambda row, history: tree_c(row, history) if row == 0 else endless(history))
    got = gen.generate(*sources(2), max_new_tokens=4, num_beams=2, early_stopping=True)
    assert got == [[2, EOS], [3, 3, 3, 3]]
    assert len(decoder.calls) == 4


def test_never_with_negative_length_penalty_bounds_with_the_current_length() -> None:
    """length_penalty -1 (score = sum * len). After step 2 the finished "2 EOS" (-1.75 * 2) and
    "EOS" (-3.51) are worse than the running "2 4" (-1.0) times its current length 2, so HF goes
    on and finds "2 4 EOS" (-1.01 * 3); bounding with max_length (-1.0 * 4) would stop early."""
    tree = {(START,): {2: .9, EOS: .03}, (START, 2): {4: .41, EOS: .193}, (START, 2, 4): {EOS: .99}}
    gen, _ = generator(tree_script(tree))
    got = gen.generate(*sources(1), max_new_tokens=4, num_beams=2, length_penalty=-1.0,
                       early_stopping="never")
    assert got == [[2, 4, EOS]]


def test_only_eos_candidates_ranked_within_num_beams_finish() -> None:
    """HF keeps 2 * num_beams candidates per step, but an EOS ranked below the first num_beams
    is dropped, not finished: "EOS" (.2, rank 3 of the first step) would otherwise beat "2 EOS"
    (.45 * .24 = .108) at length_penalty 0."""
    after = {EOS: .24, 2: .22, 3: .2, 4: .18, 5: .16}
    tree = {(START,): {2: .45, 3: .35, EOS: .2}, (START, 2): after, (START, 3): after}
    gen, _ = generator(tree_script(tree))
    got = gen.generate(*sources(1), max_new_tokens=2, num_beams=2, length_penalty=0.0,
                       early_stopping="never")
    assert got == [[2, EOS]]


def test_spec_defaults_are_used_for_beam_settings() -> None:
    gen, _ = generator(tree_script(), length_penalty=0.0, early_stopping="never")
    assert gen.generate(*sources(1), max_new_tokens=4, num_beams=2) == [[2, EOS]]
    gen, _ = generator(tree_script(), max_length=5, early_stopping="never")
    assert gen.generate(*sources(1), num_beams=2) == [[2, 4, 4, EOS]]  # max_new_tokens = 5 - 1


# --------------------------------------------------------------------------- feeds and errors


def test_teacher_forced_feeds_shift_the_reference() -> None:
    gen, _ = generator(random_tree(0, vocab=6))
    ids, mask = sources(2)
    batch = gen.teacher_forced(ids, mask, [[2, 3, EOS], [4, EOS]])
    assert isinstance(batch, DecoderFeeds)
    np.testing.assert_array_equal(batch.feeds["input_ids"], [[START, 2, 3], [START, 4, PAD]])
    np.testing.assert_array_equal(batch.token_mask, [[True, True, True], [True, True, False]])
    assert batch.feeds["past.0.key"].shape == (2, 1, 0, 1)
    np.testing.assert_array_equal(batch.feeds["encoder_attention_mask"], mask)
    assert set(batch.feeds) == set(ScriptedSession.input_names)
    with pytest.raises(DataError, match="one non-empty target per source row"):
        gen.teacher_forced(ids, mask, [[2]])


def test_greedy_trace_masks_finished_rows() -> None:
    gen, _ = generator(lambda row, h: from_probs({EOS: .9} if row == 0 else {3: .9}))
    steps = list(gen.greedy_trace(*sources(2), max_new_tokens=3))
    assert [s.token_mask[:, 0].tolist() for s in steps] == [[True, True], [False, True],
                                                             [False, True]]
    assert [s.feeds["input_ids"][:, 0].tolist() for s in steps] == [[START, START], [EOS, 3],
                                                                     [PAD, 3]]


def test_generator_rejects_bad_sessions_specs_and_arguments() -> None:
    with pytest.raises(ConfigError, match="no_repeat_ngram_size"):
        Generator(RowIdEncoder(), ScriptedSession(tree_script()),
                  make_spec(unsupported=("no_repeat_ngram_size",)))
    with pytest.raises(ModelError, match="past.1.key"):
        Generator(RowIdEncoder(), ScriptedSession(tree_script()), make_spec(num_layers=2))
    gen, _ = generator(tree_script())
    ids, mask = sources(2)
    with pytest.raises(ConfigError, match="num_beams"):
        gen.generate(ids, mask, max_new_tokens=3, num_beams=0)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        gen.generate(ids, mask, max_new_tokens=0)
    with pytest.raises(ConfigError, match="early_stopping"):
        gen.generate(ids, mask, max_new_tokens=3, num_beams=2, early_stopping="sometimes")
    with pytest.raises(DataError, match="attention_mask shape"):
        gen.generate(ids, mask[:, :1], max_new_tokens=3)
    with pytest.raises(DataError, match="input_ids"):
        gen.generate(ids[0], max_new_tokens=3)


def test_pad_batch_and_topk() -> None:
    ids, mask = pad_batch([[7, 8, 9], [4]], 0)
    np.testing.assert_array_equal(ids, [[7, 8, 9], [4, 0, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 1], [1, 0, 0]])
    values, index = topk(np.array([[1.0, 3.0, 3.0, 2.0, 0.0]], dtype=np.float32), 3)
    np.testing.assert_array_equal(index, [[1, 2, 3]])  # ties: lower index first, like a stable sort
    np.testing.assert_array_equal(values, [[3.0, 3.0, 2.0]])
    with pytest.raises(DataError):
        pad_batch([[1], []], 0)


def test_spec_override_keeps_other_fields() -> None:
    spec = replace(make_spec(), bad_token_ids=(3,))
    assert spec.bad_token_ids == (3,) and spec.eos_token_id == EOS


def test_generation_facts_resolve_like_transformers() -> None:
    # mBART-like: no decoder_start -> bos; EOS dropped from bad words; early_stopping kept as "never".
    facts = generation_facts(SimpleNamespace(
        decoder_start_token_id=None, bos_token_id=0, eos_token_id=2, pad_token_id=None,
        forced_eos_token_id=[2], bad_words_ids=[[2], [7]], early_stopping="never",
        num_beams=5, max_length=200, length_penalty=None))
    assert facts["decoder_start_token_id"] == 0 and facts["pad_token_id"] == 2  # pad <- first EOS
    assert facts["eos_token_ids"] == [2] and facts["forced_eos_token_ids"] == [2]
    assert facts["bad_token_ids"] == [7] and facts["early_stopping"] == "never"
    assert (facts["num_beams"], facts["max_length"], facts["length_penalty"]) == (5, 200, 1.0)
    assert facts["unsupported"] == []
    odd = generation_facts(SimpleNamespace(decoder_start_token_id=3, eos_token_id=[1, 4],
                                           pad_token_id=0, bad_words_ids=[[5, 6]],
                                           no_repeat_ngram_size=3, repetition_penalty=1.2))
    assert odd["eos_token_ids"] == [1, 4]
    assert odd["unsupported"] == ["bad_words_ids (multi-token)", "no_repeat_ngram_size",
                                  "repetition_penalty"]
    with pytest.raises(ModelError, match="decoder_start_token_id"):
        generation_facts(SimpleNamespace(eos_token_id=1, pad_token_id=0), "t5")
