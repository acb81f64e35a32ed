"""A variant's evaluation decoded by several processes and resumed from its journal gives exactly the outputs
of one process decoding the whole set (qbench.tasks.decode.translate_artifact).

Real parts: the shipped EN->ES Marian exported to ONNX, ONNX Runtime sessions, forked worker processes, the
journal file on disk. The oracle is ``translate``, the one-process loop every other path is compared with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("torch")


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, qbench_cache):
    from qbench.config.schema import load_config
    from qbench.run.context import prepare

    tmp = tmp_path_factory.mktemp("journal")
    cfg = {
        "name": "journal", "task": "translation",
        "model": {"source": str(ROOT / "examples/models/marian-en-es"), "max_length": 256},
        "data": {"manifest": str(ROOT / "datasets/bible_en_es.yaml"),
                 "calibration": {"split": "calibration", "n": 8, "seed": 0, "sampler": {"name": "random"}},
                 "evaluation": {"split": "test", "n": 14}},
        "generation": {"max_new_tokens": 40, "batch_size": 4},
        "sweep": {"baselines": ["fp32"], "calibrators": [], "exclusions": ["none"]},
        "backend": {"name": "ort", "threads": 1},
        "output": {"dir": str(tmp / "out"), "cache_dir": str(qbench_cache)},
    }
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    c = prepare(load_config(path), tmp / "run")
    c.cache = tmp / "cache"   # the journal only: the exported model stays in the session's cache
    return c


def _with_workers(ctx, n: int):
    g = ctx.cfg.generation.model_copy(update={"workers": n})
    ctx.cfg = ctx.cfg.model_copy(update={"generation": g})


def test_workers_and_a_resumed_journal_give_the_outputs_of_one_process(ctx):
    from qbench.tasks.decode import generator, journal_path, translate, translate_artifact

    samples, art = ctx.evalset, ctx.fp32
    assert len(samples) == 14
    reference = translate(ctx, generator(ctx, art), samples)   # 4 batches: 4, 4, 4, 2 sources
    assert len(set(reference)) > 10                             # real, varied translations

    _with_workers(ctx, 1)
    hyps, seconds, resumed = translate_artifact(ctx, art, samples)
    assert (hyps, resumed) == (reference, 0)
    path = journal_path(ctx, art)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4
    recs = [json.loads(x) for x in lines]
    assert sorted(len(r["hyps"]) for r in recs) == [2, 4, 4, 4]
    assert seconds == pytest.approx(sum(r["s"] for r in recs), abs=1e-3)

    # a run killed after two batches, in the middle of writing the third line
    path.write_text("\n".join(lines[:2]) + "\n" + lines[2][:25], encoding="utf-8")
    _with_workers(ctx, 3)
    hyps, _, resumed = translate_artifact(ctx, art, samples)
    assert (hyps, resumed) == (reference, 2)

    # everything journaled now: nothing decoded, the recorded seconds summed
    hyps, seconds, resumed = translate_artifact(ctx, art, samples)
    assert (hyps, resumed) == (reference, 4)
    done = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()[:2]]
    assert seconds >= sum(r["s"] for r in done)

    # other decoding settings: another journal
    g = ctx.cfg.generation.model_copy(update={"max_new_tokens": 41})
    other = ctx.cfg.model_copy(update={"generation": g})
    saved, ctx.cfg = ctx.cfg, other
    try:
        assert journal_path(ctx, art) != path
    finally:
        ctx.cfg = saved
