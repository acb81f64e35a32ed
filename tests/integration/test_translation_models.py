"""The project's two trained translation models through the seq2seq export and the numpy generator:
real weights, real held-out sentences, real torch and ONNX Runtime, no mocks.

- ``examples/models/marian-en-es``: English -> Spanish (datasets/bible_en_es.yaml);
- ``examples/models/marian-django-multi``: English -> 28 languages, the source prefixed by a
  ``>>{lang}<< `` tag (its qbench.json), datasets/django_multi.yaml.

Both ship fp16 safetensors. The exporter loads them as float32 (transformers 5 would otherwise
keep fp16, dtype "auto"); every PyTorch reference here is the shipped directory loaded with
``dtype=torch.float32`` too (an exact upcast). Each model is exported once per session into the
shared ``qbench_cache`` (``<cache>/models``, where the translation sweep looks as well).

Checked per model: the diffs the exporter stored and the decoder logits recomputed on references
of the test split (teacher forced, with and without past) are within 1e-4 of PyTorch; ONNX greedy
decoding of 50 held-out sentences is token-identical to ``model.generate(do_sample=False,
num_beams=1)``; the decoded text is a translation (Bible corpus BLEU > 15; for the multilingual
model chrF and the output script per target language).
"""

from __future__ import annotations

import json
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")
pd = pytest.importorskip("pandas")
sacrebleu = pytest.importorskip("sacrebleu")

import numpy as np  # noqa: E402

from qbench.backends.ort import OrtSession  # noqa: E402
from qbench.models.seq2seq import Seq2SeqExport, export_seq2seq  # noqa: E402
from qbench.models.generate import Generator  # noqa: E402
from qbench.models.tokenize import Tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "examples" / "models"
ATOL = 1e-4
N_SENTENCES = 50
BATCH = 16
N_TEACHER_FORCED = 8


@dataclass(frozen=True)
class ModelCase:
    """How one shipped model is tested: its test split and the greedy length limit."""
    name: str
    test_split: str          # parquet under datasets/
    max_new_tokens: int
    vocab_size: int


CASES = {
    "marian-en-es": ModelCase("marian-en-es", "bible_en_es/test.parquet", 96, 8000),
    "marian-django-multi": ModelCase("marian-django-multi", "django_multi/test.parquet", 64, 14000),
}


@dataclass
class Loaded:
    case: ModelCase
    spec: Seq2SeqExport
    export_seconds: float
    model: object             # MarianMTModel, the shipped weights upcast to float32
    hf_tokenizer: object      # PreTrainedTokenizerFast of the shipped directory
    tokenizer: Tokenizer      # qbench's, from the export's tokenizer/ copy
    generator: Generator
    rows: "pd.DataFrame"      # the 50 held-out rows
    sources: list[str]        # with the language tag where the model wants one
    languages: list[str]      # the model's languages (qbench.json)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def held_out_rows(case: ModelCase) -> "pd.DataFrame":
    """The first 50 rows in file order; for the multilingual split (grouped by language) every
    k-th row, k = len // 50, so that the 50 rows are spread over all languages."""
    df = pd.read_parquet(ROOT / "datasets" / case.test_split)
    if df["lang"].nunique() > 1:
        df = df.iloc[::len(df) // N_SENTENCES]
    return df.head(N_SENTENCES).reset_index(drop=True)


@pytest.fixture(scope="module", params=list(CASES))
def loaded(request, qbench_cache, one_torch_thread) -> Loaded:
    from transformers import MarianMTModel, PreTrainedTokenizerFast

    case = CASES[request.param]
    source = MODELS / case.name
    started = time.perf_counter()
    spec = export_seq2seq(str(source), qbench_cache / "models")  # check=True: raises above 1e-4
    seconds = time.perf_counter() - started
    model = MarianMTModel.from_pretrained(str(source), dtype=torch.float32).eval()
    assert model.dtype == torch.float32 and not model.training
    sessions = [OrtSession(p, 1, ["CPUExecutionProvider"])
                for p in (spec.encoder_path, spec.decoder_path)]
    assert spec.tokenizer_dir is not None
    meta = json.loads((source / "qbench.json").read_text())
    rows = held_out_rows(case)
    sources = [meta["source_prefix"].format(lang=lang) + text
               for text, lang in zip(rows["source"], rows["lang"])]
    return Loaded(case, spec, seconds, model, PreTrainedTokenizerFast.from_pretrained(str(source)),
                  Tokenizer(spec.tokenizer_dir, 512), Generator(*sessions, spec), rows, sources,
                  meta["languages"])


def batches(loaded: Loaded, texts: list[str]):
    for lo in range(0, len(texts), BATCH):
        enc = loaded.tokenizer.encode_batch(texts[lo:lo + BATCH])
        yield enc["input_ids"], enc["attention_mask"]


def hf_greedy(loaded: Loaded, ids: np.ndarray, mask: np.ndarray, max_new_tokens: int) -> list[list[int]]:
    """model.generate() greedy, normalized like Generator.generate: start token dropped, cut after EOS."""
    spec = loaded.spec
    with torch.no_grad():
        out = loaded.model.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                                    do_sample=False, num_beams=1, max_new_tokens=max_new_tokens)
    rows = []
    for row in out.tolist():
        assert row[0] == spec.decoder_start_token_id
        row = row[1:]
        cut = next((i for i, t in enumerate(row) if t in spec.eos_token_ids), None)
        rows.append(row if cut is None else row[:cut + 1])
    return rows


