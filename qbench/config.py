"""The sweep config: a strict schema, validated in one place before any model loads.

Every problem becomes ``ConfigError('<file>: <key.path>: <message>')``: one line each, no traceback.
Calibrator and sampler parameters are validated here too, through their registered classes.
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from qbench.errors import ConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelCfg(Strict):
    source: str = Field(description="pkg:<python package>, a local directory, or a Hugging Face hub id")
    pooling: Literal["mean", "cls"] = Field("mean", description="retrieval: how token states become one vector")
    max_length: int = Field(128, ge=8, le=4096)
    source_prefix: str = Field("", description="translation: put before every source, '{lang}' = the sample's "
                                               "language (multilingual models: '>>{lang}<< ')")
    opset: int = Field(17, ge=13, le=21)


class CalibSetCfg(Strict):
    split: str = "calibration"
    n: int = Field(512, ge=1)
    seed: int = 0
    sampler: dict[str, Any] = Field({"name": "random"}, description="{name: ..., <sampler parameters>}")


class EvalSetCfg(Strict):
    split: str = "evaluation"
    n: int | None = Field(None, ge=2, description="first n samples of the split; null = all")
    n_per_language: int | None = Field(None, ge=1, description="then at most this many per language, in file order")


class DataCfg(Strict):
    manifest: str
    calibration: CalibSetCfg = CalibSetCfg()
    calibration_sets: dict[str, CalibSetCfg] = Field(
        {}, description="named calibration sets crossed in the grid; replaces `calibration` when given")
    evaluation: EvalSetCfg = EvalSetCfg()

    def sets(self) -> dict[str, CalibSetCfg]:
        return dict(self.calibration_sets) or {"default": self.calibration}


class CalibrationCfg(Strict):
    batch_size: int = Field(32, ge=1)
    histogram_bins: int = Field(2048, ge=128, le=1 << 16)
    histogram: Literal["lattice", "trt"] = Field(
        "lattice", description="lattice: one pass, power-of-two bins; trt: two passes, bins over [0, absmax] as TensorRT")
    weights: dict[str, Any] = Field({"name": "per_channel"}, description="weight rule: per_channel | per_tensor")
    decoder_targets: Literal["reference", "fp32_greedy"] = Field(
        "reference", description="translation: the decoder is calibrated by teacher forcing on these targets")


class ExclusionCfg(Strict):
    op_types: list[str] = []
    names: list[str] = Field([], description="regular expressions matched against node names")
    roles: list[Literal["layernorm", "softmax", "embeddings", "lm_head", "attention_probs"]] = Field(
        [], description="structural roles (qbench.roles); attention_probs is the old name of softmax")
    only: list[str] = Field([], description="if given, only MatMul/Gemm nodes matching one of these regular "
                                            "expressions are quantized (the rest stay float, their tensors untouched)")


class VariantCfg(Strict):
    calibrator: dict[str, Any]
    exclusion: str = "none"
    flavor: Literal["s8s8", "u8s8"] = "s8s8"
    calibration_set: str | None = Field(None, description="a data.calibration_sets name; default: the first set")


Baseline = Literal["fp32", "fp16", "ort_dynamic", "ort_static"]
ROLE_NAMES = ("layernorm", "softmax", "embeddings", "lm_head")


class SweepCfg(Strict):
    baselines: list[Baseline] = ["fp32", "ort_dynamic", "ort_static"]
    calibrators: list[dict[str, Any]] = [{"name": "minmax"}]
    exclusion_sets: dict[str, ExclusionCfg] = Field({}, description="named exclusion sets; 'none' is built in")
    exclusions: list[str] = Field(["none"], description="exclusion set names crossed in the grid; a role name "
                                  "(layernorm, softmax, embeddings, lm_head) or a list of them needs no definition")
    flavors: list[Literal["s8s8", "u8s8"]] = ["s8s8"]
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
        if not isinstance(data, dict):
            return data
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

    @field_validator("baselines")
    @classmethod
    def _fp32_first(cls, v: list[str]) -> list[str]:
        if "fp32" not in v:
            raise ValueError("must include 'fp32': every change is measured against it")
        return v

    def exclusion(self, name: str) -> ExclusionCfg:
        # 'auto' starts from nothing excluded; the search (qbench.search) decides the rest.
        return ExclusionCfg() if name in ("none", "auto") else self.exclusion_sets[name]


class BackendCfg(Strict):
    name: Literal["ort"] = "ort"
    threads: int = Field(2, ge=1)


class LatencyCfg(Strict):
    batch_sizes: list[int] = [1, 32]
    warmup: int = Field(3, ge=0)
    runs: int = Field(10, ge=1, description="timed runs per variant per round")
    rounds: int = Field(5, ge=1, description="round-robin rounds over all variants")


class MeasureCfg(Strict):
    eval_batch_size: int = Field(32, ge=1)
    latency: LatencyCfg = LatencyCfg()


class GenerationCfg(Strict):
    """translation: how every variant decodes (the same for all, so quality differences are the variant's)."""

    num_beams: int = Field(1, ge=1, le=16)
    max_new_tokens: int = Field(128, ge=1, le=1024)
    batch_size: int = Field(32, ge=1)


class GateCfg(Strict):
    """Pass/fail per variant: the drop against FP32 of ``metric`` stays within ``max_drop``."""

    metric: Literal["bleu", "chrf", "accuracy_at_1"] = "bleu"
    max_drop: float = Field(1.0, ge=0, description="in points: BLEU/chrF points, or percentage points of accuracy@1")
    per: Literal["lang", "all"] = Field("lang", description="lang: every language must hold; all: the mean only")


class TensorRTCfg(Strict):
    """Also build every variant as a TensorRT engine (build-only where no supported GPU exists)."""

    compute_capability: Literal["SM75", "SM80", "SM86", "SM89", "SM120"] = Field(
        "SM89", description="TensorRT-RTX's build target; full TensorRT builds for the GPU it runs on")
    build_timeout_s: int = Field(900, ge=10)
    int8_mode: Literal["explicit", "implicit"] = Field(
        "explicit", description="explicit: the QDQ ONNX, strongly typed (TensorRT >= 10, TensorRT-RTX); implicit: "
                                "TensorRT <= 10 only, the FP32 ONNX plus qbench's table as a calibration cache "
                                "(exclusions do not apply; unverified here)")


class SearchCfg(Strict):
    """``exclude: auto``: rank quantizable units by sensitivity, then exclude the most sensitive until the
    gate holds on a scoring subset; confirmed by the variant's evaluation on the full evaluation set."""

    granularity: Literal["block", "node"] = Field(
        "block", description="block: nodes grouped by transformer sub-block (attention, FFN, lm_head); node: each")
    split: str = Field("calibration", description="where the scoring subset comes from; calibration samples "
                                                 "and evaluation samples are left out of it")
    n: int | None = Field(None, ge=2, description="scoring subset size (retrieval, or languages pooled)")
    n_per_language: int | None = Field(16, ge=1, description="translation: scoring samples per language")
    seed: int = 0
    task_metric: bool = Field(True, description="also score each unit's exclusion on the task metric")
    prefer: Literal["latency", "fewest_exclusions"] = Field(
        "latency", description="among candidates passing the gate: the fastest measured, or the fewest excluded")
    max_evaluations: int = Field(24, ge=2, description="gate evaluations on the scoring subset, at most")
    max_confirmations: int = Field(4, ge=1, description="candidates checked on the full evaluation set, at most")
    units: list[str] = Field([], description="regular expressions: search only the units whose id matches "
                                            "(the rest stay INT8); empty = every unit")


class OutputCfg(Strict):
    dir: str = "reports"
    cache_dir: str = ".qbench-cache"


class SweepConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    task: Literal["retrieval", "translation"] = "retrieval"
    model: ModelCfg
    data: DataCfg
    calibration: CalibrationCfg = CalibrationCfg()
    sweep: SweepCfg = SweepCfg()
    backend: BackendCfg = BackendCfg()
    measure: MeasureCfg = MeasureCfg()
    tensorrt: TensorRTCfg | None = None
    generation: GenerationCfg = GenerationCfg()
    gate: GateCfg | None = None
    search: SearchCfg = SearchCfg()
    output: OutputCfg = OutputCfg()
    # Set by load_config, not by the user: where relative paths are resolved from.
    base_dir: str = Field("", exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, data: Any) -> Any:
        # ONNX Runtime's static quantizer takes one graph: translation's default baselines leave it out
        # (naming it explicitly is still an error, reported with the others).
        if isinstance(data, dict) and data.get("task") == "translation":
            sweep = data.get("sweep", {})
            if isinstance(sweep, dict) and "baselines" not in sweep:
                data = {**data, "sweep": {**sweep, "baselines": ["fp32", "ort_dynamic"]}}
        return data

    def manifest_path(self) -> Path:
        return (Path(self.base_dir) / self.data.manifest).resolve()

    def model_source(self) -> str:
        """The model source with a relative local path resolved against the config's folder."""
        src = self.model.source
        if src.startswith((".", "~")) or (not src.startswith("pkg:") and (Path(self.base_dir) / src).is_dir()):
            return str((Path(self.base_dir) / Path(src).expanduser()).resolve())
        return src


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the sub-model that ``loc`` points into, for did-you-mean on unknown keys."""
    cur: Any = model
    skip_key = False
    for part in loc[:-1]:
        if skip_key or isinstance(part, int):  # a dict key or a list index: same model below it
            skip_key = False
            continue
        f = cur.model_fields.get(part)
        if f is None:
            return []
        ann = f.annotation
        skip_key = typing.get_origin(ann) is dict
        cur = next((a for a in (ann, *typing.get_args(ann)) if isinstance(a, type) and issubclass(a, BaseModel)),
                   None)
        if cur is None:
            return []
    return [k for k in cur.model_fields if k != "base_dir"]


def format_errors(err: ValidationError, file: str, model: type[BaseModel], prefix: tuple = ()) -> list[str]:
    lines = []
    for e in err.errors():
        loc = prefix + tuple(e["loc"])
        if e["type"] == "extra_forbidden":
            known = _fields_at(model, tuple(e["loc"]))
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            msg = "unknown key" + (f" (did you mean '{close[0]}'?)" if close else "")
        elif e["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = e["msg"]
        lines.append(f"{file}: {_loc(loc)}: {msg}")
    return lines


def _check_plugins(cfg: SweepConfig, file: str) -> list[str]:
    """Instantiate every calibrator and sampler once, so bad parameters fail before any model loads."""
    from qbench import registry

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
    for i, v in enumerate(cfg.sweep.extra):
        if v.calibration_set is not None and v.calibration_set not in cfg.data.sets():
            problems.append(f"{file}: {_loc(('sweep', 'extra', i, 'calibration_set'))}: unknown calibration set "
                            f"'{v.calibration_set}' (defined: {', '.join(cfg.data.sets())})")
    problems += _instantiate(registry.weight_rules, cfg.calibration.weights, ("calibration", "weights"), file)
    problems += _check_task(cfg, file)
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
    """Settings that only one task understands."""
    problems = []
    if cfg.task == "translation":
        if "ort_static" in cfg.sweep.baselines:
            problems.append(f"{file}: sweep.baselines: ort_static is not available for translation "
                            "(ONNX Runtime's static quantizer takes one graph; use qbench calibrators)")
        if cfg.gate is not None and cfg.gate.metric == "accuracy_at_1":
            problems.append(f"{file}: gate.metric: translation is gated on bleu or chrf")
    else:
        if cfg.gate is not None and cfg.gate.metric != "accuracy_at_1":
            problems.append(f"{file}: gate.metric: retrieval is gated on accuracy_at_1")
        if cfg.gate is not None and cfg.gate.per == "lang":
            problems.append(f"{file}: gate.per: retrieval has no languages; use per: all")
    return problems


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
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{file}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{file}: cannot read: {e.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "(parse)"
        raise ConfigError(f"{file}: {where}: malformed YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: (top level): expected a mapping of keys, got {type(raw).__name__}")
    if "base_dir" in raw:
        raise ConfigError(f"{file}: base_dir: unknown key")
    try:
        cfg = SweepConfig(**raw, base_dir=str(path.resolve().parent))
    except ValidationError as e:
        raise ConfigError("\n".join(format_errors(e, file, SweepConfig))) from None
    problems = _check_plugins(cfg, file)
    from qbench.errors import ModelError
    from qbench.export import resolve_source

    try:
        resolve_source(cfg.model_source())  # local paths and pkg: sources are checked now, hub ids at load time
    except ModelError as e:
        problems.append(f"{file}: model.source: {e}")
    if not cfg.manifest_path().is_file():
        problems.append(f"{file}: data.manifest: file not found: {cfg.manifest_path()}")
    if problems:
        raise ConfigError("\n".join(problems))
    return cfg
