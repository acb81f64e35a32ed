"""The command line's habits: examples under every --help, the progress flags, `qbench ls`, the config reference."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from qbench import cli
from qbench.util import progress
from qbench.config import registry
from qbench.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def _subcommands() -> list[str]:
    sub = next(a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices)


def test_every_subcommand_has_examples(capsys):
    assert set(_subcommands()) == set(cli.COMMANDS)
    assert "Examples:" in _help(capsys)
    for cmd in _subcommands():
        out = _help(capsys, cmd)
        examples = out[out.index("Examples:"):]
        assert re.search(rf"^  qbench {cmd}\b", examples, re.M), (cmd, out)


def test_help_examples_name_files_that_exist():
    """The example configs and committed runs the help texts name are real (placeholders use <...>)."""
    text = cli.EPILOG + "".join(ex for _, ex in cli.COMMANDS.values())
    paths = set(re.findall(r"(?<!\S)((?:examples|reports)/[^\s<>']+)", text))
    assert paths
    for p in paths:
        assert (ROOT / p).exists(), p


def test_sweep_help_lists_the_progress_flags(capsys):
    out = _help(capsys, "sweep")
    assert "--no-progress" in out and "--quiet" in out


@pytest.mark.parametrize("flags, bars, quiet", [([], None, False), (["--no-progress"], False, False),
                                                (["--quiet"], False, True), (["-q"], False, True)])
def test_sweep_flags_reach_progress(monkeypatch, capsys, flags, bars, quiet):
    seen = {}

    def fake_run_sweep(cfg, out, **kw):
        seen.update(bars=progress._bars, quiet=progress._quiet)
        return Path("reports/x/run")

    monkeypatch.setattr("qbench.run.sweep.run_sweep", fake_run_sweep)
    assert main(["sweep", str(ROOT / "examples" / "minilm-retrieval.yaml"), *flags]) == 0
    assert seen == {"bars": bars, "quiet": quiet}
    assert capsys.readouterr().out.strip() == str(Path("reports/x/run"))
    assert (progress._bars, progress._quiet) == (None, False)  # reset for whatever runs next in-process


def _ls(capsys, kind: str) -> dict[str, str]:
    assert main(["ls", kind]) == 0
    return {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}


@pytest.mark.parametrize("kind, reg, name, param", [
    ("calibrators", registry.calibrators, "percentile", "percentile: number = 99.99"),
    ("calibrators", registry.calibrators, "table", "path: string (required)"),
    ("samplers", registry.samplers, "length_stratified", "strata: integer = 4"),
    ("samplers", registry.samplers, "single_language", "language: string (required)"),
    ("backends", registry.backends, "ort", "threads: integer = 2"),
    ("weights", registry.weight_rules, "per_channel", "(no parameters)"),
])
def test_ls_lists_every_registered_name_with_its_parameters(capsys, kind, reg, name, param):
    lines = _ls(capsys, kind)
    assert set(lines) == set(reg.names())
    assert param in lines[name]


def test_ls_metrics_lists_the_metrics_and_their_settings(capsys):
    lines = _ls(capsys, "metrics")
    assert set(lines) == {m[0] for m in cli.metric_catalogue()}
    assert {"accuracy_at_1", "bleu", "chrf", "latency_p50_ms", "gate"} <= set(lines)
    assert "max_ngram_order: integer = 4" in lines["bleu"] and "smooth_method: string = exp" in lines["bleu"]
    assert "beta: integer = 2" in lines["chrf"]
    assert "measure.latency.runs: integer = 10" in lines["latency_p50_ms"]
    assert "gate.max_drop: number = 1.0" in lines["gate"]
    assert "resamples: integer = 1000" in lines["delta_bleu"]


def test_config_reference_prints_the_generated_reference(capsys):
    from qbench.config.doc import render

    assert main(["config-reference"]) == 0
    assert capsys.readouterr().out == render()
