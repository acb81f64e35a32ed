"""The sweep config: a strict schema, validated in one place before any model loads.

Every problem becomes ``ConfigError('<file>: <key.path>: <message>')``: one line each, no traceback.
Calibrator and sampler parameters are validated here too, through their registered classes.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from qbench.config.errors import ConfigError, one_line
from qbench.config.lm import LmCfg
from qbench.config.search import SearchCfg  # noqa: F401 (re-exported: the sweep config's search section)
from qbench.config import external
from qbench.config.bias_correction import BiasSweepFields, BiasVariantField, bias_problems
from qbench.config.deploy import DeploySweepFields, DeployVariantFields
from qbench.config.external import ForeignSweepFields
from qbench.config.formats import FormatSweepFields, FormatVariantField, format_problems
from qbench.config.messages import _loc, format_errors
from qbench.config.transforms import TransformCfg, expand_transforms
from qbench.util.io import read_yaml_mapping


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelCfg(Strict):
    source: str = Field(description="pkg:<python package>, a local directory, or a Hugging Face hub id (causal_lm "
                                    "also: a .gguf file, or a folder or package holding one); or an "
                                    "ONNX model: a .onnx file (retrieval), or a folder holding encoder.onnx and "
                                    "decoder.onnx (translation), used as is (docs/onnx-models.md)")
    tokenizer: str | None = Field(None, description="with an ONNX model.source: the folder holding its "
                                                    "tokenizer.json, or that file (default: the model's folder)")
    pooling: Literal["mean", "cls"] = Field("mean", description="retrieval: how token states become one vector")
    max_length: int = Field(128, ge=8, le=4096, description="tokens per input; longer inputs are truncated")
    source_prefix: str = Field("", description="translation: put before every source, '{lang}' = the sample's "
                                               "language (multilingual models: '>>{lang}<< ')")
    opset: int = Field(17, ge=13, le=21, description="ONNX opset of the export (cached per opset)")


class CalibSetCfg(Strict):
    split: str = Field("calibration", description="a split name of the dataset manifest")
    n: int = Field(512, ge=1, description="samples drawn by the sampler")
    seed: int = Field(0, description="the sampler's seed")
    sampler: dict[str, Any] = Field({"name": "random"}, description="{name: ..., <sampler parameters>}")
    manifest: str | None = Field(None, description="draw this set from another dataset manifest (relative to the "
                                                   "config file), e.g. the other direction's; default: data.manifest")


class EvalSetCfg(Strict):
    split: str = Field("evaluation", description="a split name of the dataset manifest")
    n: int | None = Field(None, ge=2, description="first n samples of the split; null = all")
    n_per_language: int | None = Field(None, ge=1, description="then at most this many per language, in file order")


class DataCfg(Strict):
    manifest: str = Field(description="the dataset manifest (YAML), relative to the config file")
    calibration: CalibSetCfg = CalibSetCfg()
    calibration_sets: dict[str, CalibSetCfg] = Field(
        {}, description="named calibration sets crossed in the grid; replaces `calibration` when given")
    evaluation: EvalSetCfg = EvalSetCfg()

    def sets(self) -> dict[str, CalibSetCfg]:
        return dict(self.calibration_sets) or {"default": self.calibration}


class CalibrationCfg(Strict):
    batch_size: int = Field(32, ge=1, description="samples per batch of the statistics pass")
    histogram_bins: int = Field(2048, ge=128, le=1 << 16, description="bins of the activation histograms "
                                "(entropy, percentile, MSE calibrators)")
    histogram: Literal["lattice", "trt"] = Field(
        "lattice", description="lattice: one pass, power-of-two bins; trt: two passes, bins over [0, absmax] as TensorRT")
    weights: dict[str, Any] = Field({"name": "per_channel"}, description="weight rule: per_channel | per_tensor")
    decoder_targets: Literal["reference", "fp32_greedy"] = Field(
        "reference", description="translation: the decoder is calibrated by teacher forcing on these targets")


class ExclusionCfg(Strict):
    op_types: list[str] = Field([], description="ONNX op types whose nodes stay float, e.g. [Softmax]")
    names: list[str] = Field([], description="regular expressions matched against node names")
    roles: list[Literal["layernorm", "softmax", "embeddings", "lm_head", "mlp_gate", "attention_probs"]] = Field(
        [], description="structural roles (qbench.quantize.roles); attention_probs is the old name of softmax")
    only: list[str] = Field([], description="if given, only MatMul/Gemm nodes matching one of these regular "
                                            "expressions are quantized (the rest stay float, their tensors untouched)")


class VariantCfg(FormatVariantField, DeployVariantFields, BiasVariantField, Strict):  # format; float_dtype,
    # ort_form (deploy.py); bias_correction (bias_correction.py)
    calibrator: dict[str, Any] = Field(description="{name: ..., <calibrator parameters>} (qbench ls calibrators)")
    exclusion: str = Field("none", description="an exclusion set name, a role name, or auto")
    flavor: Literal["s8s8", "u8s8"] = Field("s8s8", description="activation/weight integer types")
    calibration_set: str | None = Field(None, description="a data.calibration_sets name; default: the first set")
    transform: TransformCfg = Field(TransformCfg(), description="{name: none | smoothquant, alpha: ...}")
    embeddings: Literal["float", "int8"] = Field("float", description="int8: weight-only INT8 Gather tables, per row")

    @field_validator("transform", mode="before")
    @classmethod
    def _transform_name(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v


ROLE_NAMES = ("layernorm", "softmax", "embeddings", "lm_head", "mlp_gate")


class SweepCfg(ForeignSweepFields, FormatSweepFields, DeploySweepFields, BiasSweepFields, Strict):  # baselines,
    # external; formats; float_dtypes: qbench.config.deploy; bias_correction: qbench.config.bias_correction
    calibrators: list[dict[str, Any]] = Field([{"name": "minmax"}], description="{name: ..., <parameters>} each; "
                                              "crossed in the grid (qbench ls calibrators)")
    exclusion_sets: dict[str, ExclusionCfg] = Field({}, description="named exclusion sets; 'none' is built in")
    exclusions: list[str] = Field(["none"], description="exclusion set names crossed in the grid; a role name "
                                  "(layernorm, softmax, embeddings, lm_head, mlp_gate) or a list of them needs no definition")
    flavors: list[Literal["s8s8", "u8s8"]] = Field(["s8s8"], description="s8s8: INT8 activations and weights "
                                                   "(TensorRT); u8s8: UINT8 activations (ONNX Runtime CPU's fast path)")
    transforms: list[TransformCfg] = Field(["none"], validate_default=True, description="graph transforms crossed in the grid: "
                                           "none, {name: smoothquant, alpha: 0.5, a list, or one per group} (docs/smoothquant.md)")
    embeddings: list[Literal["float", "int8"]] = Field(["float"], description="embedding tables crossed in the grid: "
                                                       "float, or int8 (weight-only, one scale per row)")
    extra: list[VariantCfg] = Field([], description="single variants outside the grid")
    fp16_keep_fp32: ExclusionCfg = Field(
        ExclusionCfg(roles=["layernorm", "softmax"]),
        description="the fp16 baseline keeps these nodes in FP32 (as ModelOpt's AutoCast keeps reductions)")

    @model_validator(mode="before")
    @classmethod
    def _role_shorthand(cls, data: Any) -> Any:
        """``exclusions: [none, [layernorm, softmax], lm_head]``: role names stand for their own set.

        The set is named by its roles joined with '+', so ``[layernorm, softmax]`` becomes
        ``layernorm+softmax``; a set the user defined under that name wins.
        """
        if not isinstance(data, dict) or not isinstance(data.get("exclusion_sets") or {}, dict):
            return data  # not a mapping: the fields' own validation says so, with the key path
        sets = dict(data.get("exclusion_sets") or {})

        def name_of(item: Any) -> Any:
            roles = [item] if isinstance(item, str) else item
            if not (isinstance(roles, list) and roles and all(isinstance(r, str) and r in ROLE_NAMES for r in roles)):
                if isinstance(item, list):
                    raise ValueError(f"a list in exclusions holds role names ({', '.join(ROLE_NAMES)}); got {item}")
                return item
            name = "+".join(roles)
            if name not in sets and name != "none":
                sets[name] = {"roles": roles}
            return name

        out = dict(data)
        if isinstance(data.get("exclusions"), list):
            out["exclusions"] = [name_of(x) for x in data["exclusions"]]
        if isinstance(data.get("extra"), list):
            out["extra"] = [{**x, "exclusion": name_of(x["exclusion"])} if isinstance(x, dict) and "exclusion" in x
                            else x for x in data["extra"]]
        if sets:
            out["exclusion_sets"] = sets
        return out

    @field_validator("transforms", mode="before")
    @classmethod
    def _alpha_lists(cls, v: Any) -> Any:
        return expand_transforms(v)

    @field_validator("baselines")
    @classmethod
    def _fp32_first(cls, v: list[str]) -> list[str]:
        if "fp32" not in v:
            raise ValueError("must include 'fp32': every change is measured against it")
        return v

    def exclusion(self, name: str) -> ExclusionCfg:
        # 'auto' starts from nothing excluded; the search (qbench.run.search) decides the rest.
        return ExclusionCfg() if name in ("none", "auto") else self.exclusion_sets[name]


class BackendCfg(Strict):
    name: Literal["ort"] = Field("ort", description="the backend that evaluates and times variants")
    threads: int = Field(2, ge=1, description="intra-op threads of each ONNX Runtime session")


class LatencyCfg(Strict):
    batch_sizes: list[int] = Field([1, 32], description="one latency measurement per batch size")
    warmup: int = Field(3, ge=0, description="untimed runs per variant before each round")
    runs: int = Field(10, ge=1, description="timed runs per variant per round")
    rounds: int = Field(5, ge=1, description="round-robin rounds over all variants")


class MeasureCfg(Strict):
    eval_batch_size: int = Field(32, ge=1, description="retrieval: samples per batch of the evaluation")
    latency: LatencyCfg = LatencyCfg()


class GenerationCfg(Strict):
    """translation: how every variant decodes (the same for all, so quality differences are the variant's)."""

    num_beams: int = Field(1, ge=1, le=16, description="1: greedy decoding")
    max_new_tokens: int = Field(128, ge=1, le=1024, description="generated tokens per output, at most")
    batch_size: int = Field(32, ge=1, description="sources decoded together")
    workers: int = Field(1, ge=1, le=256, description=(
        "processes decoding one variant's evaluation set, each with backend.threads threads; the batches are "
        "those of one process, so the outputs are too"))


class GateCfg(Strict):
    """Per variant: PASS when a paired-bootstrap interval shows the drop against FP32 of ``metric`` within
    ``max_drop``, FAIL when it shows it beyond, else INCONCLUSIVE (qbench.report.decision)."""

    metric: Literal["bleu", "chrf", "accuracy_at_1", "perplexity"] = Field(
        "bleu", description="translation: bleu or chrf; retrieval: accuracy_at_1; causal_lm: perplexity")
    max_drop: float = Field(1.0, ge=0, description="BLEU/chrF points, percentage points of accuracy@1, or for "
                                                   "perplexity (lower is better) its rise in percent")
    per: Literal["lang", "all"] = Field("lang", description="lang: every language (causal_lm: domain) must hold; "
                                        "all: the mean only (perplexity: of the pooled set)")
    # The decision (qbench.report.decision): three states from paired-bootstrap intervals, error-controlled.
    alpha: float = Field(0.05, gt=0, lt=1, description="chance of any wrong PASS or FAIL, over all languages gated")
    correction: Literal["holm", "bonferroni"] = Field("holm", description="error control over languages")
    resamples: int = Field(2000, ge=100, description="paired-bootstrap resamples per language")
    seed: int = Field(0, description="draws the bootstrap resamples")


class TensorRTCfg(Strict):
    """Also build every variant as a TensorRT engine (build-only where no supported GPU exists)."""

    compute_capability: Literal["SM75", "SM80", "SM86", "SM89", "SM120"] = Field(
        "SM89", description="TensorRT-RTX's build target; full TensorRT builds for the GPU it runs on")
    build_timeout_s: int = Field(900, ge=10, description="a build still running after this fails its variant")
    int8_mode: Literal["explicit", "implicit"] = Field(
        "explicit", description="explicit: the QDQ ONNX, strongly typed (TensorRT >= 10, TensorRT-RTX); implicit: "
                                "TensorRT <= 10 only, the FP32 ONNX plus qbench's table as a calibration cache "
                                "(exclusions do not apply; unverified here)")


class ExecutorCfg(Strict):
    """Where variants run. ``isolate``: each variant's build and evaluation in a child process, so that a
    crash, a hang or running out of memory fails that variant only. ``workers``: several variants at once
    (each in its own child). ``kind: ray``: each variant a Ray task on a cluster; ``output.cache_dir`` and
    the run directory must then be on a filesystem every node shares. Changing this section never blocks
    ``--resume``."""

    kind: Literal["local", "ray"] = Field("local", description="local: this machine (one variant after another, "
                                          "or a pool of `workers` children); ray: Ray tasks on a cluster "
                                          "(pip install \"qbench-workbench[ray]\"); `qbench sweep --executor` "
                                          "overrides it")
    isolate: bool = Field(False, description="run each variant in a child process (costs the child's start-up, "
                                             "about a second per variant on a small model); always on with "
                                             "workers > 1 or ray")
    workers: int | None = Field(None, ge=1, description="variants at once. local: N > 1 runs a pool of N child "
                                                        "processes (null: 1); ray: at most N tasks in flight "
                                                        "(null: all, the cluster's resources decide)")
    timeout_s: int | None = Field(None, ge=1, description="with isolate, workers or ray: a variant still running "
                                                         "after this fails (null: no limit)")
    memory_mb: int | None = Field(None, ge=256, description="with isolate, workers or ray: the child's address-space "
                                                           "limit (RLIMIT_AS; null: no limit); ray also requests "
                                                           "it as the task's memory")
    address: str | None = Field(None, description="ray: the cluster to join: auto (the one `ray start` runs on "
                                                  "this machine, or RAY_ADDRESS), HOST:PORT of its head, or null "
                                                  "(RAY_ADDRESS if set, else a private Ray instance on this "
                                                  "machine for this sweep)")
    cpus_per_job: float | None = Field(None, gt=0, description="ray: CPUs each variant's task requests "
                                                               "(num_cpus; null: backend.threads, the threads "
                                                               "its ONNX Runtime sessions run)")
    gpus_per_job: float = Field(0, ge=0, description="ray: GPUs each variant's task requests (num_gpus); Ray pins "
                                                     "CUDA_VISIBLE_DEVICES per task and the variant's child "
                                                     "inherits it")


class OutputCfg(Strict):
    dir: str = Field("reports", description="runs are written to <dir>/<name>/<run id>/")
    cache_dir: str = Field(".qbench-cache", description="exports, statistics and QDQ artifacts, reused by content "
                                                      "key (env QBENCH_CACHE overrides)")


class SweepConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="the sweep's name: the run directory's parent")
    task: str = Field("retrieval", description="what the model does, and so how variants are evaluated: "
                      "`retrieval`, `translation`, `causal_lm`, or a task a plugin registers (entry-point group "
                      "`qbench.tasks`)")
    model: ModelCfg
    data: DataCfg
    calibration: CalibrationCfg = CalibrationCfg()
    sweep: SweepCfg = SweepCfg()
    backend: BackendCfg = BackendCfg()
    measure: MeasureCfg = MeasureCfg()
    tensorrt: TensorRTCfg | None = None
    target: Literal["tensorrt", "ort"] | None = Field(
        None, description="what the verdict picks a variant to ship on; null: tensorrt when a tensorrt section "
                          "exists, else ort")
    generation: GenerationCfg = GenerationCfg()
    lm: LmCfg = LmCfg()
    gate: GateCfg | None = None
    search: SearchCfg = SearchCfg()
    executor: ExecutorCfg = ExecutorCfg()
    output: OutputCfg = OutputCfg()
    # Set by load_config, not by the user: where relative paths are resolved from.
    base_dir: str = Field("", exclude=True)

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        from qbench.config import registry

        try:
            registry.tasks.get(v)
        except ConfigError as e:  # pydantic reports ValueErrors with the key's path
            raise ValueError(str(e)) from None
        return v

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, data: Any) -> Any:
        # A task may have its own default baselines (translation leaves out ONNX Runtime's static quantizer,
        # which takes one graph); naming one it cannot run is still an error, reported with the others.
        from qbench.config import registry

        if isinstance(data, dict) and isinstance(data.get("task"), str) and data["task"] in registry.tasks.names():
            default = registry.tasks.get(data["task"]).default_baselines
            sweep = data.get("sweep", {})
            if default is not None and isinstance(sweep, dict) and "baselines" not in sweep:
                data = {**data, "sweep": {**sweep, "baselines": list(default)}}
        return data

    def manifest_path(self, relative: str | None = None) -> Path:
        """The data manifest, or another one (a calibration set's ``manifest``), resolved against the config."""
        return (Path(self.base_dir) / (relative or self.data.manifest)).resolve()

    def model_source(self) -> str:
        """The model source with a relative local path resolved against the config's folder."""
        src = self.model.source
        # an existing file too: a .onnx model source (qbench.config.onnx_source)
        if src.startswith((".", "~")) or (not src.startswith("pkg:") and (Path(self.base_dir) / src).exists()):
            return str((Path(self.base_dir) / Path(src).expanduser()).resolve())
        return src


