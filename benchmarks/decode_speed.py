"""Greedy decoding speed of the shipped multilingual model on the CPU, before and after the split decoder.

    python benchmarks/decode_speed.py > benchmarks/decode_speed.txt

- **before**: the whole decoder graph, which recomputes the cross-attention keys and values from the encoder
  states at every step; ``Generator``'s numpy loop (the past K/V go through numpy at every step, finished rows
  are fed padding until the whole batch ends).
- **after**: the same graph file split in two (``qbench.models.decoder_split``: the K/V projections once per
  sentence); the IO-binding loop of ``qbench.models.fast_greedy`` (past K/V stay OrtValues; in float graphs
  finished rows leave the batch).

Both decode the same batches: sorted by source length in characters, as the translation task batches them.

Same model (examples/models/marian-debian-multi, exported FP32), the same ``--n`` test sentences per direction
(every k-th row of datasets/debian_multi/test.parquet, so all 32 languages), batches of 32, at most 128 new
tokens (the translation task's defaults), ONNX Runtime with intra_op_num_threads=2. The two loops alternate
batch by batch, so a load change on the machine hits both. Token identity: the ids of each sentence, before
against after. ``--int8`` adds the Q/DQ model qbench builds (minmax ranges from 64 calibration sentences per
direction, teacher forced on the references; per-channel weights; s8s8; nothing excluded), decoded by both loops.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "models" / "marian-debian-multi"
BATCH, MAX_NEW, THREADS = 32, 128, 2


def sentences(n: int, split: str) -> dict[str, list[str]]:
    """Sources with their tag per direction: every k-th row of the split, all languages."""
    import pandas as pd

    df = pd.read_parquet(ROOT / "datasets" / "debian_multi" / f"{split}.parquet")
    rows = df.iloc[::max(1, len(df) // n)].head(n)
    return {"xx_en": [">>en<< " + t for t in rows.xx],
            "en_xx": [f">>{lang}<< " + t for lang, t in zip(rows.lang, rows.en)],
            "refs_xx_en": list(rows.en), "refs_en_xx": list(rows.xx)}


def generators(spec, art: Path):
    from qbench.backends.ort import OrtSession
    from qbench.models.fast_greedy import FastGreedy
    from qbench.models.generate import Generator

    prov = ["CPUExecutionProvider"]
    enc = OrtSession(art / "encoder.onnx", THREADS, prov)
    before = Generator(enc, OrtSession(art / "decoder.onnx", THREADS, prov), spec)
    fast = FastGreedy.load(art / "decoder.onnx", THREADS, spec.num_layers)
    assert fast is not None, f"{art}: the decoder does not split"
    return before, Generator(enc, before.decoder, spec, fast)


def batches(texts: list[str]) -> list[list[int]]:
    """As ``qbench.tasks.decode.translate``: by source length in characters, then in batches."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    return [order[k:k + BATCH] for k in range(0, len(order), BATCH)]


def race(tok, before, after, texts: list[str]) -> tuple[float, float, list, list]:
    """Seconds of each loop over all texts (batches alternating), and the ids in input order."""
    runs = {"before": before, "after": after}
    secs = {k: 0.0 for k in runs}
    ids: dict[str, dict[int, list[int]]] = {k: {} for k in runs}
    for batch in batches(texts):
        for name, gen in runs.items():
            t0 = time.perf_counter()
            enc = tok.encode_batch([texts[i] for i in batch])
            out = gen.generate(enc["input_ids"], enc["attention_mask"], MAX_NEW, 1)
            secs[name] += time.perf_counter() - t0
            ids[name].update(zip(batch, out))
    return (secs["before"], secs["after"], [ids["before"][i] for i in range(len(texts))],
            [ids["after"][i] for i in range(len(texts))])


