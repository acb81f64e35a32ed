"""The ``lm:`` section of a sweep config: what the causal_lm task prompts, times and calibrates with.

Kept out of qbench.config.schema (its one place of validation imports this model) so that file stays small.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LmCfg(BaseModel):
    """causal_lm: generation prompts, the decode steps timed after a prefill, decode-shaped calibration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt_tokens: int = Field(16, ge=1, le=1024, description="tokens of each greedy-generation prompt: the start "
                                                             "of an evaluation segment")
    prompts: int | None = Field(32, ge=1, description="evaluation segments whose starts are generation prompts "
                                                     "(the first n, in file order); null = all")
    latency_new_tokens: int = Field(8, ge=1, le=1024, description="decode steps timed after each latency prefill "
                                                                 "(the prompt is model.max_length tokens)")
    calibration_decode_steps: int = Field(4, ge=0, le=256, description="decode-shaped calibration: per calibration "
                                          "batch, this many single-token steps through the cache, teacher-forced "
                                          "on the text (0: prefill shapes only)")
