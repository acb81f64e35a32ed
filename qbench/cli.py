"""qbench command line. User errors (QbenchError) print one line each and exit with their code (qbench.config.errors); bugs keep their traceback."""

from __future__ import annotations

import argparse
import os
import sys

from qbench.config.errors import ConfigError, QbenchError

EPILOG = """Examples:
  qbench validate examples/minilm-retrieval.yaml
  qbench sweep examples/minilm-retrieval.yaml --dry-run
  qbench sweep examples/minilm-retrieval.yaml
  qbench report reports/example-minilm-auto --markdown
  qbench ls calibrators
  qbench gate reports/example-minilm-auto                        # exit 0 pass, 1 fail, 2 cannot tell, 10 inconclusive
  qbench compare reports/example reports/example-minilm-trt
  qbench config-reference > docs/config.md
  qbench cache --prune --keep reports/example-minilm-auto         # free the disk old variants fill

Every command has its own examples: qbench COMMAND --help.
"""

# Per subcommand: (one-line help, examples shown under its --help). The runs named are committed under reports/.
COMMANDS = {
    "sweep": ("build, score and report every variant of a sweep config", """
  qbench sweep examples/minilm-retrieval.yaml
  qbench sweep examples/minilm-retrieval.yaml --dry-run          # the variant table only
  qbench sweep examples/bible-en-es.yaml --out /tmp/reports --no-progress
  qbench sweep examples/bible-en-es.yaml --resume reports/example-bible-en-es --retry-failed
  qbench sweep examples/minilm-retrieval.yaml --executor ray     # Ray tasks (executor.address: auto|HOST:PORT)

Progress bars (with ETA) show on stderr when it is a terminal; logs and pipes get the log lines and, per
phase (variants, TensorRT builds, latency), its steps with the time left and its elapsed time.
A run is written after every variant, and stdout gets its directory, also when interrupted (Ctrl-C: exit
130, SIGTERM: 143); a killed or interrupted run is finished with --resume, which refuses a config that
changed (CONFIG defaults to the run's own).
"""),
    "validate": ("check a sweep config without loading any model", """
  qbench validate examples/minilm-retrieval.yaml
  qbench validate examples/django-multi-auto.yaml
"""),
    "ls": ("list registered plugins and metrics with their parameters", """
  qbench ls calibrators
  qbench ls samplers
  qbench ls metrics
  qbench ls tasks
"""),
    "table": ("convert a calibration table: qbench JSON <-> TensorRT <=10 cache", """
  qbench table reports/example/tables/entropy.json entropy.cache
  qbench table entropy.cache entropy.json
  qbench table reports/example/tables/minmax.json minmax.cache --trt-version 8.6.1
"""),
    "report": ("re-render report.html of a run directory", """
  qbench report reports/example-minilm-auto
  qbench report reports/example-bible-en-es --markdown
"""),
    "gate": ("exit 0 if a variant of a run passes its gate, 1 if it fails, 10 if the data cannot decide yet "
             "(for release pipelines)", """
  qbench gate reports/example-minilm-auto                        # its exclude: auto variant
  qbench gate reports/example-bible-en-es --variant minmax+none+s8s8
  qbench gate reports/example-minilm-auto --variant 'percentile[percentile=99.99]+none+u8s8'   # exit 1: FAIL
"""),
    "compare": ("the overall metrics of two runs' shared variants, side by side", """
  qbench compare reports/example reports/example-minilm-trt
  qbench compare reports/example reports/example-minilm-trt --metric accuracy_at_1 --metric size_mb
"""),
    "inspect": ("list a model's MatMul/Gemm nodes and its structural roles (exclusion targets); of a Q/DQ model, "
                "each MatMul's quantization format and whether TensorRT accepts it", """
  qbench inspect .qbench-cache/models/<key>/model.onnx
  qbench inspect .qbench-cache/models/<key>/decoder.onnx --json
  qbench inspect model.int8.onnx          # a quantized model (NNCF, ModelOpt, ONNX Runtime, qbench): per MatMul
"""),
    "cache": ("show what the content cache holds; --prune removes the artifacts no kept run needs", """
  qbench cache                                                   # .qbench-cache, or $QBENCH_CACHE
  qbench cache --prune --keep reports/example-minilm-auto --dry-run
  qbench cache --cache-dir /data/qbench-cache --prune            # every QDQ artifact and engine

--prune removes QDQ artifacts (variants/) and TensorRT engines (engines/) that no --keep run references;
exports and statistics stay. Keep the runs you may still resume or re-time; prune no cache a sweep is using.
"""),
    "config-reference": ("print the sweep config reference (every section and key) as Markdown", """
  qbench config-reference > docs/config.md
  qbench config-reference | grep gate.
"""),
}
LS_KINDS = ("calibrators", "samplers", "backends", "weights", "metrics", "tasks")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qbench", description="Quantization calibration and accuracy workbench.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"qbench {_version()}")
    sub = p.add_subparsers(dest="cmd", required=True)

    def add(name: str) -> argparse.ArgumentParser:
        help_, examples = COMMANDS[name]
        return sub.add_parser(name, help=help_, description=help_[0].upper() + help_[1:] + ".",
                              epilog="Examples:" + examples, formatter_class=argparse.RawDescriptionHelpFormatter)

    s = add("sweep")
    s.add_argument("config", nargs="?", help="the sweep config (with --resume: default, the run's own config file)")
    s.add_argument("--resume", metavar="RUN_DIR", help="finish this run: skip its finished variants")
    s.add_argument("--retry-failed", action="store_true", help="with --resume: run its failed variants again")
    s.add_argument("--dry-run", action="store_true", help="print the expanded variant table and stop")
    s.add_argument("--out", help="output root (default: the config's output.dir)")
    s.add_argument("--executor", choices=("local", "ray"),
                   help="where variants run, overriding the config's executor.kind (ray: executor.address, "
                        "gpus_per_job, workers apply); a run resumes under any executor")
    s.add_argument("--no-progress", action="store_true",
                   help="no progress bars (they show only when stderr is a terminal anyway)")
    s.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bars and no log lines but warnings, failures and errors; "
                        "stdout still gets the run directory")
    v = add("validate")
    v.add_argument("config")
    ls = add("ls")
    ls.add_argument("kind", choices=LS_KINDS)
    t = add("table")
    t.add_argument("src", help="a qbench table (.json) or a TensorRT calibration cache")
    t.add_argument("dst", help="output: .json writes a qbench table, anything else a TensorRT cache")
    t.add_argument("--trt-version", default="10.0.0", help="TensorRT version for the cache header (default 10.0.0)")
    r = add("report")
    r.add_argument("run_dir")
    r.add_argument("--markdown", action="store_true", help="print the variant table as Markdown instead")
    r.add_argument("--side-by-side", action="store_true", help="with --markdown: only the side-by-side table of "
                   "a run holding external or peer-quantized variants")
    g = add("gate")
    g.add_argument("run_dir")
    g.add_argument("--variant", help="default: the run's exclude: auto variant, if it has exactly one")
    c = add("compare")
    c.add_argument("run_a")
    c.add_argument("run_b")
    c.add_argument("--metric", action="append", help="a metric to show (repeatable); default: the quality ones")
    i = add("inspect")
    i.add_argument("model", help="an ONNX file")
    i.add_argument("--json", action="store_true", help="print the nodes and role groups as JSON")
    add("config-reference")
    k = add("cache")
    k.add_argument("--cache-dir", help="default: $QBENCH_CACHE, else .qbench-cache (output.cache_dir's default)")
    k.add_argument("--prune", action="store_true", help="remove the artifacts and engines no --keep run references")
    k.add_argument("--keep", metavar="RUN_DIR", action="append", default=[],
                   help="with --prune: keep what this run references (repeatable)")
    k.add_argument("--dry-run", action="store_true", help="with --prune: list what would go, remove nothing")
    return p


