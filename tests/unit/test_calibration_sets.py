"""Calibration sets drawn from another manifest (the multilingual benchmark's English-only set for XX->EN), and the
statistics cache key: it follows what the model is fed, not only the sample ids."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from qbench.calib.stats import cache_key, sample_keys
from qbench.config.errors import ConfigError
from qbench.config.schema import load_config
from qbench.data.manifest import Sample
from qbench.data.sets import load_data

ROOT = Path(__file__).resolve().parents[2]
XX_EN, EN_XX = ROOT / "datasets/debian_multi_xx_en.yaml", ROOT / "datasets/debian_multi_en_xx.yaml"


def _config(tmp_path: Path, sets: str) -> Path:
    p = tmp_path / "sweep.yaml"
    p.write_text(f"""\
name: t
task: translation
model: {{source: {ROOT / 'examples/models/marian-debian-multi'}, source_prefix: ">>en<< "}}
data:
  manifest: {XX_EN}
  calibration_sets:
{sets}
  evaluation: {{split: test, n_per_language: 2}}
sweep: {{calibrators: [{{name: minmax}}]}}
""")
    return p


def test_set_from_the_other_direction(tmp_path):
    cfg = load_config(_config(tmp_path, f"""\
    balanced: {{split: calibration, n: 64, sampler: {{name: lang_balanced}}}}
    english: {{split: calibration, n: 64, sampler: {{name: lang_balanced}}, manifest: {EN_XX}}}
    latin: {{split: calibration, n: 30, sampler: {{name: lang_balanced, languages: [de, fr, es]}}}}"""))
    data = load_data(cfg)
    bal, eng = data["calib_sets"]["balanced"], data["calib_sets"]["english"]
    # Same sampler, same seed, same pool rows: the same ids, with text and reference swapped.
    assert [s.id for s in bal] == [s.id for s in eng]
    rows = pd.read_parquet(ROOT / "datasets/debian_multi/calibration.parquet").set_index("id")
    for b, e in zip(bal, eng):
        assert (b.text, b.reference) == (rows.loc[b.id, "xx"], rows.loc[b.id, "en"])
        assert (e.text, e.reference) == (rows.loc[b.id, "en"], rows.loc[b.id, "xx"])
        assert b.language == e.language == rows.loc[b.id, "lang"]
    assert {s.language for s in data["calib_sets"]["latin"]} == {"de", "fr", "es"}
    sets = data["entry"]["calibration_sets"]
    assert sets["english"]["manifest"] == str(EN_XX)
    assert "manifest" not in sets["balanced"]
    import yaml
    recorded = yaml.safe_load(EN_XX.read_text())["sha256"]["debian_multi/calibration.parquet"]
    assert sets["english"]["sha256"]["calibration"] == recorded
    # The statistics of the two sets must not share a cache entry although their ids are equal.
    tensors = ["a", "b"]
    k_bal = cache_key("m", sample_keys(bal, ">>en<< "), tensors, 128, 32)
    k_eng = cache_key("m", sample_keys(eng, ">>en<< "), tensors, 128, 32)
    assert k_bal != k_eng
    assert k_bal == cache_key("m", sample_keys(list(bal), ">>en<< "), tensors, 128, 32)


def test_sample_keys_follow_every_input():
    s = Sample(id="1", text="Save", reference="Speichern", language="de")
    base = sample_keys([s], ">>de<< ")
    assert base[0].startswith("1:")
    changed = [Sample(id="1", text="Save.", reference="Speichern", language="de"),
               Sample(id="1", text="Save", reference="Sichern", language="de"),
               Sample(id="1", text="Save", reference="Speichern", language="fr")]
    assert all(sample_keys([c], ">>de<< ") != base for c in changed)
    assert sample_keys([s], ">>fr<< ") != base
    assert sample_keys([s], ">>de<< ") == base


def test_missing_set_manifest_is_one_line(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(_config(tmp_path, f"""\
    english: {{split: calibration, n: 8, manifest: {tmp_path / 'nope.yaml'}}}"""))
    assert str(e.value) == (f"{tmp_path / 'sweep.yaml'}: data.calibration_sets.english.manifest: file not found: "
                            f"{tmp_path / 'nope.yaml'}")
