"""Expand a SweepConfig into the variant table: baselines + calibrator x exclusion x flavor x format (+ extras)."""

from __future__ import annotations

from dataclasses import dataclass, field

from qbench.calib import Calibrator
from qbench.config.external import PeerBaselineCfg
from qbench.config.formats import FormatCfg
from qbench.config.schema import ExclusionCfg, SweepConfig, build_plugin
from qbench.config.transforms import TransformCfg


@dataclass(frozen=True)
class Variant:
    id: str
    kind: str                       # "baseline" | "qbench" | "external"
    baseline: str = ""              # fp32 | fp16 | ort_dynamic | ort_static | nncf | modelopt_int8
    calibrator: Calibrator | None = None
    exclusion: str = "none"
    exclusion_cfg: ExclusionCfg = field(default_factory=ExclusionCfg)
    flavor: str = ""
    backend: str = "ort"
    calib_set: str = "default"
    transform: TransformCfg = field(default_factory=TransformCfg)  # an FP32 graph rewrite before Q/DQ
    embeddings: str = "float"       # float | int8 (weight-only Gather tables)
    float_dtype: str = "fp32"       # fp32 | fp16: what computes outside INT8 (qbench.quantize.qdq_fp16)
    ort_form: str = "qdq"           # qdq | fused: ONNX Runtime CPU's deployment form (qbench.quantize.ort_deploy)
    path: str = ""                  # external: the model file (or folder) as given, resolved
    peer: PeerBaselineCfg | None = None  # nncf / modelopt_int8: the options it runs with
    format: FormatCfg = field(default_factory=FormatCfg)  # int8 | fp8 | int8_wo | int4_wo (docs/formats.md)
    bias_correction: bool = False   # biases shifted by the mean Q/DQ error (qbench.quantize.bias_correction)

    def signature(self, calib_set: str) -> str:
        """sacrebleu-style provenance string carried by every score of this variant."""
        if self.kind == "external":
            return f"external:{self.path}|be:{self.backend}"
        if self.peer is not None:
            opts = ",".join(f"{k}={v}" for k, v in self.peer.options().items())
            return f"baseline:{self.baseline}[{opts}]|set:{calib_set}|be:{self.backend}"
        if self.kind == "baseline":
            return f"baseline:{self.baseline}|be:{self.backend}"
        assert self.calibrator is not None
        # The int8 signature is unchanged from before the format axis; a weight-only format quantizes no activation,
        # so it names no calibrator and no flavor.
        fmt = self.format.signature()
        if self.format.weight_only:
            head = f"fmt:{fmt}|set:{calib_set}|excl:{self.exclusion}"
        else:
            head = (f"cal:{self.calibrator.signature()}|set:{calib_set}|excl:{self.exclusion}"
                    + (f"|flavor:{self.flavor}" if self.format.name == "int8" else f"|fmt:{fmt}"))
        return (head + f"|be:{self.backend}"
                + (f"|tf:{self.transform.signature()}" if self.transform.name != "none" else "")
                + (f"|emb:{self.embeddings}" if self.embeddings != "float" else "")
                + (f"|float:{self.float_dtype}" if self.float_dtype != "fp32" else "")
                + (f"|form:{self.ort_form}" if self.ort_form != "qdq" else "")
                + ("|bc" if self.bias_correction else ""))

    def describe(self) -> dict:
        return {
            "variant": self.id,
            "kind": self.kind,
            "calibrator": ("" if self.format.weight_only else self.calibrator.signature() if self.calibrator else
                           self.peer.id if self.peer else "external" if self.kind == "external" else self.baseline),
            "exclusion": self.exclusion if self.kind == "qbench" else "",
            "flavor": self.flavor,
            "backend": self.backend,
            "calibration_set": self.calib_set if self.kind == "qbench" else "",
            "transform": self.transform.signature() if self.kind == "qbench" else "",
            "embeddings": self.embeddings if self.kind == "qbench" else "",
            "format": self.format.signature() if self.kind == "qbench" else "",
            "float_dtype": self.float_dtype if self.kind == "qbench" else "",
            "ort_form": self.ort_form if self.kind == "qbench" else "",
            "bias_correction": ("true" if self.bias_correction else "false") if self.kind == "qbench" else "",
        }


