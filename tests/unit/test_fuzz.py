"""Property-based fuzzing of everything that reads user files: whatever the bytes, the answer is a valid object
or a one-line user error (the QbenchError family), never another exception.

* the sweep config loader (qbench.config.schema.load_config, then variants.expand as ``qbench validate`` does);
* the dataset manifest loader (qbench.data.manifest.load_manifest) and a split's file (load_split: JSON lines, Parquet);
* the TensorRT calibration-cache importer (qbench.calib.trt_cache) and ``qbench table``'s reader (calibrators.table).

Inputs are random bytes and text, YAML built from the real schema's keys with random values and types, and
mutations of valid files. Examples are bounded (``max_examples`` <= 200, no example database) so the whole
file runs in well under 30 s on two slow cores. A crash that fuzzing found stays here as an ``@example``.
"""

from __future__ import annotations

import itertools
import json
import math
import types
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from calibrators.table import load_table
from qbench.config import registry
from qbench.calib import CalibrationTable
from qbench.config.schema import SweepConfig, load_config
from qbench.data.manifest import Manifest, Sample, load_manifest, load_split
from qbench.config.errors import ConfigError, DataError
from qbench.calib.trt_cache import from_trt_cache, load_trt_cache, to_trt_cache
from qbench.run.variants import expand

FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEW = settings(FUZZ, max_examples=40)  # each example loads a split through Hugging Face datasets

_counter = itertools.count()


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    """A folder where a config's ``model.source: ./model`` and ``data.manifest: data/manifest.yaml`` exist, so
    generated configs get past the file checks to the deeper ones."""
    d = tmp_path_factory.mktemp("fuzz")
    (d / "model").mkdir()
    (d / "data").mkdir()
    (d / "data" / "manifest.yaml").write_text("name: m\nsplits: {calibration: c.jsonl}\n")
    return d


@pytest.fixture(scope="module", autouse=True)
def private_datasets_cache(tmp_path_factory):
    """Hugging Face datasets converts every local file it loads into its cache: keep those out of ~/.cache."""
    import datasets

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf-datasets"))
        yield


# --------------------------------------------------------------------------- value strategies

SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=12))
JUNK = st.recursive(SCALARS, lambda c: st.lists(c, max_size=3)
                    | st.dictionaries(st.text(max_size=6) | st.integers(-3, 3), c, max_size=3), max_leaves=8)
# Strings that paths, package names and messages choke on (no package with import side effects).
NASTY = ["~nouser/x", "a\x00b", "./" + "a" * 300, "pkg:", "pkg:json", "pkg:no_such_package_x", "/", "..", "\n",
         "x\x1ey\u2028z", "\ufeff", "C:\\model"]
# Text that exercises YAML's syntax: indicators, quotes, tags, anchors, flow collections, line breaks.
YAMLISH = st.text(alphabet=st.sampled_from(list(":-[]{},#&*!|>'\"%@`? \n\t\r.0123456789abcdexyz_~\\\x00\ufeff")),
                  max_size=80)


def _pick(often: st.SearchStrategy, rarely: st.SearchStrategy, odds: int) -> st.SearchStrategy:
    """``often`` in about ``odds`` draws of ``odds + 1``, else ``rarely`` (``st.one_of`` flattens nested branches, so
    repeating a strategy in it does not weight it)."""
    return st.sampled_from([often] * odds + [rarely]).flatmap(lambda s: s)


def _mostly(s: st.SearchStrategy) -> st.SearchStrategy:
    """Three draws in four from ``s``, one of any type: deep enough to pass the outer checks, wrong often enough."""
    return _pick(s, JUNK, 3)


def _plugin_specs(reg) -> st.SearchStrategy:
    """``{name: <a registered name or not>, <that plugin's parameters or others>: <plausible or junk>}``."""
    names = reg.names()
    params = sorted({p for n in names for p in reg.get(n).model_fields})
    return st.fixed_dictionaries(
        {"name": _mostly(st.sampled_from(names) | st.text(max_size=8))},
        optional={p: _mostly(st.floats(-1e3, 1e3) | st.integers(-5, 5000) | st.sampled_from(["en", "de", ""]))
                  for p in params})


