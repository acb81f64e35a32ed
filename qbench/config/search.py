"""The ``search:`` section of a sweep config (``exclude: auto``).

Kept out of qbench.config.schema (its one place of validation imports this model) so that file stays small.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SearchCfg(BaseModel):
    """``exclude: auto``: rank quantizable units by sensitivity, then exclude the most sensitive until the
    gate holds on a scoring subset; confirmed by the variant's evaluation on the full evaluation set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    granularity: Literal["block", "node"] = Field(
        "block", description="block: nodes grouped by transformer sub-block (attention, FFN, lm_head); node: each")
    split: str = Field("calibration", description="where the scoring subset comes from; calibration samples "
                                                 "and evaluation samples are left out of it")
    n: int | None = Field(None, ge=2, description="scoring subset size (retrieval, or languages pooled)")
    n_per_language: int | None = Field(16, ge=1, description="translation, causal_lm: scoring samples per "
                                          "language (causal_lm: domain)")
    seed: int = Field(0, description="draws the scoring subset")
    rank_n: int | None = Field(None, ge=2, description="the ranking scores each unit on the first rank_n samples "
                               "of the scoring subset (fidelity converges on far fewer samples than the gate's "
                               "metric); null: all of it")
    rank_n_per_language: int | None = Field(None, ge=1, description="translation, causal_lm: the ranking's "
                                            "samples per language or domain, the first of the scoring subset's; "
                                            "null: all of them")
    quantize_only: bool = Field(False, description="also score each unit quantized alone (the chart's second "
                                "marker; doubles the ranking's models)")
    task_metric: bool = Field(True, description="also score each unit's exclusion on the task metric")
    prefer: Literal["latency", "fewest_exclusions"] = Field(
        "latency", description="among candidates passing the gate: the fastest measured, or the fewest excluded")
    screen: Literal["projected", "point", "none"] = Field(
        "projected", description="which candidates pass on the scoring subset: projected, those whose interval "
        "decision there, its bound narrowed by sqrt(n_subset / n_evaluation), predicts PASS on the evaluation set "
        "(where the task's scorer has per-sample statistics; else point); point, those whose drop is within budget; "
        "none, no subset screen: each candidate (all-INT8 first) is confirmed on the evaluation set, at most "
        "max_confirmations, for per-language budgets a small subset cannot resolve")
    max_evaluations: int = Field(24, ge=2, description="gate evaluations on the scoring subset, at most")
    max_confirmations: int = Field(4, ge=1, description="candidates checked on the full evaluation set, at most")
    units: list[str] = Field([], description="regular expressions: search only the units whose id matches "
                                            "(the rest stay INT8); empty = every unit")
