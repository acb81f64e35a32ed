"""Decoder-only export and ONNX greedy decoding against PyTorch: real torch, real ONNX Runtime, no mocks.

Tiny random-weight Llama (tied embeddings, grouped K/V heads), Qwen2 (untied, attention biases) and GPT-2 (learned
positions, Conv1D) models are built from configs here (seeded), saved with save_pretrained and loaded back through
the real export path. The oracle is transformers itself: its forward for logits, its generate() for greedy
decoding. The real SmolLM2 model is tested in test_smollm2.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

import numpy as np  # noqa: E402
import onnx  # noqa: E402

from qbench.backends.ort import OrtSession  # noqa: E402
from qbench.config.errors import ConfigError, ModelError  # noqa: E402
from qbench.models.causal_lm import (export_causal_lm, load_export, past_names,  # noqa: E402
                                     present_names)
from qbench.models.lm_decode import CausalDecoder, left_pad, time_prefill_decode, trim  # noqa: E402
from qbench.quantize.roles import find_roles  # noqa: E402

FAMILIES = ("llama", "qwen2", "gpt2")
VOCAB, LAYERS = 101, 2  # 101: no weight of these models has a dim of that size by chance


def build_model(family: str, out: Path) -> Path:
    from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM)

    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2)
    llama_like = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.2, **common)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**llama_like, tie_word_embeddings=True, pad_token_id=0))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**llama_like, tie_word_embeddings=False))
    else:
        model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=LAYERS, n_head=4, n_positions=64,
                                           initializer_range=0.2, **common))
    model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory, one_torch_thread):
    root = tmp_path_factory.mktemp("causal-lm")
    out = {}
    for family in FAMILIES:
        src = build_model(family, root / family)
        out[family] = (src, export_causal_lm(str(src), root / "cache"))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_export_matches_pytorch(exported, family):
    from transformers import AutoModelForCausalLM

    src, spec = exported[family]
    assert not spec.from_cache and spec.num_layers == LAYERS and spec.vocab_size == VOCAB
    assert spec.num_kv_heads == (4 if family == "gpt2" else 2)  # Llama/Qwen2: grouped K/V heads
    assert spec.tied_embeddings is (family != "qwen2")
    assert spec.max_abs_diff < 1e-5 and spec.past_max_abs_diff < 1e-5 and spec.rel_diff < 1e-5
    graph = onnx.load(str(spec.onnx_path), load_external_data=False).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask", *past_names(LAYERS)]
    assert [o.name for o in graph.output] == ["logits", *present_names(LAYERS)]
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*graph.input, *graph.output]}
    assert dims["input_ids"] == ["batch", "seq"] and dims["attention_mask"] == ["batch", "total_len"]
    assert dims["past.0.key"] == ["batch", spec.num_kv_heads, "past_len", spec.head_dim]
    assert dims["logits"] == ["batch", "seq", VOCAB]

    # Independently of the export's own check: a fresh transformers model on a left-padded batch of new ids,
    # prefill then two single-token steps through the cache.
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()
    rng = np.random.default_rng(7)
    prompts = [rng.integers(3, VOCAB, n).tolist() for n in (5, 1, 3)]
    ids, mask = left_pad(prompts, spec.pad_token_id)
    steps = rng.integers(3, VOCAB, (3, 2))
    full_ids, full_mask = np.concatenate([ids, steps], 1), np.concatenate([mask, np.ones_like(steps)], 1)
    tm = torch.from_numpy(full_mask)
    pos = (tm.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(full_ids), attention_mask=tm, position_ids=pos).logits.numpy()
    with OrtSession(spec.onnx_path, 1, ["CPUExecutionProvider"]) as sess:
        dec = CausalDecoder(sess, spec)
        logits, past = dec.forward(ids, mask, None)
        got = [logits]
        for k in range(2):
            logits, past = dec.forward(steps[:, k:k + 1], full_mask[:, :ids.shape[1] + k + 1], past)
            got.append(logits)
    got = np.concatenate(got, 1)
    real = full_mask[:, :, None] == 1
    assert np.max(np.abs(np.where(real, got - ref, 0))) <= 1e-5 * np.max(np.abs(ref))
    # The last position of every row is real: its logits must have moved off zero (the test can fail).
    assert np.min(np.max(np.abs(ref[:, -1]), -1)) > 0.1


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_matches_generate(exported, family):
    from transformers import AutoModelForCausalLM

    src, spec = exported[family]
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()
    rng = np.random.default_rng(3)
    prompts = [rng.integers(3, VOCAB, n).tolist() for n in (1, 4, 7, 2, 9, 3)]
    with OrtSession(spec.onnx_path, 1, ["CPUExecutionProvider"]) as sess:
        got = CausalDecoder(sess, spec).greedy(prompts, 12)
    ids, mask = left_pad(prompts, spec.pad_token_id)
    with torch.no_grad():
        ref = model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                             do_sample=False, num_beams=1, max_new_tokens=12, pad_token_id=spec.pad_token_id)
    want = [trim(row, spec.eos_token_ids) for row in ref[:, ids.shape[1]:].tolist()]
    assert got == want
    assert sum(map(len, got)) >= 3 * len(prompts)  # real continuations, not all an immediate EOS


def test_cache_hit_and_rebuild(exported, tmp_path):
    src, spec = exported["llama"]
    again = export_causal_lm(str(src), spec.onnx_path.parent.parent)
    assert again.from_cache and again.key == spec.key and again.max_abs_diff == spec.max_abs_diff
    assert load_export(spec.onnx_path.parent).num_layers == LAYERS
    record = json.loads((spec.onnx_path.parent / "export.json").read_text())
    assert record["file"]["inputs"][:2] == ["input_ids", "attention_mask"] and record["exporter"] == "torchscript"
    # A changed weight is a different model: a different key.
    changed = tmp_path / "changed"
    build_model("llama", changed)
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(changed / "model.safetensors"))
    name = next(iter(weights))
    weights[name] = weights[name] + 1
    save_file(weights, str(changed / "model.safetensors"), metadata={"format": "pt"})
    other = export_causal_lm(str(changed), tmp_path / "cache")
    assert other.key != spec.key and not other.from_cache
    (other.onnx_path).unlink()  # a damaged entry is rebuilt, not trusted
    rebuilt = export_causal_lm(str(changed), tmp_path / "cache")
    assert not rebuilt.from_cache and rebuilt.onnx_path.is_file()


def test_tied_head_reads_the_embedding_table(exported):
    """The tied lm_head keeps one table in the file, read by the Gather and (transposed) by the logits MatMul."""
    for family, (_, spec) in exported.items():
        model = onnx.load(str(spec.onnx_path))
        (head,) = find_roles(model)["lm_head"]
        tables = [t for t in model.graph.initializer if VOCAB in t.dims and len(t.dims) == 2]
        if spec.tied_embeddings:
            assert "(tied to " in head.detail and len(tables) == 1, family
        else:
            assert "(untied)" in head.detail and len(tables) == 2


def test_timing_helper_runs(exported):
    _, spec = exported["llama"]
    with OrtSession(spec.onnx_path, 1, ["CPUExecutionProvider"]) as sess:
        t = time_prefill_decode(CausalDecoder(sess, spec), prompt_len=16, new_tokens=4, repeats=2)
    assert t["prefill_ms"] > 0 and t["decode_ms_per_token"] > 0 and t["prompt_len"] == 16


def test_bad_sources(tmp_path):
    with pytest.raises(ModelError, match="model path not found"):
        export_causal_lm(str(tmp_path / "nope" / "model"), tmp_path / "cache")
    with pytest.raises(ModelError, match=r"model package not installed: qbench_no_such_pkg \(pip install"):
        export_causal_lm("pkg:qbench_no_such_pkg", tmp_path / "cache")
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.gguf", "b.gguf"):
        (two / name).write_bytes(b"GGUF")
    with pytest.raises(ModelError, match="2 .gguf files"):
        export_causal_lm(str(two), tmp_path / "cache")
    with pytest.raises(ModelError, match="cannot load causal LM") as err:  # garbage bytes named .gguf
        export_causal_lm(str(two / "a.gguf"), tmp_path / "cache")
    assert "\n" not in str(err.value)
    assert not any((tmp_path / "cache").iterdir())  # the failed export left no entry behind
    with pytest.raises(ConfigError, match="opset"):
        export_causal_lm(str(two / "a.gguf"), tmp_path / "cache", opset=16)
    with pytest.raises(ConfigError, match="at least one token"):
        left_pad([[5], []], 0)


def test_source_resolution(tmp_path):
    """Hub ids cannot be loaded here (no hub): only how they resolve and key is tested."""
    from qbench.models.causal_lm import lm_cache_key, resolve_lm_source

    assert resolve_lm_source("HuggingFaceTB/SmolLM2-135M") == ("HuggingFaceTB/SmolLM2-135M", None)
    assert lm_cache_key("org/m", None, opset=17) != lm_cache_key("org/m", None, opset=17, revision="v2")
    one = tmp_path / "one"
    one.mkdir()
    (one / "m.gguf").write_bytes(b"GGUF-1")
    assert resolve_lm_source(str(one)) == (str(one.resolve()), "m.gguf")          # a folder with one .gguf
    assert resolve_lm_source(str(one / "m.gguf")) == (str(one.resolve()), "m.gguf")
    key = lm_cache_key(str(one), "m.gguf", opset=17)
    (one / "m.gguf").write_bytes(b"GGUF-2")                                       # the key follows the bytes
    assert lm_cache_key(str(one), "m.gguf", opset=17) != key
    (one / "config.json").write_text("{}")                                        # a transformers folder wins
    assert resolve_lm_source(str(one)) == (str(one.resolve()), None)
