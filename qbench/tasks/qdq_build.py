"""One qbench variant's Q/DQ graphs, the same way for every task: the calibration table, the FP32 graph the Q/DQ
goes on (SmoothQuant's transformed graph, AWQ's rescaled one), the format (docs/formats.md), INT8 embeddings, the
content key, and the build or the re-check of a cached file.

A task calls ``graph_table``, ``graph_fp32`` and ``build_graph`` once per graph (``comp``: None for a one-graph task,
"encoder" / "decoder" for translation) and keys its artifact with ``variant_key``; baselines, external models and
what the task names its artifact stay in the task.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from qbench.tasks.common import QDQ_VERSION, table_file
from qbench.util.logs import log


def graph_table(ctx, task, v, comp: str | None = None):
    """(table, its path in the run dir or None, manifest info) of graph ``comp``: computed once per calibrator, set,
    transform and graph from shared statistics; a transformed graph's from the statistics of that graph
    (qbench.tasks.transforms). A weight-only format quantizes no activation: an empty table."""
    from qbench.calib import CalibrationTable
    from qbench.tasks import transforms

    if v.format.weight_only:
        return CalibrationTable({}, calibrator="none"), None, {}
    sig = v.calibrator.signature()
    tf = v.transform.signature() if v.transform.name != "none" else ""
    slot = (v.calib_set, sig, tf, comp)
    if slot not in ctx.tables:
        stats, info = transforms.component_stats(ctx, task, v.calib_set, comp)[0], {}
        if tf:
            _, path, factors, _, sources = transforms.transformed(ctx, task, v, comp)
            stats, info = transforms.table_stats(ctx, task, v, stats, path, factors, sources, comp)
        t = v.calibrator.table(stats)
        t.check_finite()
        rel = table_file(ctx, sig + (f"+{tf}" if tf else ""), v.calib_set, comp)
        t.save(ctx.run_dir / rel)
        ctx.tables[slot] = (t, rel, info)
    return ctx.tables[slot]


def graph_fp32(ctx, task, v, comp: str | None = None) -> tuple:
    """(the FP32 ModelProto the Q/DQ goes on, transform or AWQ info for the manifest, what the content key adds):
    the sweep's FP32 graph, or its SmoothQuant / AWQ rewrite (exact in FP32), plus the format and embeddings."""
    from qbench.tasks import transforms

    fp32, extra, tinfo = ctx.fp32_model(comp), [], {}
    if v.transform.name != "none":
        fp32, _, _, tinfo, _ = transforms.transformed(ctx, task, v, comp)
        extra = [tinfo["fp32_key"]]
    if v.format.awq:  # the weights are quantized after AWQ's exact rescaling of the FP32 graph
        fp32, _, tinfo = transforms.awq_model(ctx, task, v, comp)
        extra = [tinfo["fp32_key"]]
    if v.embeddings != "float":
        extra.append(f"emb:{v.embeddings}")
    if v.format.name != "int8":
        extra.append(f"fmt:{v.format.signature()}")
    return fp32, tinfo, extra


def weight_rule(ctx):
    """The configured int8 weight rule (calibration.weights), built from the registry."""
    from qbench.config import registry
    from qbench.config.schema import build_plugin

    return build_plugin(registry.weight_rules, ctx.cfg.calibration.weights)


def variant_key(msha: str, tables, v, weights, extra: list) -> str:
    """16 hex digits naming a variant's Q/DQ artifact by everything that made it (``tables``: one table's JSON, or
    {graph: JSON}); ``extra`` is empty for plain INT8, so INT8 keys are what they were before formats existed."""
    return hashlib.sha256(json.dumps([QDQ_VERSION, msha, tables, v.exclusion_cfg.model_dump(), v.flavor,
                                      weights.signature()] + extra).encode()).hexdigest()[:16]


