"""The shipped translation splits hold out their test sources, near-duplicates included.

A test item counts as seen when its *normalised* English (datasets/scripts/segment_key.py: case, digits,
punctuation dropped, placeholders unified) is the normalised English of any row of a training or
calibration split, in any language. These tests read the committed parquet files, so they fail as soon
as a rebuilt split leaks.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from qbench.data.manifest import load_manifest, load_split, sha256_file

DATASETS = Path(__file__).resolve().parents[2] / "datasets"
sys.path.insert(0, str(DATASETS / "scripts"))
from segment_key import normalise  # noqa: E402


# --------------------------------------------------------------------------------------- the key itself
@pytest.mark.parametrize("a, b", [
    ("Yesterday", "yesterday"),                                    # the three leaks the Django split had
    ("Dec", "Dec."),
    ("Add another %(model)s", "Add another %(verbose_name)s"),
    ("Delete %s files", "Delete {0} files"),                       # printf and Python placeholders
    ("Page $1 of $2", "Page %1 of %2"),                            # MediaWiki and Qt placeholders
    ("Saved 3 items.", "Saved 12 items!"),                         # digits and punctuation
    ("Insert  Table", "insert table"),
])
def test_near_duplicates_share_a_key(a, b):
    assert normalise(a) == normalise(b)


@pytest.mark.parametrize("a, b", [("Add", "Add another"), ("Save as", "Save"), ("Delete file", "Delete files")])
def test_different_segments_keep_different_keys(a, b):
    assert normalise(a) != normalise(b)


def test_key_golden_values():
    assert normalise("Add another %(model)s") == "add another ph"
    assert normalise("Moves to the first page (Ctrl+Home).") == "moves to the first page ctrl home"
    assert normalise("Größe: 10 %") == "größe"


def _leaks(test: pd.DataFrame, other: pd.DataFrame, col: str) -> list[str]:
    seen = {normalise(s) for s in other[col]}
    return sorted({s for s in test[col] if normalise(s) in seen})


# --------------------------------------------------------------------------------------- Django
DJ = DATASETS / "django_multi"


def test_django_test_sources_unseen_in_train_and_calibration():
    test, train, cal = (pd.read_parquet(DJ / f"{n}.parquet") for n in ("test", "train", "calibration"))
    assert len(test) >= 2500 and test.lang.nunique() == 28
    assert _leaks(test, train, "source") == []
    assert _leaks(test, cal, "source") == []
    assert _leaks(cal, train, "source") == []


def test_django_train_split_is_the_one_the_shipped_model_saw():
    # near-duplicates were dropped from test and calibration, not re-drawn, so the training split keeps the
    # sha256 recorded when examples/models/marian-django-multi was trained on it
    assert sha256_file(DJ / "train.parquet") == "bcb1db390d3fece7f202b6f8a6f8af72024924423f7142e3a1b19a7e497a8f5c"


# --------------------------------------------------------------------------------------- Debian multilingual
DM = DATASETS / "debian_multi"


@pytest.fixture(scope="module")
def prov():
    return yaml.safe_load((DM / "PROVENANCE.yaml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def dm():
    return {n: pd.read_parquet(DM / f"{n}.parquet") for n in ("test", "calibration")}


def test_debian_test_sources_unseen_in_calibration(dm):
    assert _leaks(dm["test"], dm["calibration"], "en") == []


def test_debian_training_side_check_recorded_by_the_build(prov):
    # the training split is rebuilt, not shipped: the build checks it and records the counts
    lc = prov["leak_check"]
    assert lc["test_in_train"] == 0 and lc["calibration_in_train"] == 0 and lc["test_in_calibration"] == 0
    assert lc["train_keys"] > 50_000
    assert lc["test_keys"] == dm_keys("test") and lc["calibration_keys"] == dm_keys("calibration")


def dm_keys(split: str) -> int:
    return len({normalise(s) for s in pd.read_parquet(DM / f"{split}.parquet").en})


def test_debian_rebuilt_train_split_unseen(dm):
    # where the training split has been rebuilt on this machine, check it directly too
    f = DM / "train.parquet"
    if not f.is_file():
        pytest.skip("datasets/debian_multi/train.parquet is rebuilt by datasets/scripts/extract_debian_multi.py")
    train = pd.read_parquet(f, columns=["en"])
    assert _leaks(dm["test"], train, "en") == [] and _leaks(dm["calibration"], train, "en") == []


def test_debian_sizes_scripts_and_sources(dm, prov):
    test, cal = dm["test"], dm["calibration"]
    n = test.groupby("lang").size()
    assert len(n) >= 30 and test.script.nunique() >= 8
    short = {k: int(v) for k, v in n.items() if v < 1000}
    assert short == prov["test_short_of_1000"]                  # the shortfalls the docs name
    assert len(short) <= 2
    assert (test.words >= 6).all() and (test.en.str.split().str.len() == test.words).all()
    assert cal.groupby("lang").size().min() >= 512
    # every segment names its source, and every source has a licence note
    assert set(test.source) | set(cal.source) <= set(prov["licences"])
    assert test.id.is_unique and cal.id.is_unique
    # one pair per normalised English key and language
    assert not test.assign(k=test.en.map(normalise)).duplicated(["lang", "k"]).any()


def test_debian_manifests_load_both_directions(prov):
    xe = load_manifest(DATASETS / "debian_multi_xx_en.yaml")
    ex = load_manifest(DATASETS / "debian_multi_en_xx.yaml")
    a, b = load_split(xe, "test"), load_split(ex, "test")     # also checks each file's sha256
    assert len(a) == len(b) == len(pd.read_parquet(DM / "test.parquet"))
    # the same rows, source and reference swapped
    assert all(x.id == y.id and x.text == y.reference and x.reference == y.text and x.language == y.language
               for x, y in zip(a, b))
    assert sha256_file(DM / "calibration.parquet") == prov["sha256"]["debian_multi/calibration.parquet"]
