"""The causal_lm task end to end on a tiny random Llama built here (tied embeddings, grouped K/V, SwiGLU; a byte-level
BPE tokenizer trained on the shipped calibration text), through ``qbench sweep``: FP32, FP16 and minmax INT8 variants
with and without the mlp_gate exclusion (built as TensorRT-RTX engines too, where it is installed) on
datasets/lm_text.yaml.

Oracles: transformers' own PyTorch forward for perplexity per domain, top-1 agreement and KL (the variant's logits
from a plain ONNX Runtime session on its artifact, one unpadded segment at a time), transformers' generate() for
FP32's greedy continuations, PyTorch forward hooks for the calibrated ranges (padding masked out), and the
perplexity gate's drops against the per-segment NLL the sweep wrote. The real SmolLM2-135M is checked in
test_smollm2.py::test_perplexity_matches_pytorch.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
ort = pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[2]
MAX_LEN = 64
VARIANTS = ["fp32", "fp16", "minmax+none+s8s8", "minmax+mlp_gate+s8s8"]
HAS_TRT = importlib.util.find_spec("tensorrt_rtx_bindings") is not None
GATE = "gate: {metric: perplexity, max_drop: 2.0, per: lang}\n"


def build_tiny_llama(out: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM

    texts = pd.read_parquet(ROOT / "datasets" / "lm_text" / "calibration.parquet").text.tolist()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=384, special_tokens=["<pad>", "<s>", "</s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.05,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0))
    model.save_pretrained(str(out))
    tok.save(str(out / "tokenizer.json"))
    return out


def _qbench(args, cwd, **env):
    e = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **env}
    return subprocess.run([sys.executable, "-m", "qbench", *args], capture_output=True, text=True, cwd=cwd, env=e)


def _config(tmp: Path, model: Path, extra: str = "") -> Path:
    cfg = tmp / "tiny-lm.yaml"
    cfg.write_text(textwrap.dedent(f"""
        name: tiny-lm
        task: causal_lm
        model: {{source: {model}, max_length: {MAX_LEN}}}
        data:
          manifest: {ROOT / 'datasets' / 'lm_text.yaml'}
          calibration: {{n: 16}}
        calibration: {{batch_size: 8}}
        sweep:
          baselines: [fp32, fp16]
          calibrators: [{{name: minmax}}]
          exclusions: [none, mlp_gate]
        generation: {{max_new_tokens: 8, batch_size: 8}}
        lm: {{prompts: 8, prompt_tokens: 8, latency_new_tokens: 4, calibration_decode_steps: 3}}
        measure: {{eval_batch_size: 8, latency: {{batch_sizes: [1, 8], warmup: 1, runs: 2, rounds: 1}}}}
    """) + ("tensorrt: {compute_capability: SM89}\n" if HAS_TRT else "") + extra)
    return cfg


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_torch_thread):
    tmp = tmp_path_factory.mktemp("lm-task")
    model = build_tiny_llama(tmp / "tiny-llama")
    r = _qbench(["sweep", str(_config(tmp, model, GATE)), "--out", str(tmp / "out"), "--no-progress"], tmp,
                QBENCH_CACHE=str(tmp / "cache"))
    assert r.returncode == 0, r.stderr[-3000:]
    (run_dir,) = (tmp / "out" / "tiny-lm").iterdir()
    df = pd.read_parquet(run_dir / "results.parquet")
    m = json.loads((run_dir / "manifest.json").read_text())
    return {"tmp": tmp, "model": model, "dir": run_dir, "df": df, "m": m,
            "samples": pd.read_parquet(run_dir / "samples.parquet")}


@pytest.fixture(scope="module")
def oracle(run):
    """Per evaluation segment: (domain, input ids, target ids, PyTorch FP32 log-probabilities [tokens, vocab])."""
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(run["model"]), dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    tok = Tokenizer.from_file(str(run["model"] / "tokenizer.json"))
    ev = pd.read_parquet(ROOT / "datasets" / "lm_text" / "evaluation.parquet")
    out = []
    with torch.no_grad():
        for text, dom in zip(ev.text, ev.domain):
            ids = tok.encode(text, add_special_tokens=False).ids[:MAX_LEN]
            inp = [2, *ids[:-1]]  # [EOS] + tokens: every token of the text is predicted
            logits = model(torch.tensor([inp])).logits[0].double()
            out.append((dom, inp, ids, torch.log_softmax(logits, -1).numpy()))
    return {"segs": out, "model": model, "tok": tok}


def _value(df, variant, metric, sl="all"):
    (v,) = df[(df.variant == variant) & (df.metric == metric) & (df.slice == sl)].value
    return float(v)


def test_every_variant_ran(run):
    df, m = run["df"], run["m"]
    assert list(m["variants"]) == VARIANTS and set(df[df.backend != "tensorrt"].status) == {"ok"} and m["complete"]
    assert m["task"] == "causal_lm" and m["data"]["evaluation"]["n"] == 64
    assert m["model"]["tied_embeddings"] and m["model"]["export_rel_diff"] < 1e-5


def test_fp32_perplexity_per_domain_equals_pytorch(run, oracle):
    df = run["df"]
    for dom in ("all", "bible", "debian"):
        nll = [-lp[np.arange(len(t)), t].sum() for d, _, t, lp in oracle["segs"] if dom in ("all", d)]
        n = sum(len(t) for d, _, t, _ in oracle["segs"] if dom in ("all", d))
        sl = "all" if dom == "all" else f"domain={dom}"
        assert _value(df, "fp32", "perplexity", sl) == pytest.approx(np.exp(np.sum(nll) / n), rel=1e-5)
    assert _value(df, "fp32", "tokens") == sum(len(t) for _, _, t, _ in oracle["segs"])


@pytest.mark.parametrize("variant", ["minmax+none+s8s8", "minmax+mlp_gate+s8s8", "fp16"])
def test_variant_perplexity_top1_and_kl_against_independent_runs(run, oracle, variant):
    """The variant's artifact on a plain ORT session, one unpadded segment at a time; FP32 from PyTorch."""
    from qbench.models.causal_lm import past_names

    df = run["df"]
    sess = ort.InferenceSession(run["m"]["variants"][variant]["artifact"], providers=["CPUExecutionProvider"])
    past = {i.name: np.zeros((1, 2, 0, 16), np.float32) for i in sess.get_inputs() if i.name.startswith("past.")}
    assert len(past) == len(past_names(2))
    nll = {"bible": 0.0, "debian": 0.0}
    toks = {"bible": 0, "debian": 0}
    agree = kl = 0.0
    for dom, inp, tgt, ref in oracle["segs"]:
        logits = sess.run(["logits"], {"input_ids": np.array([inp]), "attention_mask": np.ones((1, len(inp)),
                                                                                                 np.int64), **past})[0]
        lp = torch.log_softmax(torch.tensor(logits[0]).double(), -1).numpy()
        nll[dom] -= lp[np.arange(len(tgt)), tgt].sum()
        toks[dom] += len(tgt)
        agree += (lp.argmax(-1) == ref.argmax(-1)).sum()
        kl += (np.exp(ref) * (ref - lp)).sum()
    n = sum(toks.values())
    for dom in ("bible", "debian"):
        assert _value(df, variant, "perplexity", f"domain={dom}") == pytest.approx(np.exp(nll[dom] / toks[dom]),
                                                                                rel=2e-4)
    # The sweep scores left-padded batches against FP32 on ONNX Runtime; here one row at a time against PyTorch.
    assert _value(df, variant, "top1_agreement") == pytest.approx(agree / n, abs=0.01)
    assert _value(df, variant, "kl_vs_fp32") == pytest.approx(kl / n, rel=0.05, abs=2e-6)
    if variant != "fp16":
        assert _value(df, variant, "kl_vs_fp32") > 1e-5 and _value(df, variant, "top1_agreement") < 0.999


