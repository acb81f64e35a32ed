"""Bad input through the real command line (``qbench.cli.main``): every case gets one line on stderr that
names the offending file, key, tensor or variant, its documented exit code (qbench.config.errors), and no traceback.

The run-time cases use a tiny but real sweep: a hand-built ONNX encoder and a word-level tokenizer placed in
qbench's export cache under the key ``qbench.models.export`` computes for a local model folder, so no torch and no
export is needed, plus a four-sample JSON-lines dataset. Such a sweep takes a second or two.

Inside a sweep a per-variant error becomes that variant's failed row and one ``variant <id> failed: ...``
warning line (``-q`` leaves only those on stderr); the sweep itself ends with ``SWEEP_WITH_FAILED_VARIANT``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qbench.cli import main
from qbench.config.errors import EXIT_CODES, ConfigError, DataError, ModelError, QuantizationError

CONFIG, DATA, MODEL, QUANT = (ConfigError.exit_code, DataError.exit_code, ModelError.exit_code,
                              QuantizationError.exit_code)
# A sweep whose variants failed still writes its report and exits 0: the failures are its rows.
SWEEP_WITH_FAILED_VARIANT = 0
WORDS = ["alpha", "beta", "gamma", "delta", "omega", "boom"]  # boom's embedding row is +inf (see _encoder)
LOG = r"\[qbench \d\d:\d\d:\d\d\] "


def test_exit_codes_are_distinct_and_documented():
    import qbench.config.errors

    assert EXIT_CODES == {"QbenchError": 2, "ConfigError": 2, "DataError": 3, "ModelError": 4,
                          "BackendUnavailable": 5, "QuantizationError": 6, "VariantFailed": 7, "StorageError": 8}
    doc = qbench.config.errors.__doc__
    for name, code in EXIT_CODES.items():
        if name != "QbenchError":
            assert re.search(rf"^{code}\s+``{name}``", doc, re.M), name


def _run(capsys, *argv) -> tuple[int, list[str], str]:
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err and "Traceback" not in cap.out, cap.err
    return rc, cap.err.splitlines(), cap.out


def _one_line(capsys, code: int, *argv) -> str:
    """Run the CLI; assert the exit code and exactly one stderr line; return that line."""
    rc, err, _ = _run(capsys, *argv)
    assert rc == code, err
    assert len(err) == 1, err
    return err[0]


# --------------------------------------------------------------------------- a tiny real sweep setup


def _encoder(path: Path, *, layers: int = 1, matmul: bool = True, opset: int = 17) -> Path:
    """input_ids, attention_mask [b, s] -> Gather (tensor 'emb') -> ``layers`` MatMuls -> ReduceMean -> embedding.

    Token ids follow the tokenizer below: 0 [PAD], 1 [UNK], then WORDS; the row of 'boom' is +inf.
    """
    rng = np.random.default_rng(0)
    table = rng.standard_normal((2 + len(WORDS), 4)).astype(np.float32)
    table[2 + WORDS.index("boom")] = np.inf
    inits = [numpy_helper.from_array(table, "E")]
    nodes = [helper.make_node("Gather", ["E", "input_ids"], ["emb"], name="embed")]
    x = "emb"
    for i in range(layers if matmul else 0):
        inits.append(numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), f"W{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"W{i}"], [f"h{i}"], name=f"fc{i}"))
        x = f"h{i}"
    if not matmul:
        nodes.append(helper.make_node("Relu", [x], ["h"], name="act"))
        x = "h"
    nodes.append(helper.make_node("ReduceMean", [x], ["embedding"], name="pool", axes=[1], keepdims=0))
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["b", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _install_model(tmp: Path, cache: Path, **encoder) -> None:
    """A local model folder ``tmp/model`` whose export is already in ``cache/models/<key>/``."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from qbench.models.export import cache_key, resolve_source

    src = tmp / "model"
    src.mkdir(exist_ok=True)
    (src / "config.json").write_text(json.dumps({"tiny": True, **{k: str(v) for k, v in encoder.items()}}))
    key = cache_key(resolve_source(str(src)), opset=17, pooling="mean", normalize=True)
    entry = cache / "models" / key
    (entry / "tokenizer").mkdir(parents=True)
    _encoder(entry / "model.onnx", **encoder)
    (entry / "export.json").write_text(json.dumps({"max_abs_diff": 0.0, "opset": 17, "pooling": "mean"}))
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: 2 + i for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(entry / "tokenizer" / "tokenizer.json"))
    (entry / "tokenizer" / "tokenizer_config.json").write_text(json.dumps({"pad_token": "[PAD]"}))


