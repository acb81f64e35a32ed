"""Seq2seq export and ONNX decoding against PyTorch and transformers' generate(): real torch, real
ONNX Runtime, no mocks.

Tiny random-weight Marian, T5 and mBART models are built from configs here (seeded), saved with
save_pretrained and loaded back through the real export path. Each model's EOS logit is raised a
little (a final_logits_bias entry, or for T5 the tied EOS embedding row) so that some rows end
early and some run to max_new_tokens: both the EOS path and the length limit are exercised.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

import numpy as np  # noqa: E402

from qbench.backends.ort import OrtSession  # noqa: E402
from qbench.config.errors import ModelError  # noqa: E402
from qbench.models.seq2seq import (Seq2SeqExport, export_seq2seq, load_export,  # noqa: E402
                                   past_names)
from qbench.models.generate import Generator, pad_batch  # noqa: E402

FAMILIES = ("marian", "t5", "mbart")
MAX_NEW_TOKENS = 20
ATOL = 1e-4
# Per family: (number of layers, heads, head_dim, d_model, vocab).
DIMS = {"marian": (2, 4, 8, 32, 128), "t5": (2, 4, 16, 32, 128), "mbart": (2, 4, 16, 64, 128)}


def build_model(family: str, out: Path, seed: int = 0, eos_boost: float | None = None) -> Path:
    """A tiny random model of ``family`` saved to ``out`` (config + weights + generation config)."""
    from transformers import (MarianConfig, MarianMTModel, MBartConfig,
                              MBartForConditionalGeneration, T5Config, T5ForConditionalGeneration)

    layers, heads, head_dim, d_model, vocab = DIMS[family]
    bart_like = dict(vocab_size=vocab, d_model=d_model, encoder_layers=layers,
                     decoder_layers=layers, encoder_attention_heads=heads,
                     decoder_attention_heads=heads, encoder_ffn_dim=2 * d_model,
                     decoder_ffn_dim=2 * d_model, max_position_embeddings=64, init_std=0.3)
    torch.manual_seed(seed)
    if family == "marian":
        model = MarianMTModel(MarianConfig(**bart_like, pad_token_id=vocab - 1, eos_token_id=0,
                                           scale_embedding=True,
                                           decoder_start_token_id=vocab - 1))
    elif family == "mbart":
        model = MBartForConditionalGeneration(MBartConfig(**bart_like))
    else:
        model = T5ForConditionalGeneration(T5Config(
            vocab_size=vocab, d_model=d_model, d_kv=head_dim, d_ff=2 * d_model,
            num_layers=layers, num_heads=heads, decoder_start_token_id=0))
    if family == "marian":  # what the opus-mt checkpoints ship: pad banned, renormalized scores
        model.generation_config.update(bad_words_ids=[[vocab - 1]], renormalize_logits=True,
                                       num_beams=4, max_length=64)
    eos = model.generation_config.eos_token_id
    boost = {"marian": 6.0, "mbart": 3.0, "t5": 60.0}[family] if eos_boost is None else eos_boost
    with torch.no_grad():
        if family == "t5":  # tied embeddings: lean the EOS row towards the average token
            model.shared.weight[eos] += boost * model.shared.weight.mean(0)
        else:
            model.final_logits_bias[0, eos] += boost
    model.save_pretrained(str(out))
    return out


def random_sources(spec: Seq2SeqExport, seed: int, rows: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded source ids of different lengths (1..11), no special tokens inside."""
    rng = np.random.default_rng(seed)
    specials = {spec.pad_token_id, spec.decoder_start_token_id, *spec.eos_token_ids}
    normal = np.array([t for t in range(spec.vocab_size) if t not in specials])
    lengths = rng.integers(1, 12, size=rows)
    lengths[0] = 11  # at least one long row, so the others are padded
    return pad_batch([list(rng.choice(normal, size=n)) for n in lengths], spec.pad_token_id)


def hf_generate(model, ids: np.ndarray, mask: np.ndarray, eos: set[int], **kwargs) -> list[list[int]]:
    """transformers' generate(), normalized like Generator.generate: no start token, cut after EOS."""
    with torch.no_grad():
        out = model.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                             max_new_tokens=MAX_NEW_TOKENS, do_sample=False, **kwargs)
    rows = []
    for row in out[:, 1:].tolist():
        cut = next((i for i, t in enumerate(row) if t in eos), None)
        rows.append(row[:cut + 1] if cut is not None else row)
    return rows