def test_perplexity_change_and_its_interval(run):
    df = run["df"]
    for v in VARIANTS[1:]:
        for sl in ("all", "domain=bible", "domain=debian"):
            ch = _value(df, v, "ppl_change_pct", sl)
            assert ch == pytest.approx(100 * (_value(df, v, "perplexity", sl) / _value(df, "fp32", "perplexity", sl)
                                              - 1), abs=1e-9)
            assert _value(df, v, "ppl_change_pct_lo", sl) <= ch <= _value(df, v, "ppl_change_pct_hi", sl)
    assert df[(df.variant == "fp32") & (df.metric == "ppl_change_pct")].empty
    # The per-segment rows the interval resamples: summed, they give the perplexity.
    s = run["samples"]
    q = s[s.variant == "minmax+none+s8s8"]
    assert np.exp(q.nll.sum() / q.tokens.sum()) == pytest.approx(_value(df, "minmax+none+s8s8", "perplexity"))


def test_greedy_generation_equals_transformers_generate(run, oracle):
    s = run["samples"]
    fp32 = s[(s.variant == "fp32") & s.generated.notna()]
    assert len(fp32) == 8
    ev = pd.read_parquet(ROOT / "datasets" / "lm_text" / "evaluation.parquet").set_index("id")
    model, tok = oracle["model"], oracle["tok"]
    for sid, got in zip(fp32.id, fp32.generated):
        prompt = tok.encode(ev.text[sid], add_special_tokens=False).ids[:8]
        with torch.no_grad():
            ref = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, pad_token_id=0)
        assert [int(t) for t in got.split()] == ref[0, len(prompt):].tolist()
    for v in VARIANTS[1:]:
        q = s[(s.variant == v) & s.generated.notna()]
        assert _value(run["df"], v, "generation_exact") == pytest.approx(
            float(np.mean(q.generated.to_numpy() == fp32.generated.to_numpy())))


