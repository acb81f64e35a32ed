"""--resume's config check on a committed run made before later versions added config keys
(reports/benchmark-debian-calib-sets-xx-en predates search.screen, sweep.formats and sweep.float_dtypes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qbench.config.errors import ConfigError
from qbench.config.schema import load_config
from qbench.run.resume import Previous, check_config

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "reports" / "benchmark-debian-calib-sets-xx-en"
CONFIG = ROOT / "benchmarks" / "debian-calib-sets-xx-en.final.yaml"


def _prev() -> Previous:
    manifest = json.loads((RUN / "manifest.json").read_text())
    # the premise: the run's recorded config lacks keys this version's schema has
    assert "formats" not in manifest["config"]["sweep"] and "screen" not in manifest["config"]["search"]
    return Previous(RUN, manifest, [])


def test_keys_added_since_the_run_at_their_defaults_do_not_block_resume():
    check_config(_prev(), load_config(CONFIG), str(CONFIG))  # raised "the config changed" before


def test_a_changed_value_is_still_refused():
    cfg = load_config(CONFIG)
    cfg = cfg.model_copy(update={"gate": cfg.gate.model_copy(update={"max_drop": 2.0})})
    with pytest.raises(ConfigError, match=r"the config changed since that run \(gate\.max_drop\)"):
        check_config(_prev(), cfg, str(CONFIG))


def test_a_key_added_since_the_run_but_set_away_from_its_default_is_refused():
    cfg = load_config(CONFIG)
    other = "point" if cfg.search.screen != "point" else "projected"
    cfg = cfg.model_copy(update={"search": cfg.search.model_copy(update={"screen": other})})
    with pytest.raises(ConfigError, match=r"\(search\.screen\)"):
        check_config(_prev(), cfg, str(CONFIG))