def _for_annotation(ann, depth: int) -> st.SearchStrategy:
    """A plausible value for a field annotated ``ann`` (right type, sometimes out of range)."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return _model_dicts(ann, depth - 1) if depth > 0 else st.just({})
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin in (typing.Union, types.UnionType):
        return st.one_of([_for_annotation(a, depth) for a in args])
    if origin is list:
        return st.lists(_mostly(_for_annotation(args[0], depth)), max_size=3)
    if origin is dict:
        if args[1] is typing.Any:
            return PLUGIN
        return st.dictionaries(st.sampled_from(["default", "a", "b"]) | st.text(max_size=4),
                               _mostly(_for_annotation(args[1], depth)), max_size=2)
    if ann is bool:
        return st.booleans()
    if ann is int:
        return st.integers(-10, 5000) | st.integers()
    if ann is float:
        return st.floats(-10, 1e4) | st.floats(allow_nan=True)
    if ann is str:
        return st.sampled_from(["none", "auto", "x", "layernorm", "calibration", "evaluation", *NASTY]) \
            | st.text(max_size=10)
    if ann is type(None):
        return st.none()
    return JUNK


PLUGIN = st.deferred(lambda: _plugin_specs(registry.calibrators) | _plugin_specs(registry.samplers)
                     | _plugin_specs(registry.weight_rules))

# Values that get past the existence checks, so the fuzzer reaches the plugin and cross-field checks.
GOOD = {("name",): st.sampled_from(["fuzz", "a.b-c_1"]), ("model", "source"): st.just("./model"),
        ("data", "manifest"): st.just("data/manifest.yaml")}


def _model_dicts(model: type[BaseModel], depth: int = 3, at: tuple = ()) -> st.SearchStrategy:
    """A dict shaped like ``model``: its required keys (one sometimes left out), any of the optional ones, and
    sometimes an unknown key (a typo of a real one, or random)."""
    fields = {k: f for k, f in model.model_fields.items() if k != "base_dir"}
    required, optional = {}, {}
    for k, f in fields.items():
        nested = isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel) and depth > 0
        s = _mostly(_model_dicts(f.annotation, depth - 1, (*at, k)) if nested else _for_annotation(f.annotation, depth))
        if (*at, k) in GOOD:
            s = _pick(GOOD[(*at, k)], s, 7)
        (required if f.is_required() else optional)[k] = s
    typo = st.sampled_from([k[:-1] + "z" for k in fields] or ["x"]) | st.text(max_size=6)
    drop = _pick(st.none(), st.sampled_from(sorted(required) or [None]), 7)
    return st.tuples(st.fixed_dictionaries(required, optional=optional), st.dictionaries(typo, JUNK, max_size=1),
                     drop).map(lambda t: {k: v for k, v in {**t[0], **t[1]}.items() if k != t[2]})


def _dump(value) -> str:
    return yaml.safe_dump(value, allow_unicode=True, sort_keys=False)


# --------------------------------------------------------------------------- 1. the config loader

VALID = {"name": "fuzz", "model": {"source": "./model", "max_length": 64},
         "data": {"manifest": "data/manifest.yaml", "calibration": {"n": 8, "sampler": {"name": "lang_balanced"}}},
         "calibration": {"batch_size": 4, "weights": {"name": "per_tensor"}},
         "sweep": {"baselines": ["fp32", "fp16"], "calibrators": [{"name": "minmax"}, {"name": "percentile",
                                                                                      "percentile": 99.9}],
                   "exclusions": ["none", "layernorm", ["layernorm", "softmax"]],
                   "extra": [{"calibrator": {"name": "entropy"}, "exclusion": "auto", "flavor": "u8s8"}]},
         "gate": {"metric": "accuracy_at_1", "max_drop": 1.0, "per": "all"},
         "measure": {"latency": {"batch_sizes": [1, 8]}}}


def _check_config(d: Path, data: bytes) -> None:
    """``load_config`` gives a SweepConfig that expands, or a ConfigError: one line per problem, each naming
    the file."""
    path = d / "fuzz.yaml"
    path.write_bytes(data)
    try:
        cfg = load_config(path)
        variants = expand(cfg)
    except ConfigError as e:
        lines = str(e).splitlines()  # as the CLI prints it
        assert all(line.startswith(f"{path}: ") and line.strip() != f"{path}:" for line in lines), lines
        event("ConfigError")
        return
    assert isinstance(cfg, SweepConfig) and variants
    event("valid config")


def test_valid_config_is_valid(fuzz_dir):
    """The seed the mutation fuzzer starts from really loads."""
    path = fuzz_dir / "valid.yaml"
    path.write_text(_dump(VALID))
    assert len(expand(load_config(path))) == 2 + 2 * 3 + 1


@FUZZ
@given(st.binary(max_size=200) | YAMLISH.map(str.encode) | st.text(max_size=200).map(str.encode))
@example(b"\xff\xfe")                                   # not UTF-8: config.py crashed (UnicodeDecodeError)
@example(b"{1: 2}")                                     # a non-string top-level key: config.py crashed (TypeError)
@example(b"?")                                          # a null key (the fuzzer's find): the same crash
@example(b"\x00")                                       # YAML's reader error has two lines: printed as two
@example(b"name: " + b"[" * 3000 + b"]" * 3000)         # deeply nested: config.py crashed (RecursionError)
@example(b"base_dir: x\nname: y\n")
@example(b"!!python/object:os.system {}\n")
def test_config_loader_random_bytes(fuzz_dir, data):
    _check_config(fuzz_dir, data)


@FUZZ
@given(_model_dicts(SweepConfig) | JUNK)
@example({"sweep": {"exclusion_sets": [None]}})  # the fuzzer's find: config.py crashed (TypeError in a validator)
@example({"name": "x", "model": {"source": "./model"}, "data": {"manifest": "a\x00b"}})  # ValueError (NUL byte)
@example({"name": "x", "model": {"source": "~nouser/m"}, "data": {"manifest": "data/manifest.yaml"}})  # RuntimeError
@example({"name": "x", "model": {"source": "./model"}, "data": {"manifest": "a" * 300}})  # OSError (name too long)
@example({"name": "x", "model": {"source": "./model"}, "data": {"manifest": "data/manifest.yaml"},
          "sweep": {"exclusions": ["x\x1ey"]}})  # a control character in a quoted name: a second line
@example({"\n": None})                            # the fuzzer's find: a key with a line break printed as two lines
@example({"name": "x", "model": {"source": "./model"}, "data": {"manifest": "data/manifest.yaml"},
          "sweep": {"extra": [{"calibrator": {"name": "minmax"}, "exclusion": [1]}]}})
@example({"name": "x", "model": {"source": "./model"}, "data": {"manifest": "data/manifest.yaml"},
          "sweep": {"exclusions": [["layernorm"], "layernorm"]}})
def test_config_loader_schema_shaped(fuzz_dir, value):
    _check_config(fuzz_dir, _dump(value).encode())


def _paths(value, at=()):
    """Every key path of a nested dict/list value (for the mutation fuzzer)."""
    yield at
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*at, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*at, i))


def _mutate(value, path, how, new):
    if not path:
        return new if how == "replace" else value
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        out = dict(value)
        if not rest and how == "delete":
            del out[head]
        elif not rest and how == "rename":
            out[str(new)[:8] if not isinstance(new, (dict, list)) else f"{head}x"] = out.pop(head)
        else:
            out[head] = _mutate(value[head], rest, how, new)
        return out
    out = list(value)
    if not rest and how == "delete":
        del out[head]
    else:
        out[head] = _mutate(value[head], rest, how, new)
    return out


VALID_PATHS = list(_paths(VALID))


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(VALID_PATHS), st.sampled_from(["replace", "delete", "rename"]), JUNK),
                min_size=1, max_size=3))
def test_config_loader_mutated_valid(fuzz_dir, edits):
    value = VALID
    for path, how, new in edits:
        try:
            value = _mutate(value, path, how, new)
        except (KeyError, IndexError, TypeError):  # an earlier edit removed or replaced this path
            continue
    _check_config(fuzz_dir, _dump(value).encode())


# --------------------------------------------------------------------------- 2. the dataset manifest loader


def _check_manifest(path: Path) -> Manifest | None:
    try:
        m = load_manifest(path)
    except ConfigError as e:
        lines = str(e).splitlines()  # as the CLI prints it
        assert all(line.startswith(f"{path}: ") for line in lines), lines
        event("manifest: ConfigError")
        return None
    assert isinstance(m, Manifest)
    event("manifest: valid")
    return m


MANIFEST_DICTS = _model_dicts(Manifest)


@FUZZ
@given(st.binary(max_size=200) | YAMLISH.map(str.encode) | MANIFEST_DICTS.map(lambda v: _dump(v).encode())
       | JUNK.map(lambda v: _dump(v).encode()))
@example(b"\xff\xfe")                               # not UTF-8: data.py crashed (UnicodeDecodeError)
@example(b"{1: 2}")                                 # a non-string key: data.py crashed (TypeError)
@example(b"?")                                      # a null key: a first fix let it through (TypeError)
@example(b"\x00")                                   # YAML's reader error has two lines
@example(b"? '\n\n  '\n: null\n")                     # a key with a line break: printed as two lines
@example(b"name: x\nsplits: {}\npath: /etc\n")      # 'path' is set by the loader: data.py crashed (TypeError)
@example(b"name: " + b"[" * 3000 + b"]" * 3000)     # deeply nested: data.py crashed (RecursionError)
def test_manifest_loader(fuzz_dir, data):
    path = fuzz_dir / "fuzz-manifest.yaml"
    path.write_bytes(data)
    _check_manifest(path)


def test_manifest_loader_on_a_directory(fuzz_dir):
    with pytest.raises(ConfigError, match=r": cannot read dataset manifest: Is a directory$"):
        load_manifest(fuzz_dir)


COLUMNS = ["id", "text", "reference", "lang", "other"]
ROW_VALUES = st.none() | st.text(max_size=8) | st.integers(-5, 5) | st.floats(allow_nan=True) | st.booleans() \
    | st.lists(st.integers(0, 3), max_size=2) | st.dictionaries(st.sampled_from(["a", "b"]), st.integers(0, 3),
                                                                max_size=2)
ROWS = st.lists(st.dictionaries(st.sampled_from(COLUMNS), ROW_VALUES, max_size=5), max_size=6)
TEXT_ROWS = st.lists(st.fixed_dictionaries({"id": st.text(max_size=4), "text": st.text(max_size=12)},
                                           optional={"lang": st.sampled_from(["en", "de"])}), min_size=1, max_size=5)


def _split_file(d: Path, fmt: str, kind: str, rows, raw: bytes) -> str:
    """A split file of the given content; a fresh name each time (datasets caches by file)."""
    name = f"split-{next(_counter)}.{'parquet' if fmt == 'parquet' else 'jsonl'}"
    path = d / name
    if kind == "raw":
        path.write_bytes(raw)
    elif fmt == "json":
        path.write_text("".join(json.dumps(r, allow_nan=True) + "\n" for r in rows)
                        + ("" if kind == "rows" else raw.decode("latin-1")))
    else:
        import pandas as pd

        try:
            pd.DataFrame(rows).to_parquet(path)
        except Exception:  # noqa: BLE001 - pandas/pyarrow refuse mixed columns: write what is left instead
            path.write_bytes(raw)
    return name


@FEW
@given(fmt=st.sampled_from(["json", "parquet"]), kind=st.sampled_from(["rows", "rows", "rows+junk", "raw"]),
       rows=_pick(TEXT_ROWS, ROWS, 1), raw=st.binary(max_size=60),
       fields=st.fixed_dictionaries({}, optional={"text": st.sampled_from(["text", "nope"]),
                                                  "id": st.sampled_from(["id", "nope"]),
                                                  "language": st.sampled_from(["lang", "other"]),
                                                  "reference": st.sampled_from(["reference", "text"])}),
       sha=_pick(st.just(False), st.just(True), 7))
@example(fmt="json", kind="raw", rows=[], raw=b"", fields={}, sha=False)        # empty: datasets raised StopIteration
@example(fmt="json", kind="raw", rows=[], raw=b"{x", fields={}, sha=False)      # datasets raised DatasetGenerationError
@example(fmt="json", kind="rows", rows=[{"text": None}], raw=b"", fields={}, sha=False)  # text null -> 'None'
def test_split_loader(fuzz_dir, fmt, kind, rows, raw, fields, sha):
    d = fuzz_dir / "splits"
    d.mkdir(exist_ok=True)
    name = _split_file(d, fmt, kind, rows, raw)
    manifest = {"name": "fuzz", "source": {"kind": "local", "format": fmt}, "fields": fields,
                "splits": {"calibration": name}, "sha256": {name: "0" * 64} if sha else {}}
    path = d / f"{name}.yaml"
    path.write_text(_dump(manifest))
    m = _check_manifest(path)
    assert m is not None
    try:
        samples = load_split(m, "calibration")
    except (ConfigError, DataError) as e:
        lines = str(e).splitlines()  # as the CLI prints it
        assert len(lines) == 1 and str(d) in lines[0], lines
        event(type(e).__name__)
        return
    event("samples")
    assert samples and all(isinstance(s, Sample) and isinstance(s.text, str) and isinstance(s.id, str)
                           for s in samples)


# --------------------------------------------------------------------------- 3. TensorRT caches and tables

TENSOR_NAMES = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n\x0b\x0c\x1c\x1d\x1e"
                                     "\x85\u2028\u2029"), min_size=1, max_size=12)
TABLES = st.dictionaries(TENSOR_NAMES, st.floats(0, 1e30, allow_nan=False), min_size=1, max_size=6)


def _check_cache_text(text: str, source: str = "fuzz.cache") -> None:
    try:
        table = from_trt_cache(text, source=source)
    except (ConfigError, DataError) as e:
        assert len(str(e).splitlines()) == 1 and str(e).startswith(f"{source}:"), str(e)
        return
    assert isinstance(table, CalibrationTable)
    assert all(math.isfinite(v) and v >= 0 for v in table.amax.values())


def _check_file(d: Path, data: bytes, reader) -> None:
    path = d / "fuzz.cache"
    path.write_bytes(data)
    try:
        table = reader(path)
    except (ConfigError, DataError) as e:
        assert len(str(e).splitlines()) == 1 and str(e).startswith(f"{path}"), str(e)
        event(f"{reader.__name__}: {type(e).__name__}")
        return
    event(f"{reader.__name__}: table")
    assert isinstance(table, CalibrationTable)
    assert all(math.isfinite(v) and v >= 0 for v in table.amax.values())


@FUZZ
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode)
       | st.lists(st.text(max_size=20), max_size=5).map(lambda ls: ("TRT-8601-EntropyCalibration2\n"
                                                                     + "\n".join(ls)).encode()))
@example(b"TRT-8601-EntropyCalibration2\nx: ffffffff\n")
@example(b"\xef\xbb\xbfTRT-1-X\r\n: 0\r\n")
def test_trt_cache_random_bytes(fuzz_dir, data):
    _check_file(fuzz_dir, data, load_trt_cache)
    _check_cache_text(data.decode("utf-8", errors="replace"))


@FUZZ
@given(TABLES, st.lists(st.tuples(st.sampled_from(["flip", "delete", "insert", "dup_line", "truncate"]),
                                  st.integers(0, 10_000), st.binary(min_size=1, max_size=8)), min_size=1, max_size=4))
def test_trt_cache_mutated(fuzz_dir, amax, edits):
    data = bytearray(to_trt_cache(CalibrationTable(amax)).encode())
    assert from_trt_cache(data.decode()).amax.keys() == amax.keys()
    for how, at, blob in edits:
        i = at % (len(data) + 1)
        if how == "flip" and data:
            data[i % len(data)] ^= blob[0] or 1
        elif how == "delete":
            del data[i:i + len(blob)]
        elif how == "insert":
            data[i:i] = blob
        elif how == "dup_line":
            lines = bytes(data).split(b"\n")
            k = i % len(lines)
            data = bytearray(b"\n".join(lines[:k + 1] + lines[k:]))
        else:
            del data[i:]
    _check_file(fuzz_dir, bytes(data), load_trt_cache)
    _check_file(fuzz_dir, bytes(data), load_table)


@FUZZ
@given(st.binary(max_size=200) | JUNK.map(lambda v: json.dumps(v).encode())
       | st.fixed_dictionaries({"amax": JUNK | st.dictionaries(st.text(max_size=4), JUNK, max_size=3)},
                               optional={"calibrator": JUNK}).map(lambda v: json.dumps(v).encode()))
@example(b'{"amax": [1]}')                        # calib.py crashed (AttributeError)
@example(b'{"amax": {"a": NaN}}')                 # a NaN amax was accepted until written as a cache
@example(b"\xff{")                                # calibrators/table.py crashed (UnicodeDecodeError)
@example(b"{" * 100_000)                          # deeply nested JSON
def test_qbench_table_reader(fuzz_dir, data):
    _check_file(fuzz_dir, data, load_table)
