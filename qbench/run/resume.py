"""``qbench sweep CONFIG --resume RUN_DIR``: what a killed or interrupted run already finished.

A run directory is rewritten atomically after every variant (results.parquet, manifest.json,
samples.parquet, sensitivity.parquet), so whatever a kill leaves is a complete earlier state. A variant
counts as finished only when its manifest entry says ``done``; its rows are taken back from
results.parquet and nothing of it is recomputed. Latency is measured side by side over all variants
at the end, so a resumed run measures it again for every variant (the same as an uninterrupted run
would: latency rows are never mixed across sessions).

Resuming refuses a config that changed in anything but ``output`` and ``executor`` (it names the keys), and inputs whose
content changed (the dataset files' or the FP32 model's sha256).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from qbench.config.errors import ConfigError, DataError, first_line

# Config keys that only say where things are written or how they are run: changing them does not change
# a result.
_IGNORED = {"output", "executor"}


@dataclass
class Previous:
    run_dir: Path
    manifest: dict
    rows: list[dict]
    samples: object = None                      # translation: samples.parquet as a DataFrame, or None
    sensitivity: list[dict] = field(default_factory=list)

    def finished(self, retry_failed: bool) -> dict[str, dict]:
        """Variant id -> manifest entry of every variant not to run again."""
        return {vid: e for vid, e in self.manifest.get("variants", {}).items()
                if e.get("done") and not (retry_failed and e.get("status") == "failed")}


def read_manifest(run_dir: Path, if_missing: str, if_unreadable: str) -> dict:
    """A run directory's manifest.json, parsed: a ConfigError when there is none (not a run directory), a
    DataError when it does not parse. The hints end the messages: what the user can do about it."""
    path = Path(run_dir) / "manifest.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: not a qbench run directory (no manifest.json); {if_missing}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable ({e}); {if_unreadable}") from e


_MISSING, _UNREADABLE = "nothing to resume", "run the sweep again without --resume"


def load(run_dir: str | Path) -> Previous:
    import pandas as pd

    d = Path(run_dir)
    manifest = read_manifest(d, _MISSING, _UNREADABLE)
    rows: list[dict] = []
    if (d / "results.parquet").is_file():
        try:
            rows = pd.read_parquet(d / "results.parquet").to_dict("records")
        except Exception as e:  # noqa: BLE001 - any parquet failure means the same thing here
            raise DataError(f"{d / 'results.parquet'}: unreadable ({first_line(e, None)}); run the sweep "
                            "again without --resume") from e
    for tmp in d.glob(".*.tmp"):  # atomic_write's temporaries of a killed run: never complete, never read
        tmp.unlink(missing_ok=True)
    prev = Previous(d, manifest, rows)
    if (d / "samples.parquet").is_file():
        prev.samples = pd.read_parquet(d / "samples.parquet")
    if (d / "sensitivity.parquet").is_file():
        prev.sensitivity = pd.read_parquet(d / "sensitivity.parquet").to_dict("records")
    return prev


def _diff(a, b, path: str = "") -> list[str]:
    """Dotted paths where two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b), key=str):
            if not path and k in _IGNORED:
                continue
            p = f"{path}.{k}" if path else str(k)
            out += [p] if (k in a) != (k in b) else _diff(a[k], b[k], p)
        return out
    return [] if a == b else [path]


def check_config(prev: Previous, cfg, config_path: str) -> None:
    """Refuse to resume a run made from a config that differs in a way that matters."""
    old = prev.manifest.get("config")
    if old is None:
        raise ConfigError(f"{prev.run_dir}/manifest.json: records no config; cannot check it is the same run")
    changed = _diff(old, json.loads(cfg.model_dump_json()))
    if changed:
        shown = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
        raise ConfigError(f"{config_path}: cannot resume {prev.run_dir}: the config changed since that run "
                          f"({shown}); run it without --resume for a new run")


def check_inputs(prev: Previous, manifest: dict) -> None:
    """Refuse to resume when the data files or the FP32 model have other content than the run used."""
    old, new = prev.manifest, manifest
    changed = [f"data file {k}" for k, v in new["data"].get("sha256", {}).items()
               if old.get("data", {}).get("sha256", {}).get(k) not in (None, v)]
    if old.get("model", {}).get("onnx_sha256") not in (None, new["model"].get("onnx_sha256")):
        changed.append(f"model {new['model'].get('source')} (its FP32 ONNX)")
    if changed:
        raise DataError(f"{prev.run_dir}: cannot resume: changed since that run: {', '.join(changed)}; "
                        "run the sweep without --resume for a new run")


def config_file(run_dir: str | Path) -> str:
    """The config file a run was made from (recorded in its manifest), for ``--resume`` without CONFIG."""
    path = read_manifest(Path(run_dir), _MISSING, _UNREADABLE).get("config_file")
    if not path:
        raise ConfigError(f"{run_dir}/manifest.json: records no config file; give it: qbench sweep CONFIG --resume ...")
    if not Path(path).is_file():
        raise ConfigError(f"{path}: the config file of {run_dir} is gone; give it: qbench sweep CONFIG --resume ...")
    return path