def int8_model(spec, tok, calib: dict[str, list[str]], out: Path) -> Path:
    """qbench's Q/DQ encoder and decoder from minmax ranges of the calibration sentences (references teacher
    forced), as the translation task builds them."""
    from calibrators.minmax import MinMax
    from qbench.calib import stats as st
    from qbench.config.schema import ExclusionCfg
    from qbench.quantize.qdq import build_qdq, calibration_tensors, load_model

    before, _ = generators(spec, spec.encoder_path.parent)
    srcs = calib["xx_en"] + calib["en_xx"]
    refs = calib["refs_xx_en"] + calib["refs_en_xx"]
    chunks = [list(range(k, min(k + BATCH, len(srcs)))) for k in range(0, len(srcs), BATCH)]

    def enc_batches():
        for c in chunks:
            yield tok.encode_batch([srcs[i] for i in c])

    def dec_batches():
        for c in chunks:
            enc = tok.encode_batch([srcs[i] for i in c])
            tgt = tok.encode_batch([refs[i] for i in c])
            targets = [row[m == 1].tolist() for row, m in zip(tgt["input_ids"], tgt["attention_mask"])]
            df = before.teacher_forced(enc["input_ids"], enc["attention_mask"], targets)
            yield {**df.feeds, "target_mask": df.token_mask.astype(np.int64)}

    out.mkdir(parents=True, exist_ok=True)
    for comp, feed, kw in (("encoder", enc_batches, {}),
                           ("decoder", dec_batches, {"mask_input": "target_mask", "seq_inputs": ["input_ids"]})):
        fp32 = spec.encoder_path.parent / f"{comp}.onnx"
        tensors = calibration_tensors(load_model(fp32))
        table = MinMax().table(st.collect(fp32, tensors, feed(), 2048, THREADS, **kw))
        build_qdq(fp32, table, ExclusionCfg(), "s8s8", out / f"{comp}.onnx")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="test sentences per direction")
    ap.add_argument("--int8", action="store_true", help="also the Q/DQ INT8 model")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/qbench/models"))
    args = ap.parse_args()
    started = time.perf_counter()

    import onnxruntime as ort

    from qbench.models.seq2seq import export_seq2seq
    from qbench.models.tokenize import Tokenizer

    spec = export_seq2seq(str(MODEL), Path(args.cache))
    tok = Tokenizer(spec.tokenizer_dir, 512)
    data = sentences(args.n, "test")
    models = {"fp32": spec.encoder_path.parent}
    if args.int8:
        models["int8"] = int8_model(spec, tok, sentences(64, "calibration"),
                                    Path(tempfile.mkdtemp(prefix="decode-speed-int8-")))
    print(f"decode speed: {MODEL.relative_to(ROOT)} (export {spec.key}, split check max |dlogit| "
          f"{spec.decoder_split_max_abs_diff:.1e}), {args.n} test sentences per direction, batch {BATCH}, "
          f"max_new_tokens {MAX_NEW}, greedy")
    print(f"onnxruntime {ort.__version__}, intra_op_num_threads={THREADS}, {platform.machine()}, "
          f"{os.cpu_count()} visible cores")
    print()
    print("| model | direction | before s | after s | before sent/s | after sent/s | speed-up | identical ids | "
          "rows dropped |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, art in models.items():
        before, after = generators(spec, art)
        for direction in ("xx_en", "en_xx"):
            texts = data[direction]
            tb, ta, ib, ia = race(tok, before, after, texts)
            same = sum(a == b for a, b in zip(ib, ia))
            label = "XX→EN" if direction == "xx_en" else "EN→XX"
            print(f"| {name} | {label} | {tb:.1f} | {ta:.1f} | {len(texts) / tb:.2f} | {len(texts) / ta:.2f} | "
                  f"{tb / ta:.2f}× | {same}/{len(texts)} | {'yes' if after.fast.row_independent else 'no'} |",
                  flush=True)
    if "int8" in models:
        shutil.rmtree(models["int8"], ignore_errors=True)
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