@pytest.fixture(scope="module")
def greedy(loaded: Loaded) -> tuple[list[list[int]], list[list[int]]]:
    """(ONNX greedy ids, transformers greedy ids) for the 50 held-out sentences, batches of 16."""
    n = loaded.case.max_new_tokens
    ours, theirs = [], []
    for ids, mask in batches(loaded, loaded.sources):
        ours += loaded.generator.generate(ids, mask, max_new_tokens=n)
        theirs += hf_greedy(loaded, ids, mask, n)
    return ours, theirs


# --------------------------------------------------------------------------- export


def test_export_entry_and_stored_diffs(loaded: Loaded) -> None:
    spec, case = loaded.spec, loaded.case
    print(f"\n{case.name}: export {loaded.export_seconds:.1f}s, stored diffs: encoder "
          f"{spec.encoder_max_abs_diff:.2e}, decoder {spec.decoder_max_abs_diff:.2e}, "
          f"with past {spec.decoder_past_max_abs_diff:.2e}")
    assert spec.encoder_max_abs_diff <= ATOL
    assert spec.decoder_max_abs_diff <= ATOL
    assert spec.decoder_past_max_abs_diff <= ATOL
    assert spec.model_type == "marian" and spec.unsupported == ()
    assert (spec.num_layers, spec.num_heads, spec.head_dim, spec.d_model, spec.vocab_size) == (
        4, 4, 64, 256, case.vocab_size)
    assert spec.decoder_start_token_id == 0 and spec.pad_token_id == 0
    assert spec.eos_token_ids == (1,) and spec.forced_eos_token_ids == (1,)
    assert spec.tokenizer_dir is not None and (spec.tokenizer_dir / "tokenizer.json").read_bytes() == (
        MODELS / case.name / "tokenizer.json").read_bytes()


def test_qbench_tokenizer_matches_transformers(loaded: Loaded) -> None:
    for texts in (loaded.sources, list(loaded.rows["target"])):
        ours = loaded.tokenizer.encode_batch(texts)
        ref = loaded.hf_tokenizer(texts, padding=True, return_tensors="np")
        np.testing.assert_array_equal(ours["input_ids"], ref["input_ids"])
        np.testing.assert_array_equal(ours["attention_mask"], ref["attention_mask"])
    ids = loaded.tokenizer.encode_batch(loaded.sources[:1])["input_ids"][0]
    assert ids[-1] == loaded.spec.eos_token_id  # sources end in </s>, as in training
    if len(loaded.languages) > 1:  # the tag is one token, the first
        tag = f">>{loaded.rows['lang'][0]}<<"
        assert ids[0] == loaded.hf_tokenizer.convert_tokens_to_ids(tag)


# --------------------------------------------------------------------------- numerics


def test_encoder_matches_pytorch_on_real_sentences(loaded: Loaded) -> None:
    ids, mask = next(batches(loaded, loaded.sources))
    got = loaded.generator.encode(ids, mask)
    with torch.no_grad():
        ref = loaded.model.get_encoder()(input_ids=torch.from_numpy(ids),
                                         attention_mask=torch.from_numpy(mask)).last_hidden_state
    diff = float(np.abs(got - ref.numpy())[mask == 1].max())
    print(f"\n{loaded.case.name}: encoder diff on {len(ids)} test sentences {diff:.2e}")
    assert diff <= ATOL