def _check_plugins(cfg: SweepConfig, file: str) -> list[str]:
    """Instantiate every calibrator and sampler once, so bad parameters fail before any model loads."""
    from qbench.config import registry

    problems: list[str] = []
    entries = [(("sweep", "calibrators", i), c) for i, c in enumerate(cfg.sweep.calibrators)]
    entries += [(("sweep", "extra", i, "calibrator"), v.calibrator) for i, v in enumerate(cfg.sweep.extra)]
    for loc, spec in entries:
        problems += _instantiate(registry.calibrators, spec, loc, file)
    if cfg.data.calibration_sets and "calibration" in cfg.data.model_fields_set:
        problems.append(f"{file}: data.calibration: give either data.calibration or data.calibration_sets, not both")
    for name, cs in cfg.data.sets().items():
        loc = ("data", "calibration_sets", name) if cfg.data.calibration_sets else ("data", "calibration")
        problems += _instantiate(registry.samplers, cs.sampler, loc + ("sampler",), file)
        if cs.manifest is not None and not cfg.manifest_path(cs.manifest).is_file():
            problems.append(f"{file}: {_loc(loc + ('manifest',))}: file not found: {cfg.manifest_path(cs.manifest)}")
    for i, v in enumerate(cfg.sweep.extra):
        if v.calibration_set is not None and v.calibration_set not in cfg.data.sets():
            problems.append(f"{file}: {_loc(('sweep', 'extra', i, 'calibration_set'))}: unknown calibration set "
                            f"'{v.calibration_set}' (defined: {', '.join(cfg.data.sets())})")
    problems += _instantiate(registry.weight_rules, cfg.calibration.weights, ("calibration", "weights"), file)
    problems += _check_task(cfg, file)
    problems += [f"{file}: {p}" for p in external.problems(cfg)]
    known = ["none", "auto", *cfg.sweep.exclusion_sets]
    uses_auto = "auto" in cfg.sweep.exclusions or any(v.exclusion == "auto" for v in cfg.sweep.extra)
    if uses_auto and cfg.gate is None:
        problems.append(f"{file}: sweep.exclusions: 'auto' searches for the fastest variant within the gate's "
                        "budget; add a gate section (e.g. gate: {metric: bleu, max_drop: 1.0, per: lang})")
    refs = [(("sweep", "exclusions", i), x) for i, x in enumerate(cfg.sweep.exclusions)]
    refs += [(("sweep", "extra", i, "exclusion"), v.exclusion) for i, v in enumerate(cfg.sweep.extra)]
    for loc, name in refs:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (defined: {', '.join(known)})"
            problems.append(f"{file}: {_loc(loc)}: unknown exclusion set '{name}'{hint}")
    return problems


