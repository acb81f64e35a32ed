"""The task contract: everything task-specific the runner, the search, the executors and the report ask a task,
so that none of them names a task (after lm-evaluation-harness's ``Task`` and NNCF's algorithm/backend split).

A task is a class registered under ``task:`` names (built-ins in ``qbench.config.registry.tasks``, third parties
through the entry-point group ``qbench.tasks``). Its methods take the sweep's context ``ctx`` (``qbench.run.context``):
the config, the FP32 artifact, the tokenizer, the sampled data sets, the manifest being written, and
``ctx.fp32_ref``, the task's own record of FP32's evaluation that later variants are compared with.

What a task provides, in pipeline order:

- ``components``: the graphs of one artifact ("model"; "encoder" + "decoder"); ``prepare_model`` exports or
  loads them (sets ``ctx.fp32``, ``ctx.tokenizer``) and returns the manifest's model entry;
- ``ensure_stats``: the calibration batches of each component, through one statistics pass per set (cached);
- ``build_variant``: a variant's artifact from its tables and exclusions, and what the manifest records of it;
- ``evaluate``: a built variant's metric tuples ``(metric, slice, value, unit)``; per-sample rows go to
  ``ctx.sample_frames`` (samples.parquet) for paired resampling;
- ``latency_texts`` / ``encode`` / ``latency_session``: what latency is timed on, its feeds, and what one
  timed call does (one forward pass; a whole translation);
- ``scorer``: the fidelity scorer of the sensitivity search (``score``, ``full_quality``, ``base_quality``);
- ``dim_ranges`` / ``gpu_latency_rows``: TensorRT's optimization profile and latency of built engines;
- ``leaderboard`` / ``report_context`` / ``markdown_table``: the report's rows and the sections the task adds.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar


class Task:
    """Defaults fit a task whose artifact is one ONNX graph scored by one overall quality metric."""

    name: ClassVar[str] = ""
    components: ClassVar[tuple[str, ...]] = ("model",)
    # The overall quality metric, a fraction in [0, 1] (its change is shown in percentage points): (metric, label)
    quality: ClassVar[tuple[str, str]] = ("quality", "quality")
    short_label: ClassVar[str] = "quality"      # its column header
    plot_title: ClassVar[str] = "Quality against latency"
    item_noun: ClassVar[str] = "samples"        # what one evaluation item is, in the report's words
    layout: ClassVar[str] = "single"            # the report's layout: "single" (one score) or "languages"
    fidelity_label: ClassVar[str] = "rel. MSE"  # what the search's error is, in the report's words
    per_language: ClassVar[bool] = False        # the search's scoring subset is capped per language
    needs_reference: ClassVar[bool] = True      # evaluation samples must carry a reference (the data's check)

    default_baselines: ClassVar[tuple[str, ...] | None] = None  # sweep.baselines when the config names none
    formats: ClassVar[frozenset[str]] = frozenset({"int8"})    # the sweep.formats it builds (docs/formats.md)
    bias_correction: ClassVar[bool] = False  # builds sweep.bias_correction (qbench.quantize.bias_correction)

    def check_config(self, cfg, file: str) -> list[str]:
        """Problems with settings this task cannot honour, one ``<file>: <key>: <problem>`` line each."""
        return []

    # ----------------------------------------------------------------------------------------- the model

    def prepare_model(self, ctx, sha256: str | None = None) -> dict:
        """Export or load the FP32 model (cached), set ``ctx.fp32`` and ``ctx.tokenizer``; the manifest's
        model entry (``sha256``: the artifact's hash, where the caller already has it)."""
        raise NotImplementedError

    def artifact_sha256(self, artifact: Path) -> str:
        """A variant's identity: its artifact's hash."""
        from qbench.data.manifest import sha256_file

        return sha256_file(artifact)

    def graphs(self, artifact: Path) -> dict[str, Path]:
        """component -> ONNX file of one artifact."""
        return {"model": Path(artifact)}

    def fp32_models(self, ctx) -> dict:
        """component -> the FP32 ModelProto (parsed once per sweep)."""
        return {"model": ctx.fp32_model()}

    # ------------------------------------------------------------------------------ calibration and build

    def ensure_stats(self, ctx, set_name: str) -> dict:
        raise NotImplementedError

    def build_variant(self, ctx, v, out_dir: Path | None = None) -> tuple[Path, dict]:
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------- evaluation

    def evaluate(self, ctx, v, artifact: Path) -> list[tuple[str, str, float, str]]:
        raise NotImplementedError

    def encode(self, ctx, texts: list[str]) -> dict:
        """The model's feeds for a batch of texts (latency batches): the tokenizer's by default."""
        return ctx.tokenizer.encode_batch(texts)

    def latency_texts(self, ctx) -> list[str]:
        """The texts latency batches are drawn from."""
        return [s.text for s in ctx.evalset]

    def latency_session(self, ctx, artifact: Path):
        """What latency code times for one variant (a Session: ``infer``, ``close``)."""
        from qbench.tasks.common import backend

        be = backend(ctx)
        return be.open(be.build(artifact, ctx.run_dir))

    def scorer(self, ctx, subset: list):
        """The search's fidelity scorer on the scoring subset."""
        raise NotImplementedError(f"task '{self.name}' has no sensitivity scorer: exclude: auto is not available")

    # ------------------------------------------------------------------------------------------- TensorRT

    def dim_ranges(self, ctx, seq_opt: int) -> dict[str, tuple[int, int, int]]:
        """(min, opt, max) of each symbolic axis the engines see (``seq_opt``: the padded latency length)."""
        cfg = ctx.cfg
        lat = cfg.measure.latency.batch_sizes
        batch = (1, max(lat), max(*lat, cfg.measure.eval_batch_size))
        return {"batch": batch, "sequence": (1, seq_opt, cfg.model.max_length)}

    def gpu_latency_rows(self, ctx, engines: dict[str, Path]) -> list[tuple[str, str, float, str]]:
        """Latency of one variant's built engines on a supported GPU: CUDA-event time of the engine alone."""
        from qbench.backends.measure import as_rows
        from qbench.backends.trt_runtime import TrtSession, gpu_latency

        lat = ctx.cfg.measure.latency
        rows = []
        with TrtSession(Path(engines["model"])) as sess:
            for b, feeds in ctx.latency_feeds.items():
                rows += as_rows(gpu_latency(sess, feeds, lat.warmup, lat.runs * lat.rounds), b)
        return rows

    # --------------------------------------------------------------------------------------------- report

    def leaderboard(self, df, manifest: dict) -> list[dict]:
        """One dict per variant, in manifest order: the numbers the report's table shows. The default: the
        task's quality metric overall and its change against FP32 (``acc``, ``delta``)."""
        from qbench.report.tables import BASELINE, _batches, _common, _values

        metric = self.quality[0]
        val = _values(df)
        base = val.get((BASELINE, metric, "all"))
        rows = []
        for vid, info in manifest["variants"].items():
            q = val.get((vid, metric, "all"))
            rows.append({**_common(vid, info, val, _batches(val)), "acc": q, "mrr": None, "cos": None,
                         "delta": None if q is None or base is None or math.isnan(q) else (q - base) * 100})
        return rows

    def report_context(self, df, manifest: dict, rows: list[dict] | None = None) -> dict:
        """What the task's own report sections need, beyond the leaderboard (the template's ``mt``; ``rows``: the
        leaderboard, as the report decided its gates)."""
        return {}

    def markdown_table(self, df, manifest: dict, rows: list[dict] | None = None) -> str:
        """The leaderboard as a Markdown table (``rows``: the leaderboard, as the report decided its gates)."""
        from qbench.report.tables import markdown_single

        return markdown_single(self, self.leaderboard(df, manifest) if rows is None else rows, manifest)