def _rows(prefix: str, texts: list[str], langs: list[str]) -> str:
    return "".join(json.dumps({"id": f"{prefix}{i}", "text": t, "reference": t[::-1], "lang": lang}) + "\n"
                   for i, (t, lang) in enumerate(zip(texts, langs)))


CALIB = ["alpha beta", "gamma delta", "omega boom", "beta gamma"]  # 'boom': batch 1 of batch size 2
CALIB_OK = ["alpha beta", "gamma delta", "omega alpha", "beta gamma"]
EVAL = ["alpha", "beta gamma", "delta omega", "gamma alpha"]

SWEEP = """\
name: tiny
model: {{source: ./model, max_length: 16}}
data:
  manifest: data/manifest.yaml
  {calibration}
  evaluation: {{n: 4}}
calibration: {{batch_size: 2, histogram_bins: 128}}
sweep:
  baselines: [fp32]
  calibrators: [{calibrator}]
  {sweep_extra}
backend: {{threads: 1}}
measure: {{eval_batch_size: 4, latency: {{batch_sizes: [1], warmup: 0, runs: 1, rounds: 1}}}}
"""

MANIFEST = """\
name: tiny-data
source: {kind: local, format: json}
fields: {id: id, text: text, reference: reference, language: lang}
splits: {calibration: calibration.jsonl, evaluation: evaluation.jsonl}
"""


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """Build a tiny sweep folder; returns ``make(**options) -> config path``."""
    import datasets

    monkeypatch.setenv("QBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")  # not ~/.cache

    def make(*, calib_texts=CALIB_OK, calib_langs=("en",) * 4, calibration="calibration: {n: 4}",
             calibrator="{name: minmax}", sweep_extra="", manifest=MANIFEST, **encoder) -> Path:
        _install_model(tmp_path, tmp_path / "cache", **encoder)
        data = tmp_path / "data"
        data.mkdir(exist_ok=True)
        (data / "manifest.yaml").write_text(manifest)
        (data / "calibration.jsonl").write_text(_rows("c", list(calib_texts), list(calib_langs)))
        (data / "evaluation.jsonl").write_text(_rows("e", EVAL, ["en"] * 4))
        cfg = tmp_path / "sweep.yaml"
        cfg.write_text(SWEEP.format(calibration=calibration, calibrator=calibrator, sweep_extra=sweep_extra))
        return cfg

    return make


def _sweep(capsys, cfg: Path, code: int) -> list[str]:
    rc, err, out = _run(capsys, "sweep", cfg, "-q", "--out", cfg.parent / "out")
    assert rc == code, err
    return err


def test_tiny_sweep_runs_clean(tiny, capsys):
    """The baseline the cases below break: no stderr line at all, exit 0, a run directory on stdout."""
    cfg = tiny()
    rc, err, out = _run(capsys, "sweep", cfg, "-q", "--out", cfg.parent / "out")
    assert (rc, err) == (0, [])
    run = Path(out.strip())
    manifest = json.loads((run / "manifest.json").read_text())
    assert {v: e["status"] for v, e in manifest["variants"].items()} == {"fp32": "ok", "minmax+none+s8s8": "ok"}


# --------------------------------------------------------------------------- config (exit 2)


def test_malformed_yaml(tiny, capsys):
    cfg = tiny()
    cfg.write_text(cfg.read_text().replace("baselines: [fp32]", "baselines: [fp32"))
    for verb in (["validate"], ["sweep", "--dry-run"]):
        line = _one_line(capsys, CONFIG, *verb[:1], cfg, *verb[1:])
        assert re.fullmatch(rf"{re.escape(str(cfg))}: line \d+: malformed YAML: .+", line), line