def build_graph(v, fp32, table, weights, out: Path):
    """(QdqReport, cache hit): ``out`` built from ``fp32``, or, already there (cached by content), every scale in it
    re-checked against the table and the FP32 weights, so a stale or edited file cannot pass."""
    from qbench.quantize.qdq import build_qdq, load_model, plan, verify_scales

    if out.is_file():
        verify_scales(load_model(out), table, fp32, weights)
        rep = plan(fp32, v.exclusion_cfg, v.format)[1]
        hit = True
    else:
        rep = build_qdq(fp32, table, v.exclusion_cfg, v.flavor, out, weights, embeddings=v.embeddings == "int8",
                        fmt=v.format)
        hit = False
    return rep, hit


def single_graph(ctx, task, v, out_dir: Path, msha: str) -> tuple[Path, object, dict]:
    """A one-graph task's Q/DQ variant (retrieval, causal_lm): (the file, its QdqReport, what the manifest records
    of it) from the graph's table, transform or AWQ scales, format and content key."""
    table, tfile, tinfo = graph_table(ctx, task, v)
    weights = weight_rule(ctx)
    fp32, graph_info, extra = graph_fp32(ctx, task, v)
    tinfo = {**graph_info, **tinfo}
    key = variant_key(msha, table.to_json(), v, weights, extra)
    out = out_dir / f"{key}.onnx"
    rep, hit = build_graph(v, fp32, table, weights, out)
    bc: dict = {}
    if v.bias_correction:  # from the plain Q/DQ file, which the uncorrected variant shares
        key = variant_key(msha, table.to_json(), v, weights, extra + [f"bc:{_set_digest(ctx, v)}"])
        out, bc, hit = bias_corrected(ctx, task, v, fp32, table, weights, out, out_dir / f"{key}.onnx")
    return out, rep, {"qdq_key": key, "qdq_cache_hit": hit, "table": tfile, "format": v.format.signature(),
                      "quantized_tensors": len(rep.quantized_tensors), "excluded_nodes": rep.excluded_nodes,
                      **({"transform": tinfo} if tinfo else {}),
                      **({"embeddings": v.embeddings} if v.embeddings != "float" else {}),
                      **({"bias_correction": bc} if bc else {})}


def _set_digest(ctx, v) -> str:
    # the correction averages over these samples: another set is another file, even where its table is the same
    from qbench.calib.stats import sample_keys

    return hashlib.sha256(json.dumps(sample_keys(ctx.calib_sets[v.calib_set])).encode()).hexdigest()[:16]


def bias_corrected(ctx, task, v, fp32, table, weights, plain: Path, out: Path) -> tuple[Path, dict, bool]:
    """(``out``: the Q/DQ file ``plain`` with its biases corrected by one FP32 pass over ``v``'s calibration set
    (qbench.quantize.bias_correction), what the manifest records, cache hit). A cached file is checked: its
    scales against the table, and every bias the rule corrects must be a corrected one."""
    import time

    from qbench.config.errors import QuantizationError
    from qbench.quantize import bias_correction as bcm
    from qbench.quantize.qdq import load_model, verify_scales
    from qbench.util.io import atomic_write_bytes

    if out.is_file():
        model = load_model(out)
        verify_scales(model, table, fp32, weights)
        targets, skipped = bcm.find_targets(model, fp32)
        corrected = bcm.corrected_biases(model)
        if corrected != len(targets):
            raise QuantizationError(f"{out}: {corrected} of its {len(targets)} linear biases are corrected; delete "
                                    "the file to rebuild it")
        return out, {"corrected": len(targets), **({"skipped": {k: len(x) for k, x in skipped.items()}}
                                                  if skipped else {})}, True
    model, t0 = load_model(plain), time.perf_counter()
    batches, kw = task.calib_batches(ctx, v.calib_set)
    info = bcm.bias_correct(model, fp32, batches(), ctx.cfg.backend.threads, **kw)
    atomic_write_bytes(out, model.SerializeToString())
    info["seconds"] = round(time.perf_counter() - t0, 3)
    log(f"bias correction of {v.id}: {info['corrected']} bias(es) shifted, mean |shift| "
        f"{info['mean_abs_shift']:.3g} ({info['seconds']:.1f}s)"
        + "".join(f"; {n} not: {why}" for why, n in info.get("skipped", {}).items()))
    return out, info, False


def log_warnings(v, warnings) -> None:
    for w in warnings:
        log(f"warning: variant {v.id}: {w}", warning=True)