def _check_task(cfg: SweepConfig, file: str) -> list[str]:
    """Settings that only some tasks understand: the task says (qbench.tasks.base.Task.check_config)."""
    from qbench.config import registry

    return (registry.tasks.get(cfg.task)().check_config(cfg, file) + format_problems(cfg, file)
            + bias_problems(cfg, file))


def _instantiate(reg, spec: dict, loc: tuple, file: str) -> list[str]:
    spec = dict(spec)
    name = spec.pop("name", None)
    if not isinstance(name, str):
        return [f"{file}: {_loc(loc + ('name',))}: required key is missing"]
    try:
        cls = reg.get(name)
    except ConfigError as e:
        return [f"{file}: {_loc(loc + ('name',))}: {e}"]
    try:
        cls(**spec)
    except ValidationError as e:
        return format_errors(e, file, cls, loc)
    return []


def build_plugin(reg, spec: dict):
    spec = dict(spec)
    return reg.get(spec.pop("name"))(**spec)


def load_config(path: str | Path) -> SweepConfig:
    path = Path(path)
    file = str(path)
    raw = read_yaml_mapping(path, "config file")
    bad = [k for k in raw if not isinstance(k, str)]  # YAML allows null, number and list keys
    if bad:
        raise ConfigError(one_line(f"{file}: {str(bad[0])[:40]!r}: unknown key (keys are names, e.g. 'model')"))
    if "base_dir" in raw:
        raise ConfigError(f"{file}: base_dir: unknown key")
    try:
        cfg = SweepConfig(**raw, base_dir=str(path.resolve().parent))
    except ValidationError as e:
        raise ConfigError("\n".join(map(one_line, format_errors(e, file, SweepConfig)))) from None
    problems = _check_plugins(cfg, file)
    from qbench.config import onnx_source, registry
    from qbench.config.errors import ModelError
    from qbench.models.export import resolve_source

    try:
        if onnx_source.kind(cfg) is not None:  # an ONNX model, used as is: its own checks (one line each)
            problems += [f"{file}: {p}" for p in onnx_source.problems(cfg)]
        else:
            # local paths and pkg: sources are checked now, hub ids at load time; a task may resolve its own kinds
            getattr(registry.tasks.get(cfg.task), "resolve_source", resolve_source)(cfg.model_source())
    except ModelError as e:
        problems.append(f"{file}: model.source: {e}")
    except (OSError, ValueError, RuntimeError) as e:  # a NUL byte, a name too long, an unknown ~user
        problems.append(f"{file}: model.source: not a usable path ({e})")
    try:
        if not cfg.manifest_path().is_file():
            problems.append(f"{file}: data.manifest: file not found: {cfg.manifest_path()}")
    except (OSError, ValueError, RuntimeError) as e:
        problems.append(f"{file}: data.manifest: not a usable path ({e})")
    if problems:  # one line each: a key or name with a line break in it cannot split one in two
        raise ConfigError("\n".join(map(one_line, problems)))
    return cfg