def test_unknown_key(tiny, capsys):
    cfg = tiny()
    cfg.write_text(cfg.read_text().replace("histogram_bins: 128", "histogram_binz: 128"))
    line = _one_line(capsys, CONFIG, "validate", cfg)
    assert line == f"{cfg}: calibration.histogram_binz: unknown key (did you mean 'histogram_bins'?)"


@pytest.mark.parametrize("edit, expect", [
    (("batch_size: 2", "batch_size: two"), "calibration.batch_size: Input should be a valid integer"),
    (("baselines: [fp32]", "baselines: fp32"), "sweep.baselines: Input should be a valid list"),
    (("threads: 1", "threads: [1]"), "backend.threads: Input should be a valid integer"),
    (("baselines: [fp32]", "baselines: [fp32]\n  float_dtypes: [fp16, bf16]"), "sweep.float_dtypes[1]: Input should be 'fp32' or 'fp16'"),
    (("baselines: [fp32]", "baselines: [fp32]\n  extra: [{calibrator: {name: minmax}, ort_form: fused}]"),
     "sweep.extra[0]: Value error, ort_form: fused is ONNX Runtime CPU's form of a u8s8, fp32 variant"),
])
def test_wrong_type(tiny, capsys, edit, expect):
    cfg = tiny()
    cfg.write_text(cfg.read_text().replace(*edit))
    line = _one_line(capsys, CONFIG, "sweep", cfg, "--dry-run")
    assert line.startswith(f"{cfg}: {expect}"), line


def test_config_that_is_not_a_mapping(tmp_path, capsys):
    cfg = tmp_path / "list.yaml"
    cfg.write_text("- name: x\n")
    assert _one_line(capsys, CONFIG, "validate", cfg) == f"{cfg}: (top level): expected a mapping of keys, got list"


def test_manifest_with_an_unknown_key(tiny, capsys):
    """The manifest is read when the sweep starts (validate checks only that it exists)."""
    cfg = tiny(manifest=MANIFEST.replace("fields:", "fieldz:"))
    (line,) = _sweep(capsys, cfg, CONFIG)
    assert line == f"{cfg.parent / 'data' / 'manifest.yaml'}: fieldz: unknown key (did you mean 'fields'?)"


# --------------------------------------------------------------------------- data (exit 3)


def test_empty_calibration_set(tiny, capsys):
    cfg = tiny()
    (cfg.parent / "data" / "calibration.jsonl").write_text("")
    (line,) = _sweep(capsys, cfg, DATA)
    manifest = cfg.parent / "data" / "manifest.yaml"
    assert line.startswith(f"{manifest.resolve()}: splits.calibration: ") and line.endswith("is empty (no samples)")


def test_calibration_split_that_is_not_json(tiny, capsys):
    cfg = tiny()
    bad = cfg.parent / "data" / "calibration.jsonl"
    bad.write_text('{"id": "c0", "text": unquoted}\n')
    (line,) = _sweep(capsys, cfg, DATA)
    assert line.startswith(f"{bad.resolve()}: cannot read split 'calibration' as json ("), line


@pytest.mark.parametrize("sampler, expect", [
    ("{name: lang_balanced}", "lang_balanced sampler: language 'de' has 1 samples, its quota is 2"),
    ("{name: single_language, language: de}", "single_language sampler: language 'de' has 1 samples, its quota is 4"),
    ("{name: single_language, language: fr}",
     "single_language sampler: language 'fr' is not in the pool (present: de (1), en (3))"),
])
def test_language_quota_that_cannot_be_met(tiny, capsys, sampler, expect):
    cfg = tiny(calib_langs=("en", "en", "de", "en"), calibration=f"calibration: {{n: 4, sampler: {sampler}}}")
    (line,) = _sweep(capsys, cfg, DATA)
    assert expect in line, line


def test_non_finite_activation_names_tensor_and_batch(tiny, capsys):
    cfg = tiny(calib_texts=CALIB)
    (line,) = _sweep(capsys, cfg, SWEEP_WITH_FAILED_VARIANT)
    assert re.fullmatch(LOG + r"variant minmax\+none\+s8s8 failed: tensor 'emb': 4 non-finite value\(s\) \(4 inf\) "
                        r"at valid positions in calibration batch 1 \(samples 2\.\.3 of the set\)", line), line


# --------------------------------------------------------------------------- models (exit 4)