@dataclass
class Case:
    family: str
    source: Path
    cache: Path
    spec: Seq2SeqExport
    export_seconds: float
    model: object
    generator: Generator


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=FAMILIES)
def case(request, tmp_path_factory, one_torch_thread) -> Case:
    from transformers import AutoModelForSeq2SeqLM

    family = request.param
    root = tmp_path_factory.mktemp(f"s2s-{family}")
    source = build_model(family, root / "model")
    started = time.perf_counter()
    spec = export_seq2seq(str(source), root / "cache")
    seconds = time.perf_counter() - started
    model = AutoModelForSeq2SeqLM.from_pretrained(str(source), attn_implementation="eager").eval()
    assert not model.training
    sessions = [OrtSession(p, 1, ["CPUExecutionProvider"]) for p in (spec.encoder_path, spec.decoder_path)]
    return Case(family, source, root / "cache", spec, seconds, model, Generator(*sessions, spec))


def _torch_reference(case: Case, ids: np.ndarray, mask: np.ndarray, tgt: np.ndarray):
    with torch.no_grad():
        states = case.model.get_encoder()(input_ids=torch.from_numpy(ids),
                                          attention_mask=torch.from_numpy(mask)).last_hidden_state
        logits = case.model(encoder_outputs=(states,), attention_mask=torch.from_numpy(mask),
                            decoder_input_ids=torch.from_numpy(tgt)).logits
    return states.numpy(), logits.numpy()


# --------------------------------------------------------------------------- export entry


def test_export_entry_records_what_generation_needs(case: Case) -> None:
    spec, cfg = case.spec, case.model.config
    layers, heads, head_dim, d_model, vocab = DIMS[case.family]
    assert (spec.num_layers, spec.num_heads, spec.head_dim, spec.d_model, spec.vocab_size) == (
        layers, heads, head_dim, d_model, vocab)
    assert spec.exporter == "torchscript" and spec.opset == 17 and spec.from_cache is False
    assert spec.model_type == case.family and len(spec.key) == 16
    expected_start = {"marian": vocab - 1, "t5": 0, "mbart": 0}[case.family]  # mBART: bos
    assert spec.decoder_start_token_id == expected_start
    assert spec.eos_token_ids == (cfg.eos_token_id,) and spec.pad_token_id == cfg.pad_token_id
    assert spec.forced_eos_token_ids == (() if case.family == "t5" else (cfg.eos_token_id,))
    assert spec.forced_bos_token_id is None and spec.unsupported == ()
    opus_like = case.family == "marian"
    assert spec.bad_token_ids == ((vocab - 1,) if opus_like else ())
    assert spec.renormalize_logits is opus_like and spec.early_stopping is False
    assert (spec.max_length, spec.num_beams) == ((64, 4) if opus_like else (20, 1))
    assert spec.min_length == 0 and spec.length_penalty == 1.0
    meta = json.loads((spec.encoder_path.parent / "export.json").read_text())
    assert meta["files"]["decoder"]["inputs"] == [
        "input_ids", "encoder_hidden_states", "encoder_attention_mask", *past_names(layers)]
    assert meta["files"]["decoder"]["outputs"][0] == "logits"
    assert meta["files"]["encoder"]["outputs"] == ["last_hidden_state"]
    assert meta["files"]["encoder"]["versions"]["torch"] == torch.__version__
    assert load_export(spec.encoder_path.parent) == replace(spec, from_cache=True)
    print(f"\n{case.family}: export {case.export_seconds:.2f}s, encoder diff "
          f"{spec.encoder_max_abs_diff:.2e}, decoder diff {spec.decoder_max_abs_diff:.2e}, "
          f"with past {spec.decoder_past_max_abs_diff:.2e}")