def _version() -> str:
    from qbench import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from qbench.util import progress

    try:
        return _dispatch(args)
    except QbenchError as e:
        progress.close_all()
        for line in str(e).splitlines() or [type(e).__name__]:
            print(line, file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        progress.close_all()
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `qbench ... | head`: the reader left; say nothing more
        sys.stdout = open(os.devnull, "w")  # Python flushes stdout at exit: not into the closed pipe
        return 141
    finally:
        progress.close_all()
        progress.configure()


def _list_plugins(kind: str) -> int:
    """Names and parameter schemas, built-ins and entry-point plugins alike."""
    from qbench.config import registry

    if kind == "metrics":
        return _list_metrics()
    if kind == "tasks":  # tasks take no parameters: their graphs and what they are
        for name in registry.tasks.names():
            cls = registry.tasks.get(name)
            doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
            print(f"{name:18s} graphs: {', '.join(cls.components)}" + (f"    # {doc}" if doc else ""))
        return 0
    reg = {"calibrators": registry.calibrators, "samplers": registry.samplers,
           "backends": registry.backends, "weights": registry.weight_rules}[kind]
    for name in reg.names():
        cls = reg.get(name)
        schema = cls.model_json_schema()
        required = set(schema.get("required", []))
        params = ", ".join(_param(k, _schema_type(v), v.get("default"), k in required or "default" not in v)
                           for k, v in schema.get("properties", {}).items())
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"{name:18s} {params or '(no parameters)'}" + (f"    # {doc}" if doc else ""))
    return 0


def _param(name: str, type_: str, default, required: bool) -> str:
    if required:
        return f"{name}: {type_} (required)"
    return f"{name}: {type_} = {default}"