def test_missing_onnx(tmp_path, capsys):
    path = tmp_path / "nope.onnx"
    assert _one_line(capsys, MODEL, "inspect", path) == f"{path}: model file not found"


def test_truncated_onnx(tmp_path, capsys):
    good = _encoder(tmp_path / "good.onnx", layers=3)
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert _one_line(capsys, MODEL, "inspect", bad) == f"{bad}: not a readable ONNX model (DecodeError)"


@pytest.mark.parametrize("content, expect", [
    (b"name: not-a-model\n", "not a readable ONNX model (DecodeError)"),
    (b"", "not an ONNX model (no graph; an empty or foreign file?)"),
])
def test_not_onnx_at_all(tmp_path, capsys, content, expect):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    assert _one_line(capsys, MODEL, "inspect", path) == f"{path}: {expect}"


@pytest.mark.parametrize("opset", [11, 99])
def test_unsupported_opset(tmp_path, capsys, opset):
    from qbench.quantize.qdq import max_opset

    path = _encoder(tmp_path / "old.onnx", opset=opset)
    line = _one_line(capsys, MODEL, "inspect", path)
    assert line.startswith(f"{path}: ONNX opset {opset} is not supported (qbench needs 13..{max_opset()}"), line


def test_model_directory_instead_of_file(tmp_path, capsys):
    assert _one_line(capsys, MODEL, "inspect", tmp_path) == f"{tmp_path}: is a directory, not an ONNX model file"


def test_model_with_no_quantizable_node(tiny, capsys):
    cfg = tiny(matmul=False)
    (line,) = _sweep(capsys, cfg, SWEEP_WITH_FAILED_VARIANT)
    assert re.fullmatch(LOG + r"variant minmax\+none\+s8s8 failed: model graph 'tiny': nothing to quantize: "
                        r"no MatMul/Gemm node \(qbench quantizes the activation inputs of MatMul and Gemm\)", line)


# --------------------------------------------------------------------------- exclusions: a warning, not an error


def test_exclusion_pattern_that_matches_nothing_is_a_warning(tiny, capsys):
    cfg = tiny(sweep_extra="exclusion_sets: {ghost: {names: ['^no_such_node$']}}\n  exclusions: [ghost]")
    rc, err, out = _run(capsys, "sweep", cfg, "-q", "--out", cfg.parent / "out")
    assert rc == 0 and len(err) == 1, err
    assert re.fullmatch(LOG + r"warning: variant minmax\+ghost\+s8s8: exclusion name pattern '\^no_such_node\$' "
                        r"matches no node", err[0]), err[0]
    manifest = json.loads((Path(out.strip()) / "manifest.json").read_text())
    assert manifest["variants"]["minmax+ghost+s8s8"]["status"] == "ok"


# --------------------------------------------------------------------------- calibration tables (exit 6 / 2)


def test_calibration_table_for_another_model(tiny, capsys, tmp_path):
    """Seven tensors are missing: the first five are named, then how many more."""
    table = tmp_path / "other.json"
    table.write_text(json.dumps({"calibrator": "x", "amax": {"other_a": 1.0, "other_b": 2.0}}))
    cfg = tiny(layers=7, calibrator=f"{{name: table, path: '{table}'}}")
    (line,) = _sweep(capsys, cfg, SWEEP_WITH_FAILED_VARIANT)
    assert re.fullmatch(LOG + rf"variant table\[path={re.escape(str(table))}\]\+none\+s8s8 failed: "
                        + re.escape(f"{table}: 7 tensor(s) the model quantizes (of 7) are not in the table: "
                                    "emb, h0, h1, h2, h3 (+2 more) (the table has 2; is it for another model?)"),
                        line), line


def test_calibration_table_with_non_finite_amax(tmp_path, capsys):
    src = tmp_path / "t.json"
    src.write_text('{"amax": {"a": 1.0, "b": NaN, "c": Infinity}}')
    line = _one_line(capsys, CONFIG, "table", src, tmp_path / "t.cache")
    assert line == f"{src}: amax must be finite and non-negative; 2 tensor(s) are not: b, c"