def expand(cfg: SweepConfig) -> list[Variant]:
    from qbench.config import registry

    be = cfg.backend.name
    # The fp16 baseline carries the nodes it keeps in FP32 as its exclusion, so the TensorRT layer
    # report checks them like any other exclusion.
    sets = list(cfg.data.sets())
    out = [Variant(id=b, kind="baseline", baseline=b, backend=be,
                   exclusion_cfg=cfg.sweep.fp16_keep_fp32 if b == "fp16" else ExclusionCfg())
           if isinstance(b, str) else
           Variant(id=b.id, kind="baseline", baseline=b.name, backend=be, peer=b, calib_set=sets[0])
           for b in cfg.sweep.baselines]
    out += [Variant(id=e.name, kind="external", baseline="", backend=be, path=str(e.resolved(cfg.base_dir)))
            for e in cfg.sweep.external]
    combos = [
        (c, ex, fl, cs, tf, emb, fm, fd, "qdq", bc)
        for cs in sets
        for tf in cfg.sweep.transforms
        for fm in cfg.sweep.formats
        for c in cfg.sweep.calibrators
        for ex in cfg.sweep.exclusions
        for fl in cfg.sweep.flavors
        for emb in cfg.sweep.embeddings
        for fd in cfg.sweep.float_dtypes
        for bc in cfg.sweep.bias_correction
        if not (fm.weight_only and tf.name != "none")  # a weight-only format's scales are its own (awq), no transform
        and not (bc and fm.name != "int8")  # bias correction fake-quantizes int8 only (qbench.quantize.bias_correction)
    ]
    combos += [(v.calibrator, v.exclusion, v.flavor, v.calibration_set or sets[0], v.transform, v.embeddings, v.format,
                v.float_dtype, v.ort_form, v.bias_correction) for v in cfg.sweep.extra]
    seen: set[str] = set()
    for spec, ex, fl, cs, tf, emb, fm, fd, form, bc in combos:
        cal = build_plugin(registry.calibrators, spec)
        vid = variant_id(cal.signature(), ex, fl, fm, tf, emb, cs if len(sets) > 1 else None, fd, form, bc)
        if vid in seen:  # a weight-only format crossed with several calibrators or flavors is one variant
            continue
        seen.add(vid)
        out.append(Variant(id=vid, kind="qbench", calibrator=cal, exclusion=ex, exclusion_cfg=cfg.sweep.exclusion(ex),
                           flavor=fl if fm.name == "int8" else fm.signature(), backend=be, calib_set=cs, transform=tf,
                           embeddings=emb, format=fm, float_dtype=fd, ort_form=form, bias_correction=bc))
    return out


def variant_id(cal: str, ex: str, flavor: str, fm: FormatCfg, tf: TransformCfg, emb: str, calib_set: str | None,
               float_dtype: str = "fp32", ort_form: str = "qdq", bias_correction: bool = False) -> str:
    """``<calibrator>+<exclusion>+<flavor>``, the flavor replaced by the format when it is not int8, and the
    calibrator and flavor left out for a weight-only format (it quantizes no activation). The set joins the id only
    when there is a choice, so single-set ids stay short and stable; so do the transform and the embeddings, named
    only when they are not the default."""
    head = f"{fm.signature()}+{ex}" if fm.weight_only else f"{cal}+{ex}+{flavor if fm.name == 'int8' else fm.name}"
    return (head + (f"+{tf.signature()}" if tf.name != "none" else "") + ("+emb_int8" if emb == "int8" else "")
            + ("+fp16" if float_dtype == "fp16" else "") + ("+ort_fused" if ort_form == "fused" else "")
            + ("+bc" if bias_correction else "")
            + (f"@{calib_set}" if calib_set else ""))


def format_table(variants: list[Variant]) -> str:
    rows = [v.describe() for v in variants]
    cols = ["variant", "kind", "calibrator", "exclusion", "flavor", "calibration_set", "transform", "embeddings",
            "format", "float_dtype", "ort_form", "bias_correction", "backend"]
    # a column shown only when some variant departs from its default
    default = {"transform": "none", "embeddings": "float", "format": "int8", "float_dtype": "fp32", "ort_form": "qdq",
               "bias_correction": "false"}
    cols = [c for c in cols if c not in default or any(r[c] not in ("", default[c]) for r in rows)]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)