def test_graph_axes_are_dynamic(case: Case) -> None:
    import onnx

    def dims(path: Path, which: str) -> dict[str, list]:
        graph = onnx.load(str(path), load_external_data=False).graph
        return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
                for v in getattr(graph, which)}

    spec = case.spec
    enc_in, dec_in = dims(spec.encoder_path, "input"), dims(spec.decoder_path, "input")
    dec_out = dims(spec.decoder_path, "output")
    assert enc_in == {"input_ids": ["batch", "src_len"], "attention_mask": ["batch", "src_len"]}
    assert dec_in["input_ids"] == ["batch", "tgt_len"]
    assert dec_in["encoder_hidden_states"] == ["batch", "src_len", spec.d_model]
    assert dec_in["past.1.value"] == ["batch", spec.num_heads, "past_len", spec.head_dim]
    assert dec_out["logits"] == ["batch", "tgt_len", spec.vocab_size]
    assert dec_out["present.1.key"] == ["batch", spec.num_heads, "total_len", spec.head_dim]


def test_second_export_hits_cache(case: Case) -> None:
    started = time.perf_counter()
    again = export_seq2seq(str(case.source), case.cache)
    assert again.from_cache is True and again.key == case.spec.key
    assert again == replace(case.spec, from_cache=True)
    assert time.perf_counter() - started < 2.0
    assert [p.name for p in case.cache.iterdir()] == [case.spec.key]  # no temp dir left behind


