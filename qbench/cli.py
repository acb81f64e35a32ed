"""qbench command line. User errors (QbenchError) print one line each and exit 2; bugs keep their traceback."""

from __future__ import annotations

import argparse
import sys

from qbench.errors import QbenchError

EPILOG = """examples:
  qbench validate examples/minilm-retrieval.yaml
  qbench sweep examples/minilm-retrieval.yaml --dry-run
  qbench sweep examples/minilm-retrieval.yaml
  qbench report reports/minilm-retrieval/<run_id>
  qbench report reports/minilm-retrieval/<run_id> --markdown
  qbench ls calibrators
  qbench table reports/minilm-retrieval/<run_id>/tables/entropy.json entropy.cache
  qbench inspect model.onnx
  qbench gate reports/django-multi-auto/<run_id>                 # exit 0 pass, 1 fail, 2 cannot tell
  qbench gate reports/minilm-retrieval/<run_id> --variant minmax+none+s8s8
  qbench compare reports/minilm-retrieval/<run_a> reports/minilm-retrieval/<run_b>
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qbench", description="Quantization calibration and accuracy workbench.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"qbench {_version()}")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sweep", help="build, score and report every variant of a sweep config")
    s.add_argument("config")
    s.add_argument("--dry-run", action="store_true", help="print the expanded variant table and stop")
    s.add_argument("--out", help="output root (default: the config's output.dir)")
    v = sub.add_parser("validate", help="check a sweep config without loading any model")
    v.add_argument("config")
    ls = sub.add_parser("ls", help="list registered plugins and their parameters")
    ls.add_argument("kind", choices=["calibrators", "samplers", "backends", "weights"])
    t = sub.add_parser("table", help="convert a calibration table: qbench JSON <-> TensorRT <=10 cache")
    t.add_argument("src", help="a qbench table (.json) or a TensorRT calibration cache")
    t.add_argument("dst", help="output: .json writes a qbench table, anything else a TensorRT cache")
    t.add_argument("--trt-version", default="10.0.0", help="TensorRT version for the cache header (default 10.0.0)")
    r = sub.add_parser("report", help="re-render report.html of a run directory")
    r.add_argument("run_dir")
    r.add_argument("--markdown", action="store_true", help="print the variant table as Markdown instead")
    g = sub.add_parser("gate", help="exit 0 if a variant of a run passes its gate, 1 if not (for release pipelines)")
    g.add_argument("run_dir")
    g.add_argument("--variant", help="default: the run's exclude: auto variant, if it has exactly one")
    c = sub.add_parser("compare", help="the overall metrics of two runs' shared variants, side by side")
    c.add_argument("run_a")
    c.add_argument("run_b")
    c.add_argument("--metric", action="append", help="a metric to show (repeatable); default: the quality ones")
    i = sub.add_parser("inspect", help="list a model's MatMul/Gemm nodes and its structural roles (exclusion targets)")
    i.add_argument("model", help="an ONNX file")
    i.add_argument("--json", action="store_true", help="print the nodes and role groups as JSON")
    return p


def _version() -> str:
    from qbench import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except QbenchError as e:
        for line in str(e).splitlines() or [type(e).__name__]:
            print(line, file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _list_plugins(kind: str) -> int:
    """Names and parameter schemas, built-ins and entry-point plugins alike."""
    from qbench import registry

    reg = {"calibrators": registry.calibrators, "samplers": registry.samplers,
           "backends": registry.backends, "weights": registry.weight_rules}[kind]
    for name in reg.names():
        cls = reg.get(name)
        props = cls.model_json_schema().get("properties", {})
        params = ", ".join(
            f"{k}: {v.get('type', v.get('anyOf', '?'))}" + (f" = {v['default']}" if "default" in v else "")
            for k, v in props.items())
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"{name:18s} {params or '(no parameters)'}" + (f"    # {doc}" if doc else ""))
    return 0


def _convert_table(src: str, dst: str, trt_version: str) -> int:
    from pathlib import Path

    from calibrators.table import load_table
    from qbench.trt_cache import save_trt_cache, trt_version_code

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

    from qbench.qdq import load_model
    from qbench.roles import find_roles, quantizable_nodes, roles_as_json

    model = load_model(Path(path))
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
            key = g.detail.split(" -> ")[0]
            kinds[key] = kinds.get(key, 0) + 1
        what = "; ".join(f"{c} x {k}" for k, c in kinds.items())
        if role == "embeddings" and groups:
            what = f"{sum(g.detail.count(';') + 1 for g in groups)} table lookup(s)"
        print(f"  {role:11s} {len(groups):3d} group(s), {sum(len(g.nodes) for g in groups):4d} node(s)"
              + (f"  [{what}]" if what else ""))
    return 0


def _dispatch(args) -> int:
    from pathlib import Path

    from qbench.config import load_config

    if args.cmd == "ls":
        return _list_plugins(args.kind)
    if args.cmd == "table":
        return _convert_table(args.src, args.dst, args.trt_version)
    if args.cmd == "inspect":
        return _inspect(args.model, args.json)
    if args.cmd == "gate":
        from qbench.verdict import gate

        code, line = gate(Path(args.run_dir), args.variant)
        print(line)
        return code
    if args.cmd == "compare":
        from qbench.verdict import compare

        print(compare(Path(args.run_a), Path(args.run_b), args.metric))
        return 0
    if args.cmd == "report":
        from qbench.report import markdown, render

        print(markdown(Path(args.run_dir)) if args.markdown else render(Path(args.run_dir)))
        return 0
    cfg = load_config(args.config)
    from qbench.variants import expand, format_table

    variants = expand(cfg)
    if args.cmd == "validate":
        print(f"{args.config}: ok ({len(variants)} variants)")
        return 0
    if args.dry_run:
        print(format_table(variants))
        return 0
    from qbench.sweep import run_sweep

    run_dir = run_sweep(cfg, args.out)
    print(run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