def _schema_type(prop: dict) -> str:
    """A JSON-schema property's type in a few words: ``integer``, ``string | null``, ``one of a|b``."""
    if "enum" in prop:
        return "one of " + "|".join(map(str, prop["enum"]))
    if "anyOf" in prop:
        return " | ".join(_schema_type(p) for p in prop["anyOf"])
    if prop.get("type") == "array":
        return f"list of {_schema_type(prop.get('items', {}))}"
    return prop.get("type", "any")


def metric_catalogue() -> list[tuple[str, str, list[tuple[str, str, object]], str]]:
    """(name, tasks, [(parameter, type, value)], what it is) for the metrics a sweep writes, with the settings
    they are computed with, read from the objects that compute them."""
    from qbench.tasks import mt_metrics, translation
    from qbench.config.schema import GateCfg, LatencyCfg

    def config_keys(prefix: str, model) -> list[tuple[str, str, object]]:
        props = model.model_json_schema().get("properties", {})
        return [(f"{prefix}.{k}", _schema_type(v), v.get("default")) for k, v in props.items()]

    bleu, chrf = mt_metrics._metric("bleu"), mt_metrics._metric("chrf")
    boot = [("resamples", "integer", translation.BOOTSTRAP), ("interval", "string", "2.5-97.5 percentile")]
    return [
        ("accuracy_at_1", "retrieval", [], "share of queries whose own document ranks first by cosine similarity"),
        ("mrr", "retrieval", [], "mean reciprocal rank of each query's own document"),
        ("cosine_vs_fp32", "retrieval", [], "mean cosine between the variant's and FP32's embeddings"),
        ("bleu", "translation",
         [("tokenize", "string", "by target language (13a; zh; ja-mecab, ko-mecab if installed; else char)"),
          ("smooth_method", "string", bleu.smooth_method), ("max_ngram_order", "integer", bleu.max_ngram_order),
          ("lowercase", "boolean", bleu.lowercase)],
         "sacrebleu BLEU per language, and their macro average (slice all)"),
        ("chrf", "translation",
         [("char_order", "integer", chrf.char_order), ("word_order", "integer", chrf.word_order),
          ("beta", "integer", chrf.beta), ("lowercase", "boolean", chrf.lowercase)],
         "sacrebleu chrF per language, and their macro average (slice all)"),
        ("delta_bleu", "translation", boot, "change against FP32, with a paired bootstrap interval (_lo, _hi, _p)"),
        ("delta_chrf", "translation", boot, "change against FP32, with a paired bootstrap interval (_lo, _hi, _p)"),
        ("exact_match_vs_fp32", "translation", [], "share of outputs identical to FP32's"),
        ("gate", "both", config_keys("gate", GateCfg),
         "1 if the worst drop against FP32 stays within gate.max_drop, else 0 (needs a gate section)"),
        ("worst_lang_drop", "both", [], "the drop the gate judged: the worst language's, or the mean's"),
        ("latency_p50_ms", "both", config_keys("measure.latency", LatencyCfg), "median latency per batch size (also p90, p99, mean, throughput_items_per_s)"),
        ("size_mb", "both", [], "the artifact's size on disk"),
        ("eval_seconds", "both", [], "time to run the evaluation set"),
    ]


def _list_metrics() -> int:
    for name, tasks, params, doc in metric_catalogue():
        shown = ", ".join(_param(k, t, v, False) for k, t, v in params) or "(no parameters)"
        print(f"{name:20s} [{tasks}] {shown}    # {doc}")
    return 0


def _cache(args) -> int:
    from pathlib import Path

    from qbench.run import cache_admin

    if (args.keep or args.dry_run) and not args.prune:
        raise ConfigError("qbench cache: --keep and --dry-run go with --prune")
    cache = Path(args.cache_dir or os.environ.get("QBENCH_CACHE") or ".qbench-cache")
    if args.prune:
        removed, kept = cache_admin.prune(cache, [Path(r) for r in args.keep], dry_run=args.dry_run)
        for e in removed if args.dry_run else []:
            print(f"  {e.kind}/{e.path.name}  {e.bytes / 1e6:.1f} MB")
        print(cache_admin.prune_report(removed, kept, len(args.keep), args.dry_run))
    print(cache_admin.summary(cache))
    return 0


def _convert_table(src: str, dst: str, trt_version: str) -> int:
    from pathlib import Path

    from calibrators.table import load_table
    from qbench.calib.trt_cache import save_trt_cache, trt_version_code

    table = load_table(Path(src))
    if dst.endswith(".json"):
        table.save(Path(dst))
    else:
        save_trt_cache(table, Path(dst), trt_version=trt_version_code(trt_version))
    print(f"{dst}: {len(table.amax)} tensors")
    return 0


