"""Expand a SweepConfig into the variant table: baselines + calibrator x exclusion x flavor (+ extras)."""

from __future__ import annotations

from dataclasses import dataclass, field

from qbench.calib import Calibrator
from qbench.config.external import PeerBaselineCfg
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
    path: str = ""                  # external: the model file (or folder) as given, resolved
    peer: PeerBaselineCfg | None = None  # nncf / modelopt_int8: the options it runs with

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
        return (f"cal:{self.calibrator.signature()}|set:{calib_set}|excl:{self.exclusion}"
                f"|flavor:{self.flavor}|be:{self.backend}"
                + (f"|tf:{self.transform.signature()}" if self.transform.name != "none" else "")
                + (f"|emb:{self.embeddings}" if self.embeddings != "float" else ""))

    def describe(self) -> dict:
        return {
            "variant": self.id,
            "kind": self.kind,
            "calibrator": (self.calibrator.signature() if self.calibrator else
                           self.peer.id if self.peer else "external" if self.kind == "external" else self.baseline),
            "exclusion": self.exclusion if self.kind == "qbench" else "",
            "flavor": self.flavor,
            "backend": self.backend,
            "calibration_set": self.calib_set if self.kind == "qbench" else "",
            "transform": self.transform.signature() if self.kind == "qbench" else "",
            "embeddings": self.embeddings if self.kind == "qbench" else "",
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
        (c, ex, fl, cs, tf, emb)
        for cs in sets
        for tf in cfg.sweep.transforms
        for c in cfg.sweep.calibrators
        for ex in cfg.sweep.exclusions
        for fl in cfg.sweep.flavors
        for emb in cfg.sweep.embeddings
    ]
    combos += [(v.calibrator, v.exclusion, v.flavor, v.calibration_set or sets[0], v.transform, v.embeddings)
               for v in cfg.sweep.extra]
    seen: set[str] = set()
    for spec, ex, fl, cs, tf, emb in combos:
        cal = build_plugin(registry.calibrators, spec)
        # The set joins the id only when there is a choice, so single-set ids stay short and stable; so do the
        # transform and the embeddings, named only when they are not the default.
        vid = (f"{cal.signature()}+{ex}+{fl}" + (f"+{tf.signature()}" if tf.name != "none" else "")
               + ("+emb_int8" if emb == "int8" else "") + (f"@{cs}" if len(sets) > 1 else ""))
        if vid in seen:
            continue
        seen.add(vid)
        out.append(Variant(id=vid, kind="qbench", calibrator=cal, exclusion=ex, exclusion_cfg=cfg.sweep.exclusion(ex),
                           flavor=fl, backend=be, calib_set=cs, transform=tf, embeddings=emb))
    return out


def format_table(variants: list[Variant]) -> str:
    rows = [v.describe() for v in variants]
    cols = ["variant", "kind", "calibrator", "exclusion", "flavor", "calibration_set", "transform", "embeddings",
            "backend"]
    cols = [c for c in cols if c not in ("transform", "embeddings") or any(r[c] not in ("", "none", "float")
                                                                           for r in rows)]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)