@pytest.mark.parametrize("text, expect", [
    ("{not json", "not a qbench calibration table (invalid JSON: Expecting property name enclosed in double "
                  "quotes: line 1 column 2 (char 1))"),
    ('{"amax": [1, 2]}', "not a qbench calibration table ('amax' must map tensor names to numbers, got list)"),
    ('{"amax": {"x": "big"}}', "not a qbench calibration table (amax of tensor 'x' is not a number: 'big')"),
    ('{"calibrator": "minmax"}', "not a qbench calibration table (no 'amax' mapping of tensor name -> amax)"),
])
def test_corrupt_qbench_table(tmp_path, capsys, text, expect):
    src = tmp_path / "t.json"
    src.write_text(text)
    assert _one_line(capsys, CONFIG, "table", src, tmp_path / "t.cache") == f"{src}: {expect}"


@pytest.mark.parametrize("content, expect", [
    (b"TRT-8601-EntropyCalibration2\nx: 3f800000\ny: zzzz\n",
     ":3: tensor 'y': scale must be 1 to 8 hex digits (float32 bits), got 'zzzz'"),
    (b"TRT-8601-EntropyCalibration2\nx: 3f800000\nx: 3f800000\n", ":3: tensor 'x' appears twice (first on line 2)"),
    (b"TRT-8601-EntropyCalibration2\nx: 7fc00000\n", ":2: tensor 'x': scale 7fc00000 is nan; a scale must be finite "
                                                     "and non-negative"),
    (b"TRT-8601-EntropyCalibration2\nno colon here\n", ":2: expected 'tensor_name: <hex scale>', got 'no colon here' "
                                                       "(no ':')"),
    (b"\x7fELF\x02\x01\x01\x00\xff\xfe engine bytes", ":1: not UTF-8 text (byte 8); is this an engine, not a cache?"),
    (b"hello\n", ":1: not a TensorRT calibration cache: expected a header like 'TRT-8601-EntropyCalibration2', "
                 "got 'hello'"),
    (b"", ":1: not a TensorRT calibration cache: missing 'TRT-<version>-<algorithm>' header"),
])
def test_corrupt_tensorrt_cache(tmp_path, capsys, content, expect):
    src = tmp_path / "calib.cache"
    src.write_bytes(content)
    dst = tmp_path / "out.json"
    assert _one_line(capsys, CONFIG, "table", src, dst) == f"{src}{expect}"
    assert not dst.exists()


def test_table_source_missing_or_a_directory(tmp_path, capsys):
    line = _one_line(capsys, CONFIG, "table", tmp_path / "nope.cache", tmp_path / "out.json")
    assert line == f"{tmp_path / 'nope.cache'}: cannot read calibration table: No such file or directory"
    line = _one_line(capsys, CONFIG, "table", tmp_path, tmp_path / "out.json")
    assert line == f"{tmp_path}: cannot read calibration table: Is a directory"