def test_calibrated_ranges_mask_the_padding(run, oracle):
    """minmax's amax of the first q_proj input (the first RMSNorm's output) is the max |x| over the calibration
    segments' real tokens, each run alone in PyTorch: left padding in the batches added nothing."""
    import onnx

    m = run["m"]
    ids = set(m["data"]["calibration"]["sample_ids"])
    cal = pd.read_parquet(ROOT / "datasets" / "lm_text" / "calibration.parquet")
    texts = cal[cal.id.isin(ids)].text.tolist()
    assert len(texts) == 16
    seen = []
    model, tok = oracle["model"], oracle["tok"]
    h = model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda mod, a, o: seen.append(a[0].abs().max()))
    try:
        with torch.no_grad():
            for t in texts:
                model(torch.tensor([[2, *tok.encode(t, add_special_tokens=False).ids[:MAX_LEN][:-1]]]))
    finally:
        h.remove()
    graph = onnx.load(m["model"]["onnx_path"], load_external_data=False).graph
    (q,) = [n for n in graph.node if n.op_type == "MatMul" and "layers.0/self_attn/q_proj" in n.name]
    table = json.loads((run["dir"] / "tables" / "minmax.json").read_text())
    amax = {t["name"]: t["amax"] for t in table["tensors"]} if "tensors" in table else table["amax"]
    assert amax[q.input[0]] == pytest.approx(float(max(seen)), rel=1e-5)
    assert m["statistics"]["default"]["decode_steps"] == 3


def test_mlp_gate_keeps_exactly_the_down_projections_float(run):
    import onnx

    df = run["df"]
    for v in VARIANTS[2:]:
        excl = "mlp_gate" in v
        assert _value(df, v, "nodes_float", "op=MatMul") == (2 if excl else 0)
        g = onnx.load(run["m"]["variants"][v]["artifact"]).graph
        producer = {o: n.op_type for n in g.node for o in n.output}
        downs = [n for n in g.node if n.op_type == "MatMul" and "mlp/down_proj" in n.name]
        assert len(downs) == 2
        assert all((producer.get(n.input[0]) == "DequantizeLinear") is not excl for n in downs)


def test_prefill_and_decode_latency_at_batch_1_and_8(run):
    df, m = run["df"], run["m"]
    assert m["latency_inputs"] == {"batch=1": {"shape": [1, MAX_LEN]}, "batch=8": {"shape": [8, MAX_LEN]}}
    for v in VARIANTS:
        for b in ("batch=1", "batch=8"):
            pre, dec = _value(df, v, "prefill_p50_ms", b), _value(df, v, "decode_p50_ms_per_token", b)
            assert 0 < pre < _value(df, v, "latency_p50_ms", b) and 0 < dec
            assert pre + 4 * dec == pytest.approx(_value(df, v, "latency_p50_ms", b), rel=0.5)


def test_report_shows_perplexity_per_domain(run):
    r = _qbench(["report", str(run["dir"]), "--markdown"], run["tmp"])
    assert r.returncode == 0, r.stderr
    head = r.stdout.splitlines()[0]
    for col in ("Δppl % bible [95% CI]", "Δppl % debian [95% CI]", "top-1 agree", "KL nats/token",
                "prefill ms, batch=8", "decode ms/token, batch=1", "size MB"):
        assert col in head
    row = next(line for line in r.stdout.splitlines() if line.startswith("| `minmax+none+s8s8` |"))
    ch = _value(run["df"], "minmax+none+s8s8", "ppl_change_pct", "domain=bible")
    assert f"{ch:+.2f} [" in row
    html = (run["dir"] / "report.html").read_text()
    assert "Perplexity, agreement and decode latency" in html and "Δppl % debian" in html