def test_decoder_logits_teacher_forced_on_references(loaded: Loaded) -> None:
    """References of 8 test sentences teacher-forced through the ONNX decoder, whole (past_len 0)
    and in three incremental chunks (past_len > 0), against PyTorch model(...).logits."""
    gen, n = loaded.generator, N_TEACHER_FORCED
    enc = loaded.tokenizer.encode_batch(loaded.sources[:n])
    ids, mask = enc["input_ids"], enc["attention_mask"]
    ref_enc = loaded.tokenizer.encode_batch(list(loaded.rows["target"][:n]))
    targets = [row[keep == 1].tolist()  # the reference ids, ending in </s>
               for row, keep in zip(ref_enc["input_ids"], ref_enc["attention_mask"])]
    feeds = gen.teacher_forced(ids, mask, targets)
    dec_ids, valid = feeds.feeds["input_ids"], feeds.token_mask
    with torch.no_grad():
        ref = loaded.model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                           decoder_input_ids=torch.from_numpy(dec_ids)).logits.numpy()
    logits, present = gen.run_decoder(dec_ids, feeds.feeds["encoder_hidden_states"], mask,
                                      gen.empty_past(n))
    full = float(np.abs(logits - ref)[valid].max())

    total = dec_ids.shape[1]
    cuts = (0, total // 3, total // 3 + 1, total)
    past, worst = gen.empty_past(n), 0.0
    for lo, hi in zip(cuts, cuts[1:]):
        step, past = gen.run_decoder(dec_ids[:, lo:hi], feeds.feeds["encoder_hidden_states"], mask,
                                     past)
        worst = max(worst, float(np.abs(step - ref[:, lo:hi])[valid[:, lo:hi]].max()))
    assert past[0].shape[2] == total
    kv = max(float(np.abs(a - b).max()) for a, b in zip(past, present))
    print(f"\n{loaded.case.name}: teacher-forced logits diff over {int(valid.sum())} target "
          f"tokens: past 0 {full:.2e}, with past {worst:.2e} (|logits| up to "
          f"{np.abs(ref[valid]).max():.1f}); K/V incremental vs whole {kv:.2e}")
    assert full <= ATOL and worst <= ATOL and kv <= ATOL


# --------------------------------------------------------------------------- decoding


def test_greedy_matches_transformers_generate_exactly(loaded: Loaded, greedy) -> None:
    ours, theirs = greedy
    agree = sum(a == b for a, b in zip(ours, theirs))
    n = loaded.case.max_new_tokens
    lengths = [len(r) for r in ours]
    print(f"\n{loaded.case.name}: greedy ONNX == transformers on {agree}/{len(theirs)} sentences "
          f"(lengths {min(lengths)}..{max(lengths)}, limit {n})")
    assert len(ours) == len(theirs) == N_SENTENCES
    assert ours == theirs
    assert all(r[-1] == loaded.spec.eos_token_id for r in ours)


def test_length_limit_forces_eos_like_transformers(loaded: Loaded) -> None:
    """The config's forced_eos_token_id: at a short limit every row is cut with EOS, as in HF."""
    limit = 6
    ids, mask = next(batches(loaded, loaded.sources))
    ours = loaded.generator.generate(ids, mask, max_new_tokens=limit)
    assert ours == hf_greedy(loaded, ids, mask, limit)
    assert all(len(r) <= limit and r[-1] == loaded.spec.eos_token_id for r in ours)
    assert sum(len(r) == limit for r in ours) >= len(ours) // 2  # most rows were cut


def _script(text: str) -> str | None:
    """The most common Unicode script word (LATIN, CYRILLIC, CJK, ...) among the letters."""
    names = [unicodedata.name(c, "?").split()[0] for c in text if c.isalpha()]
    return max(sorted(set(names)), key=names.count) if names else None


def test_decoded_text_is_a_translation(loaded: Loaded, greedy) -> None:
    ours, _ = greedy
    hyps = loaded.tokenizer.decode_batch(ours)
    assert hyps == loaded.hf_tokenizer.batch_decode(ours, skip_special_tokens=True)
    refs = list(loaded.rows["target"])
    assert all(h.strip() for h in hyps)
    bleu = sacrebleu.corpus_bleu(hyps, [refs]).score
    chrf = sacrebleu.corpus_chrf(hyps, [refs]).score
    if len(loaded.languages) == 1:
        print(f"\n{loaded.case.name}: ONNX greedy corpus BLEU {bleu:.1f}, chrF {chrf:.1f} "
              f"on {len(hyps)} sentences")
        assert bleu > 15
        return
    # Multilingual: all languages present, right script for the tag, chrF well above noise.
    assert set(loaded.rows["lang"]) == set(loaded.languages)
    same = sum(_script(h) == _script(r) for h, r in zip(hyps, refs))
    print(f"\n{loaded.case.name}: ONNX greedy chrF {chrf:.1f} (BLEU {bleu:.1f}) on {len(hyps)} "
          f"sentences in {loaded.rows['lang'].nunique()} languages; output script as the "
          f"reference's in {same}/{len(hyps)}")
    assert chrf > 20
    assert same >= 0.8 * len(hyps)
