"""Structural roles on real torch exports: MiniLM (BERT), a tiny T5 and a tiny Marian, plus `qbench inspect`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from qbench.config.schema import ExclusionCfg  # noqa: E402
from qbench.quantize.qdq import load_model, plan  # noqa: E402
from qbench.quantize.roles import find_roles  # noqa: E402
from qbench.quantize.nodes import quantizable_nodes  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ENC, DEC, VOCAB = 2, 3, 96


class _Seq2Seq(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, decoder_input_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                          use_cache=False, return_dict=False)[0]


def _export(cls, config, out: Path, opset: int = 17) -> Path:
    """save_pretrained a random-weight model, reload it with eager attention, export the full forward."""
    torch.manual_seed(0)
    cls(config).save_pretrained(out / "hf")
    wrapper = _Seq2Seq(cls.from_pretrained(out / "hf", attn_implementation="eager")).eval()
    ids = torch.randint(3, VOCAB, (2, 7))
    args = (ids, torch.ones_like(ids), torch.randint(3, VOCAB, (2, 5)))
    axes = {"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"},
            "decoder_input_ids": {0: "b", 1: "t"}, "logits": {0: "b", 1: "t"}}
    path = out / "model.onnx"
    torch.onnx.export(wrapper, args, str(path), dynamo=False, opset_version=opset, output_names=["logits"],
                      input_names=["input_ids", "attention_mask", "decoder_input_ids"], dynamic_axes=axes)
    return path


@pytest.fixture(scope="module")
def t5(tmp_path_factory) -> Path:
    cfg = transformers.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=ENC, num_decoder_layers=DEC,
                                num_heads=4, relative_attention_num_buckets=8, decoder_start_token_id=0)
    return _export(transformers.T5ForConditionalGeneration, cfg, tmp_path_factory.mktemp("t5"))


@pytest.fixture(scope="module", params=[17, 14], ids=["opset17", "opset14"])
def marian(request, tmp_path_factory) -> tuple[Path, int]:
    """Opset 17 exports LayerNormalization ops; opset 14 decomposes every LayerNorm into 9 nodes."""
    cfg = transformers.MarianConfig(vocab_size=VOCAB, d_model=32, encoder_layers=ENC, decoder_layers=DEC,
                                    encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                                    decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=1,
                                    decoder_start_token_id=1)
    out = tmp_path_factory.mktemp(f"marian{request.param}")
    return _export(transformers.MarianMTModel, cfg, out, opset=request.param), request.param


def _gathers(groups) -> list[str]:
    model_nodes = [n for g in groups for n in g.nodes]
    return [n for n in model_nodes if n.endswith("/Gather")]


def test_minilm_roles(minilm):
    model = load_model(minilm.onnx_path)
    roles = find_roles(model)
    assert len(roles["layernorm"]) == 13 == 1 + 2 * 6       # embedding LN + two per layer
    assert {g.detail for g in roles["layernorm"]} == {"LayerNormalization op"}
    assert len(roles["softmax"]) == 6
    (emb,) = roles["embeddings"]                             # word + token type + position, then the LayerNorm
    assert sorted(_gathers(roles["embeddings"])) == [f"/model/embeddings/{t}_embeddings/Gather"
                                                     for t in ("position", "token_type", "word")]
    assert emb.output == "/model/embeddings/LayerNorm/LayerNormalization_output_0"
    assert "[30522x384] by input_ids" in emb.detail and "[512x384]" in emb.detail and "[2x384]" in emb.detail
    assert roles["lm_head"] == []                             # a sentence embedder: mean pooling, no head
    q = quantizable_nodes(model, roles)
    assert len(q) == 48
    assert sum("reads layernorm output" in d["roles"] for d in q) == 6 * 4   # Q, K, V and FFN-in per layer
    assert sum("reads softmax output" in d["roles"] for d in q) == 6


def test_t5_roles_and_exclusion(t5):
    model = load_model(t5)
    roles = find_roles(model)
    assert len(roles["layernorm"]) == (2 * ENC + 1) + (3 * DEC + 1)
    assert all(g.detail.startswith("RMSNorm (decomposed") for g in roles["layernorm"])
    assert len(roles["softmax"]) == ENC + 2 * DEC
    (head,) = roles["lm_head"]
    assert head.output == "logits" and head.detail.startswith(f"vocabulary logits [V={VOCAB}]")
    assert "(tied to" in head.detail
    tokens = [g for g in roles["embeddings"] if "token" in g.detail]
    assert len(tokens) == 2                                   # encoder and decoder lookups of the shared table
    q = quantizable_nodes(model, roles)
    assert len(q) == 59
    assert [d["roles"] for d in q if "lm_head" in d["roles"]] == [["lm_head"]]
    chosen, rep = plan(model, ExclusionCfg(roles=["layernorm"]))
    # Float: Q/K/V + FFN-in per encoder layer, self Q/K/V + cross Q + FFN-in per decoder layer, and
    # cross K/V, which read the encoder's final norm. T5 scales the last norm's output before lm_head.
    assert len(chosen) == 59 - (4 * ENC + 5 * DEC + 2 * DEC) and rep.warnings == []


def test_marian_roles(marian):
    path, opset = marian
    model = load_model(path)
    roles = find_roles(model)
    assert len(roles["layernorm"]) == 2 * ENC + 3 * DEC      # post-norm, no final or embedding LayerNorm
    want = "LayerNormalization op" if opset >= 17 else "LayerNorm (decomposed, 9 nodes)"
    assert {g.detail for g in roles["layernorm"]} == {want}
    (head,) = roles["lm_head"]
    assert head.output == "logits" and len(head.nodes) == 2   # the MatMul and final_logits_bias' Add
    assert head.detail.startswith(f"vocabulary logits [V={VOCAB}]")
    # The softmax groups include the NaN guard, so probs x V reads the group's output.
    q = quantizable_nodes(model, roles)
    assert sum("reads softmax output" in d["roles"] for d in q) == len(roles["softmax"]) == ENC + 2 * DEC
    assert len(roles["embeddings"]) == 2 and len(_gathers(roles["embeddings"])) == 4
    chosen, _ = plan(model, ExclusionCfg(roles=["attention_probs"]))
    assert len(chosen) == 59 - (ENC + 2 * DEC)
    # Fused or decomposed, the layernorm exclusion keeps the same MatMuls float: per encoder layer
    # FFN-in (Q/K/V read the previous layer's norm, layer 0's read the embeddings), per decoder layer
    # cross Q + FFN-in, cross K/V (the encoder's last norm), and lm_head; plus Q/K/V of layers >= 1.
    chosen, _ = plan(model, ExclusionCfg(roles=["layernorm"]))
    assert len(chosen) == 59 - (ENC + 3 * (ENC - 1) + 2 * DEC + 2 * DEC + 3 * (DEC - 1) + 1)


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qbench", "inspect", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_inspect(t5, tmp_path):
    r = _cli(t5)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["node", "op", "weight"]
    head_row = next(x for x in lines if x.startswith("/model/lm_head/MatMul"))
    assert head_row.split()[1:3] == ["MatMul", f"32x{VOCAB}"] and head_row.endswith("lm_head")
    summary = {x.split()[0]: int(x.split()[1]) for x in lines[lines.index("role groups:") + 1:]}
    # T5 v1.0's feed-forward is ReLU(x W_in) W_out: no gated MLP
    assert summary == {"layernorm": 2 * ENC + 1 + 3 * DEC + 1, "softmax": ENC + 2 * DEC, "embeddings": 4, "lm_head": 1,
                       "mlp_gate": 0}
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(t5.read_bytes()[: t5.stat().st_size // 2])
    r = _cli(bad)
    assert r.returncode == 4 and r.stdout == ""
    assert r.stderr.strip() == f"{bad}: not a readable ONNX model (DecodeError)"