@pytest.mark.parametrize("case", ["marian"], indirect=True)  # one family is enough
def test_cache_hit_needs_neither_torch_nor_transformers(case: Case) -> None:
    code = ("import sys; from pathlib import Path; from qbench.models.seq2seq import export_seq2seq;"
            f"r = export_seq2seq({str(case.source)!r}, Path({str(case.cache)!r}));"
            "assert r.from_cache; bad = {'torch', 'transformers'} & set(sys.modules);"
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_load_errors_are_model_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not a complete seq2seq export"):
        load_export(tmp_path)
    with pytest.raises(ModelError, match="cannot load seq2seq model no-such-org/no-such-model"):
        export_seq2seq("no-such-org/no-such-model", tmp_path / "cache")


# --------------------------------------------------------------------------- numerics


def test_encoder_matches_pytorch(case: Case) -> None:
    ids, mask = random_sources(case.spec, seed=101)
    reference, _ = _torch_reference(case, ids, mask, ids[:, :1])
    got = case.generator.encode(ids, mask)
    assert got.shape == (ids.shape[0], ids.shape[1], case.spec.d_model)
    assert np.abs(got - reference).max() <= ATOL
    assert case.spec.encoder_max_abs_diff <= ATOL


def test_decoder_logits_with_and_without_past(case: Case) -> None:
    spec, gen = case.spec, case.generator
    ids, mask = random_sources(spec, seed=202)
    tgt = np.random.default_rng(3).integers(2, spec.vocab_size - 1, size=(ids.shape[0], 7))
    tgt[:, 0] = spec.decoder_start_token_id
    states, reference = _torch_reference(case, ids, mask, tgt)

    full_logits, present = gen.run_decoder(tgt, states, mask, gen.empty_past(len(ids)))
    assert full_logits.shape == (len(ids), 7, spec.vocab_size)
    assert np.abs(full_logits - reference).max() <= ATOL

    # Three steps of past, then one token, then the remaining three.
    past = gen.empty_past(len(ids))
    for lo, hi in ((0, 3), (3, 4), (4, 7)):
        logits, past = gen.run_decoder(tgt[:, lo:hi], states, mask, past)
        assert past[0].shape == (len(ids), spec.num_heads, hi, spec.head_dim)
        assert np.abs(logits - reference[:, lo:hi]).max() <= ATOL
    assert max(np.abs(a - b).max() for a, b in zip(past, present)) <= ATOL
    assert case.spec.decoder_max_abs_diff <= ATOL and case.spec.decoder_past_max_abs_diff <= ATOL


# --------------------------------------------------------------------------- decoding vs HF


def test_greedy_matches_transformers_generate_exactly(case: Case) -> None:
    eos = set(case.spec.eos_token_ids)
    lengths = []
    for seed in range(4):
        ids, mask = random_sources(case.spec, seed=seed)
        expected = hf_generate(case.model, ids, mask, eos, num_beams=1)
        got = case.generator.generate(ids, mask, max_new_tokens=MAX_NEW_TOKENS)
        assert got == expected, f"{case.family} seed {seed}"
        lengths += [len(r) for r in got]
    # Both exits were taken: some rows stopped at EOS, some ran to the limit.
    assert min(lengths) < MAX_NEW_TOKENS and max(lengths) == MAX_NEW_TOKENS, lengths


def test_split_decoder_greedy_equals_the_whole_decoder(case: Case) -> None:
    """The decoder split in two (cross-attention K/V once per sentence, the rest per token), decoded with IO
    binding and finished rows dropped: the same ids as the loop over the whole graph and as HF generate."""
    from qbench.models.fast_greedy import FastGreedy

    spec, layers = case.spec, DIMS[case.family][0]
    fast = FastGreedy.load(spec.decoder_path, 1, spec.num_layers)
    assert fast is not None and fast.row_independent
    # Exactly the K and V projections of each cross-attention layer leave the step graph, and nothing else does.
    moved = [n for n in fast.split.cross.graph.node if n.op_type == "MatMul"]
    assert len(moved) == 2 * layers and all("encoder_attn" in n.name or "EncDecAttention" in n.name
                                            for n in moved), [n.name for n in moved]
    assert len(fast.boundary) >= 2 * layers  # T5 also reads the key length off layer 0's keys
    step_matmuls = [n for n in fast.split.step.graph.node if n.op_type == "MatMul"]
    whole = [n for n in onnx_nodes(spec.decoder_path) if n.op_type == "MatMul"]
    assert len(step_matmuls) + len(moved) == len(whole)
    assert spec.decoder_split_max_abs_diff is not None and spec.decoder_split_max_abs_diff <= ATOL
    split_gen = Generator(case.generator.encoder, case.generator.decoder, spec, fast)
    eos = set(spec.eos_token_ids)
    for seed in range(4):
        ids, mask = random_sources(spec, seed=seed)
        got = split_gen.generate(ids, mask, max_new_tokens=MAX_NEW_TOKENS)
        assert got == case.generator.generate(ids, mask, max_new_tokens=MAX_NEW_TOKENS), seed
        assert got == hf_generate(case.model, ids, mask, eos, num_beams=1), seed


@pytest.mark.parametrize("case", ["marian"], indirect=True)
def test_split_of_a_qdq_decoder_decodes_like_the_whole_qdq_graph(case: Case, tmp_path: Path) -> None:
    """A Q/DQ decoder built by qbench (MinMax ranges from teacher-forced random batches): the cross graph holds
    only the quantization of encoder_hidden_states, the Q/DQ pairs in front of the attention MatMuls stay in
    the step graph, integer graphs keep finished rows, and the ids equal the whole Q/DQ graph's."""
    from calibrators.minmax import MinMax
    from qbench.calib import stats as st
    from qbench.config.schema import ExclusionCfg
    from qbench.models.fast_greedy import FastGreedy
    from qbench.quantize.qdq import build_qdq, calibration_tensors, load_model

    spec, gen = case.spec, case.generator
    rng = np.random.default_rng(5)

    def feeds():
        for seed in range(3):
            ids, mask = random_sources(spec, seed=400 + seed)
            targets = [list(rng.integers(2, spec.vocab_size - 1, size=6)) for _ in range(len(ids))]
            df = gen.teacher_forced(ids, mask, targets)
            yield {**df.feeds, "target_mask": df.token_mask.astype(np.int64)}

    tensors = calibration_tensors(load_model(spec.decoder_path))
    table = MinMax().table(st.collect(spec.decoder_path, tensors, feeds(), 2048, 1, mask_input="target_mask",
                                      seq_inputs=["input_ids"]))
    qdq = tmp_path / "decoder.onnx"
    build_qdq(spec.decoder_path, table, ExclusionCfg(), "s8s8", qdq)
    fast = FastGreedy.load(qdq, 1, spec.num_layers)
    assert fast is not None and not fast.row_independent
    cross_q = [n for n in fast.split.cross.graph.node if n.op_type == "QuantizeLinear"]
    assert cross_q and all(n.input[0] == "encoder_hidden_states" for n in cross_q)
    step_attn = [n for n in fast.split.step.graph.node if n.op_type == "MatMul" and "encoder_attn/MatMul" in n.name]
    assert len(step_attn) == 2 * spec.num_layers
    whole = Generator(gen.encoder, OrtSession(qdq, 1, ["CPUExecutionProvider"]), spec)
    split = Generator(gen.encoder, whole.decoder, spec, fast)
    for seed in range(3):
        ids, mask = random_sources(spec, seed=seed)
        assert split.generate(ids, mask, MAX_NEW_TOKENS) == whole.generate(ids, mask, MAX_NEW_TOKENS), seed


def onnx_nodes(path: Path) -> list:
    import onnx

    return list(onnx.load(str(path)).graph.node)


def test_beam_search_agrees_with_transformers_generate(case: Case) -> None:
    eos = set(case.spec.eos_token_ids)
    agree = total = 0
    for seed in range(3):
        ids, mask = random_sources(case.spec, seed=50 + seed)
        expected = hf_generate(case.model, ids, mask, eos, num_beams=4)
        got = case.generator.generate(ids, mask, max_new_tokens=MAX_NEW_TOKENS, num_beams=4)
        agree += sum(a == b for a, b in zip(got, expected))
        total += len(expected)
    print(f"\n{case.family}: beam-4 agreement with transformers {agree}/{total}")
    assert agree >= 0.9 * total


def test_logits_processors_match_transformers(case: Case) -> None:
    """forced_bos, min_length and bad words set on top of the model's own generation config."""
    spec, eos = case.spec, set(case.spec.eos_token_ids)
    extra = {"forced_bos_token_id": 7, "min_length": 6, "renormalize_logits": True}
    bad = (9, 10, *spec.bad_token_ids)
    gen = Generator(case.generator.encoder, case.generator.decoder,
                    replace(spec, bad_token_ids=bad, **extra))
    for seed, beams in ((7, 1), (8, 4)):
        ids, mask = random_sources(spec, seed=seed)
        expected = hf_generate(case.model, ids, mask, eos, num_beams=beams,
                               bad_words_ids=[[t] for t in bad], **extra)
        got = gen.generate(ids, mask, max_new_tokens=MAX_NEW_TOKENS, num_beams=beams)
        assert got == expected
        assert all(r[0] == 7 and len(r) >= 5 and not set(r) & set(bad) for r in got)


# --------------------------------------------------------------------------- calibration feeds


def test_teacher_forced_feeds_reproduce_pytorch_logits(case: Case) -> None:
    spec, gen = case.spec, case.generator
    ids, mask = random_sources(spec, seed=303, rows=3)
    targets = [[5, 6, 7, spec.eos_token_id], [8, spec.eos_token_id], [9, 10, 11, 12, 13, 14]]
    batch = gen.teacher_forced(ids, mask, targets)
    assert list(batch.feeds) == ["input_ids", "encoder_hidden_states", "encoder_attention_mask",
                                 *past_names(spec.num_layers)]
    start, pad = spec.decoder_start_token_id, spec.pad_token_id
    np.testing.assert_array_equal(batch.feeds["input_ids"], [
        [start, 5, 6, 7, pad, pad], [start, 8, pad, pad, pad, pad], [start, 9, 10, 11, 12, 13]])
    np.testing.assert_array_equal(batch.token_mask, [[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0],
                                                     [1, 1, 1, 1, 1, 1]])
    assert batch.feeds["past.0.key"].shape == (3, spec.num_heads, 0, spec.head_dim)
    _, reference = _torch_reference(case, ids, mask, batch.feeds["input_ids"])
    logits = gen.decoder.infer(batch.feeds)[gen.decoder.output_names.index("logits")]
    valid = batch.token_mask
    assert np.abs(logits[valid] - reference[valid]).max() <= ATOL


def test_greedy_trace_yields_every_step(case: Case) -> None:
    spec, gen = case.spec, case.generator
    ids, mask = random_sources(spec, seed=1)
    tokens = gen.generate(ids, mask, max_new_tokens=8)
    steps = list(gen.greedy_trace(ids, mask, max_new_tokens=8))
    assert len(steps) == max(len(t) for t in tokens)
    for i, step in enumerate(steps):
        assert step.feeds["input_ids"].shape == (len(ids), 1)
        assert step.feeds["past.0.value"].shape[2] == i
        # A row is live at step i if it had not emitted EOS before it.
        np.testing.assert_array_equal(step.token_mask[:, 0], [len(t) > i for t in tokens])
        fed = step.feeds["input_ids"][:, 0]
        for row, toks in enumerate(tokens):
            expected = spec.decoder_start_token_id if i == 0 else (
                toks[i - 1] if i - 1 < len(toks) else spec.pad_token_id)
            assert fed[row] == expected