def _dim(v) -> str:
    return "?" if v is None or str(v).startswith("unk__") else str(v)


def _inspect(path: str, as_json: bool) -> int:
    """Quantizable nodes with their roles, then the role groups an exclusion can name."""
    import json
    from pathlib import Path

    from qbench.quantize.qdq import load_model
    from qbench.quantize.roles import find_roles
    from qbench.quantize.nodes import quantizable_nodes, roles_as_json

    model = load_model(Path(path))
    from qbench.quantize import trt_rules

    if any(n.op_type in trt_rules.QDQ or n.op_type in trt_rules.INTEGER_OPS for n in model.graph.node):
        print(trt_rules.format_report(trt_rules.check(model), as_json))  # a quantized model: its Q/DQ, TensorRT's rules
        return 0
    roles = find_roles(model)
    nodes = quantizable_nodes(model, roles)
    if as_json:
        print(json.dumps({"model": path, "nodes": nodes, "roles": roles_as_json(roles)}, indent=1, default=str))
        return 0
    width = max([len(n["name"]) for n in nodes] + [4])
    print(f"{'node':{width}s}  {'op':6s}  {'weight':>11s}  {'M x K x N':>16s}  roles")
    for n in nodes:
        w = "x".join(map(str, n["weight_shape"])) if n["weight_shape"] else "-"
        mkn = "x".join(_dim(n[k]) for k in ("M", "K", "N"))
        print(f"{n['name']:{width}s}  {n['op_type']:6s}  {w:>11s}  {mkn:>16s}  {', '.join(n['roles']) or '-'}")
    print(f"\n{len(nodes)} MatMul/Gemm nodes\nrole groups:")
    for role, groups in roles.items():
        kinds: dict[str, int] = {}
        for g in groups:
            key = g.detail.split(" -> ")[0] + (", tied to the token embeddings" if "(tied to " in g.detail else "")
            kinds[key] = kinds.get(key, 0) + 1
        what = "; ".join(f"{c} x {k}" for k, c in kinds.items())
        if role == "embeddings" and groups:
            what = f"{sum(g.detail.count(';') + 1 for g in groups)} table lookup(s)"
        print(f"  {role:11s} {len(groups):3d} group(s), {sum(len(g.nodes) for g in groups):4d} node(s)"
              + (f"  [{what}]" if what else ""))
    return 0


def _dispatch(args) -> int:
    from pathlib import Path

    from qbench.config.schema import load_config

    if args.cmd == "ls":
        return _list_plugins(args.kind)
    if args.cmd == "config-reference":
        from qbench.config.doc import render

        sys.stdout.write(render())
        return 0
    if args.cmd == "table":
        return _convert_table(args.src, args.dst, args.trt_version)
    if args.cmd == "cache":
        return _cache(args)
    if args.cmd == "inspect":
        return _inspect(args.model, args.json)
    if args.cmd == "gate":
        from qbench.report.verdict import gate

        code, line = gate(Path(args.run_dir), args.variant)
        print(line)
        return code
    if args.cmd == "compare":
        from qbench.report.verdict import compare

        print(compare(Path(args.run_a), Path(args.run_b), args.metric))
        return 0
    if args.cmd == "report":
        from qbench.report.render import markdown, render

        print(markdown(Path(args.run_dir), args.side_by_side) if args.markdown else render(Path(args.run_dir)))
        return 0
    if args.cmd == "sweep" and args.config is None:
        if not args.resume:
            raise ConfigError("qbench sweep: give a config file (or --resume RUN_DIR)")
        from qbench.run.resume import config_file

        args.config = config_file(args.resume)
    if args.cmd == "sweep" and args.retry_failed and not args.resume:
        raise ConfigError("qbench sweep: --retry-failed goes with --resume RUN_DIR")
    cfg = load_config(args.config)
    if args.cmd == "sweep" and args.executor:
        cfg = cfg.model_copy(update={"executor": cfg.executor.model_copy(update={"kind": args.executor})})
    from qbench.run.variants import expand, format_table

    variants = expand(cfg)
    if args.cmd == "validate":
        print(f"{args.config}: ok ({len(variants)} variants)")
        return 0
    if args.dry_run:
        print(format_table(variants))
        return 0
    from qbench.util import progress
    from qbench.run.sweep import run_sweep

    progress.configure(bars=False if args.no_progress or args.quiet else None, quiet=args.quiet)

    from qbench.run.sweep import Interrupted

    try:
        run_dir = run_sweep(cfg, args.out, resume=Path(args.resume) if args.resume else None,
                            retry_failed=args.retry_failed, config_path=args.config)
    except Interrupted as e:  # the run directory is written and resumable; the log said how
        progress.close_all()
        if e.run_dir is not None:  # stdout gets the run directory, finished or not: a script resumes it from there
            print(e.run_dir)
        return e.exit_code
    print(run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
