"""Metric modules for Hugging Face ``evaluate`` that ship with qbench and load offline.

``evaluate.load("bleu")`` fetches the script from the hub, which these machines cannot reach.
``evaluate.load(<dir>)`` loads ``<dir>/<dir name>.py`` from disk instead, so each metric is a folder
holding one script of the same name. evaluate imports the script by path, from a copy in its
module cache, so the folders have no __init__.py and the scripts use absolute imports only
(pyproject.toml lists the folders as packages so that the scripts ship in the wheel).
Use them through ``qbench.tasks.mt_metrics.load_metric``.
"""

from __future__ import annotations

from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent
LOCAL_METRICS = ("accuracy", "bleu", "chrf")