@pytest.mark.parametrize("extra,words", [
    ("gate: {metric: bleu, max_drop: 1.0}\n", "gate.metric: causal_lm is gated on perplexity, got bleu"),
    ("", "ort_static is not available for causal_lm"),
])
def test_settings_the_task_cannot_honour_are_one_line(run, tmp_path, extra, words):
    cfg = _config(tmp_path, run["model"], extra)
    if not extra:
        cfg.write_text(cfg.read_text().replace("baselines: [fp32, fp16]", "baselines: [fp32, ort_static]"))
    r = _qbench(["validate", str(cfg)], run["tmp"])
    assert r.returncode == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_perplexity_gate_decides_from_the_segments(run):
    """``qbench gate`` on every variant: the exit code of its decision, and the decision's drops equal to the rise
    of exp(sum nll / sum tokens) per domain computed here from samples.parquet, and to the run's ppl_change_pct
    rows; the point-estimate gate rows; the Markdown table's gate column."""
    from qbench.report import decision as D

    s, df = run["samples"], run["df"]
    b = s[s.variant == "fp32"].set_index("id")
    states = {}
    for v in VARIANTS[1:]:
        q = s[s.variant == v].set_index("id").loc[b.index]
        dec = D.decide(s, v, "perplexity", 2.0, "lang")
        states[v] = dec.state
        assert [x.lang for x in dec.langs] == ["bible", "debian"]
        for x in dec.langs:
            m = (b.lang == x.lang).to_numpy()
            rise = 100 * (np.exp((q.nll[m].sum() - b.nll[m].sum()) / b.tokens[m].sum()) - 1)
            assert x.drop == pytest.approx(rise, rel=1e-9)
            assert x.drop == pytest.approx(_value(df, v, "ppl_change_pct", f"domain={x.lang}"), rel=1e-9)
        worst = max(dec.langs, key=lambda x: x.drop)
        assert _value(df, v, "worst_lang_drop", f"domain={worst.lang}") == pytest.approx(worst.drop, rel=1e-9)
        assert _value(df, v, "gate") == float(worst.drop <= 2.0)
        r = _qbench(["gate", str(run["dir"]), "--variant", v], run["tmp"])
        assert r.returncode == {D.PASS: 0, D.FAIL: 1, D.INCONCLUSIVE: 10}[dec.state], r.stderr
        assert r.stdout.strip() == f"{v}: {dec.summary()}"
    # FP16 keeps perplexity within a hundredth of a percent: shown within the 2% budget in both domains.
    assert states["fp16"] == D.PASS
    md = _qbench(["report", str(run["dir"]), "--markdown"], run["tmp"]).stdout
    assert "| gate |" in md.splitlines()[0] and "Gate: a variant fails when its perplexity rises by more than 2.0%" in md
    row = next(line for line in md.splitlines() if line.startswith("| `fp16` |"))
    assert "| PASS (" in row and "perplexity rise" in row
    html = (run["dir"] / "report.html").read_text()
    assert 'id="verdict-decision"' in html and "per domain" in html


@pytest.mark.skipif(not HAS_TRT, reason="TensorRT-RTX is not installed")
def test_tensorrt_rtx_engines_hold_the_formats(run):
    """SM89 engines built on the CPU from the KV-cache graph (prefill and decode shapes in one profile): linear
    layers by datatype from the build log, the mlp_gate exclusion held (the 2 down_proj MatMuls not in INT8)."""
    trt = {v: run["m"]["variants"][v]["tensorrt"] for v in VARIANTS}
    assert all(t["status"] == "ok" for t in trt.values()), trt
    assert trt["fp32"]["profile"] == {"batch": [1, 8, 8], "seq": [1, 64, 64], "past_len": [0, 64, 72],
                                      "total_len": [1, 65, 73]}
    summ = {v: t["graphs"]["model"]["summary"] for v, t in trt.items()}
    lin = {v: s["linear_nodes_by_dtype"] for v, s in summ.items()}
    assert lin["fp32"] == {"Float": 14} and lin["fp16"] == {"Half": 14} and lin["minmax+none+s8s8"] == {"Int8": 14}
    assert lin["minmax+mlp_gate+s8s8"] == {"Float": 2, "Int8": 12}
    gate = summ["minmax+mlp_gate+s8s8"]
    assert gate["excluded_held"] == 6 and gate["exclusion_violations"] == []  # SiLU's Sigmoid and Mul, the product
    # K x N of the 2 down_proj (128 x 64) out of q, o (64 x 64), k, v (64 x 32), gate, up (64 x 128), down per layer.
    per_layer = 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128
    assert gate["int8_linear_flop_share"] == pytest.approx(1 - 128 * 64 / per_layer)