@pytest.mark.parametrize("split", ["calibration", "evaluation"])
def test_parquet_split_with_zero_rows(tiny, capsys, split):
    """A Parquet split with a schema but no rows: one data line naming the manifest, the split and the file
    (datasets alone fails inside Arrow with "BatchSize must be greater than 0", naming neither)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cfg = tiny(manifest=MANIFEST.replace("format: json", "format: parquet")
               .replace(".jsonl", ".parquet"))
    data = cfg.parent / "data"
    for name in ("calibration", "evaluation"):
        rows = [json.loads(line) for line in (data / f"{name}.jsonl").read_text().splitlines()]
        schema = pa.Table.from_pylist(rows).schema
        pq.write_table(pa.Table.from_pylist(rows if name != split else [], schema=schema), data / f"{name}.parquet")
    (line,) = _sweep(capsys, cfg, DATA)
    assert line == f"{(data / 'manifest.yaml').resolve()}: splits.{split}: {(data / f'{split}.parquet').resolve()} " \
                   "is empty (no samples)", line


@pytest.mark.parametrize("sig, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_interrupted_sweep_prints_its_run_directory(tiny, capsys, monkeypatch, sig, code):
    """A real signal, sent to this process the moment the sweep logs its second variant: the exit code is the
    signal's, and stdout's last line is the run directory, which ``--resume`` then finishes."""
    import io
    import os
    import signal
    import sys

    class Tripwire(io.StringIO):
        def write(self, s):
            if "variant 2/2: " in s and not self.fired:
                self.fired = True
                os.kill(os.getpid(), getattr(signal, sig))
            return super().write(s)

    cfg = tiny()
    wire = Tripwire()
    wire.fired = False
    captured = sys.stderr
    monkeypatch.setattr(sys, "stderr", wire)
    rc = main(["sweep", str(cfg), "--out", str(cfg.parent / "out")])
    out = capsys.readouterr().out
    monkeypatch.setattr(sys, "stderr", captured)
    assert wire.fired and rc == code, wire.getvalue()
    run = Path(out.splitlines()[-1])
    assert run.parent.parent == cfg.parent / "out" and (run / "manifest.json").is_file()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["interrupted"]["signal"] == sig and manifest["complete"] is False
    assert f"--resume {run}" in wire.getvalue() and "Traceback" not in wire.getvalue()
    rc, err, out = _run(capsys, "sweep", "--resume", run, "-q")
    assert (rc, out.strip()) == (0, str(run)), err
    assert err == []
    assert json.loads((run / "manifest.json").read_text())["complete"] is True


# --------------------------------------------------------------------------- model.source as ONNX


def _onnx_source(tiny, tmp_path, model_line: str, *, task: str = "", rename_input: str = "", blank: bool = False,
                 **options) -> Path:
    """The tiny sweep (``options`` as for ``tiny``) with ``model:`` replaced by ``model_line``; ``given/`` holds
    the tiny encoder as ``model.onnx`` (an input renamed to ``rename_input``, node names blanked if asked)
    and its tokenizer."""
    cfg = tiny(**options)
    given = tmp_path / "given"
    given.mkdir(exist_ok=True)
    entry = next((tmp_path / "cache" / "models").iterdir())
    m = onnx.load(str(entry / "model.onnx"))
    if rename_input:
        for n in m.graph.node:
            n.input[:] = [rename_input if x == "attention_mask" else x for x in n.input]
        m.graph.input[1].name = rename_input
    for n in m.graph.node if blank else []:
        n.name = ""
    onnx.save(m, str(given / "model.onnx"))
    (given / "tok").mkdir(exist_ok=True)
    for f in (entry / "tokenizer").iterdir():
        (given / "tok" / f.name).write_bytes(f.read_bytes())
    text = cfg.read_text().replace("model: {source: ./model, max_length: 16}", model_line)
    cfg.write_text(task + text)
    return cfg


def test_retrieval_model_source_as_an_onnx_file(tiny, tmp_path, capsys):
    cfg = _onnx_source(tiny, tmp_path, "model: {source: given/model.onnx, tokenizer: given/tok, max_length: 16}")
    rc, err, out = _run(capsys, "sweep", cfg, "-q", "--out", cfg.parent / "out")
    assert (rc, err) == (0, [])
    manifest = json.loads((Path(out.strip()) / "manifest.json").read_text())
    assert manifest["model"]["onnx_path"] == str((tmp_path / "given" / "model.onnx").resolve())
    assert manifest["model"]["export_max_abs_diff"] is None  # no PyTorch model: no export check
    assert {v: e["status"] for v, e in manifest["variants"].items()} == {"fp32": "ok", "minmax+none+s8s8": "ok"}


@pytest.mark.parametrize("model_line, task, expect", [
    ("model: {source: given/nope.onnx, tokenizer: given/tok}", "",
     "model.source: ONNX file not found: {given}/nope.onnx"),
    ("model: {source: given/model.onnx}", "",
     "model.source: no tokenizer.json in {given} (an ONNX model needs the tokenizer it was exported with; "
     "set model.tokenizer to its folder)"),
    ("model: {source: given/model.onnx, tokenizer: given}", "",
     "model.tokenizer: no tokenizer.json in {given} (an ONNX model needs the tokenizer it was exported with; "
     "set model.tokenizer to its folder)"),
    ("model: {source: given/model.onnx, tokenizer: given/tok}", "task: translation\n",
     "model.source: an ONNX file serves task retrieval; a translation model is a folder holding encoder.onnx "
     "and decoder.onnx"),
])
def test_onnx_model_source_config_errors(tiny, tmp_path, capsys, model_line, task, expect):
    cfg = _onnx_source(tiny, tmp_path, model_line, task=task)
    line = _one_line(capsys, CONFIG, "validate", cfg)
    assert line == f"{cfg}: " + expect.format(given=tmp_path / "given"), line


def test_onnx_folder_with_a_decoder_alone(tiny, tmp_path, capsys):
    cfg = _onnx_source(tiny, tmp_path, "model: {source: given, tokenizer: given/tok}", task="task: translation\n")
    (tmp_path / "given" / "model.onnx").rename(tmp_path / "given" / "decoder.onnx")
    line = _one_line(capsys, CONFIG, "validate", cfg)
    assert line == (f"{cfg}: model.source: {tmp_path / 'given'} has no encoder.onnx: the translation task needs "
                    "both encoder.onnx and decoder.onnx (a decoder alone is a decoder-only model, which it does not "
                    "run)"), line


def test_onnx_file_with_another_interface(tiny, tmp_path, capsys):
    """A graph that does not take what qbench feeds: one model line (exit 4) naming the file and the input."""
    cfg = _onnx_source(tiny, tmp_path, "model: {source: given/model.onnx, tokenizer: given/tok, max_length: 16}",
                       rename_input="mask")
    (line,) = _sweep(capsys, cfg, MODEL)
    assert line == (f"{(tmp_path / 'given' / 'model.onnx').resolve()}: no graph input 'attention_mask' (a retrieval "
                    "model takes inputs input_ids, attention_mask [batch, sequence] -> one embedding [batch, dim])")


def test_role_exclusion_reaches_unnamed_nodes(tiny, tmp_path, capsys):
    """Node names blanked, as some exporters leave them: the embeddings role still keeps the first MatMul (it
    reads the table lookup's output) float, and the other two quantized."""
    import pandas as pd

    cfg = _onnx_source(tiny, tmp_path, "model: {source: given/model.onnx, tokenizer: given/tok, max_length: 16}",
                       blank=True, layers=3, sweep_extra="exclusions: [none, embeddings]")
    rc, err, out = _run(capsys, "sweep", cfg, "-q", "--out", cfg.parent / "out")
    assert (rc, err) == (0, [])
    df = pd.read_parquet(Path(out.strip()) / "results.parquet")
    counts = df[df.slice == "op=MatMul"].set_index(["variant", "metric"]).value
    assert counts[("minmax+none+s8s8", "nodes_quantized")] == 3
    assert (counts[("minmax+embeddings+s8s8", "nodes_quantized")], counts[("minmax+embeddings+s8s8", "nodes_float")]) \
        == (2, 1)


@pytest.mark.parametrize("task, gate, expect", [
    ("causal_lm", "{metric: bleu, max_drop: 1.0}", "gate.metric: causal_lm is gated on perplexity, got bleu "
                                                   "(allowed: perplexity)"),
    ("causal_lm", "{max_drop: 2.0}", "gate.metric: causal_lm is gated on perplexity, got bleu, the default "
                                     "(allowed: perplexity)"),
    ("causal_lm", "{metric: top1_agreement}", "gate.metric: Input should be 'bleu', 'chrf', 'accuracy_at_1' or "
                                              "'perplexity'"),
    ("translation", "{metric: perplexity}", "gate.metric: translation is gated on bleu or chrf"),
])
def test_gate_metric_the_task_cannot_decide_is_one_line(tmp_path, capsys, task, gate, expect):
    root = Path(__file__).resolve().parents[2]
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")  # a model folder: enough for validate, which loads no weights
    cfg = tmp_path / "gate.yaml"
    cfg.write_text(f"name: g\ntask: {task}\nmodel: {{source: {model}}}\n"
                   f"data: {{manifest: {root / 'datasets' / 'lm_text.yaml'}}}\ngate: {gate}\n")
    assert _one_line(capsys, CONFIG, "validate", cfg) == f"{cfg}: {expect}"
    cfg.write_text(cfg.read_text().replace(f"gate: {gate}", "gate: {metric: perplexity, max_drop: 2.0, per: lang}"))
    rc, err, _ = _run(capsys, "validate", cfg)
    assert (rc, err) == ((0, []) if task == "causal_lm" else (CONFIG, [f"{cfg}: {expect}"]))
