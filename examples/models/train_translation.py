"""Recipe for qbench's two benchmark translation models (Marian architecture, trained from scratch).

Two steps, so the GPU only does the part that needs it:

  # 1. on any machine (CPU, seconds): a joint Unigram tokenizer, SentencePiece-style (Metaspace), trained
  #    with Hugging Face `tokenizers` so that qbench needs no sentencepiece at run time
  python examples/models/train_translation.py tokenizer --manifest datasets/bible_en_es.yaml \
      --vocab 8000 --out examples/models/marian-en-es
  # 2. on a GPU (minutes): train, pick the best checkpoint on the calibration split (never the test split),
  #    score the test split with greedy and beam-4 decoding, save fp16 weights
  python examples/models/train_translation.py train --manifest datasets/bible_en_es.yaml \
      --out examples/models/marian-en-es --minutes 5

A multilingual model puts a target-language tag in front of each source (``--lang-tags``: ">>de<< Save"),
as Marian's OPUS-MT multilingual models do. The tag format is saved in ``qbench.json`` beside the weights,
and qbench's sweep reads it from there.

Needs torch, transformers, tokenizers, pandas/pyarrow and sacrebleu (`pip install 'qbench-workbench[export]'`).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import yaml

SPECIALS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2: Marian's convention (pad doubles as decoder start)


def read_split(manifest: Path, split: str):
    import pandas as pd

    m = yaml.safe_load(manifest.read_text(encoding="utf-8"))
    f = m["fields"]
    df = pd.read_parquet(manifest.parent / m["splits"][split])
    return [(str(r[f["text"]]), str(r[f["reference"]]), str(r[f["language"]]))
            for r in df.to_dict("records")]


def tag_of(lang: str) -> str:
    return f">>{lang}<<"


def cmd_tokenizer(a) -> None:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    rows = read_split(a.manifest, "train")
    langs = sorted({lang for _, _, lang in rows})
    tags = [tag_of(x) for x in langs] if a.lang_tags else []
    tok = Tokenizer(models.Unigram())
    # NFC only: NFKC would fold CJK full-width punctuation that the references keep.
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Strip()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=a.vocab, special_tokens=SPECIALS + tags, unk_token="<unk>",
                                      max_piece_length=16, show_progress=False)
    # Sources and targets both: one joint vocabulary, so encoder and decoder can share their embedding.
    texts = [s for s, _, _ in rows] + [t for _, t, _ in rows]
    random.Random(0).shuffle(texts)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A $B </s>",
                                                       special_tokens=[("</s>", tok.token_to_id("</s>"))])
    a.out.mkdir(parents=True, exist_ok=True)
    tok.save(str(a.out / "tokenizer.json"))
    (a.out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 512, "pad_token": "<pad>",
        "eos_token": "</s>", "unk_token": "<unk>", "padding_side": "right", "truncation_side": "right",
        "additional_special_tokens": tags}, indent=1) + "\n")
    (a.out / "qbench.json").write_text(json.dumps({
        "source_prefix": ">>{lang}<< " if a.lang_tags else "", "languages": langs,
        "tokenizer": {"kind": "unigram", "vocab": tok.get_vocab_size(), "trained_on": str(a.manifest.name)}},
        indent=1) + "\n")
    n_unk = sum(tok.encode(t).ids.count(2) for t in texts[:2000])
    print(f"tokenizer: vocab {tok.get_vocab_size()}, {len(langs)} languages, unk in 2000 texts: {n_unk}")


def encode(tok, rows, prefix: str, max_len: int):
    src = tok.encode_batch([prefix.format(lang=lang) + s for s, _, lang in rows])
    tgt = tok.encode_batch([t for _, t, _ in rows])
    return [(x.ids[:max_len], y.ids[:max_len]) for x, y in zip(src, tgt)]


def batches(pairs, max_tokens: int, rng: random.Random):
    """Length-bucketed batches of about max_tokens (source + target) tokens, in random order."""
    order = sorted(range(len(pairs)), key=lambda i: (len(pairs[i][0]) + rng.random(), len(pairs[i][1])))
    out, cur, longest = [], [], 0
    for i in order:
        longest = max(longest, len(pairs[i][0]), len(pairs[i][1]))
        if cur and longest * (len(cur) + 1) * 2 > max_tokens:
            out.append(cur)
            cur, longest = [], max(len(pairs[i][0]), len(pairs[i][1]))
        cur.append(i)
    if cur:
        out.append(cur)
    rng.shuffle(out)
    return out


def collate(pairs, idx, device):
    import numpy as np
    import torch

    s_len = max(len(pairs[i][0]) for i in idx)
    t_len = max(len(pairs[i][1]) for i in idx)
    src = np.zeros((len(idx), s_len), dtype=np.int64)
    lab = np.full((len(idx), t_len), -100, dtype=np.int64)
    for r, i in enumerate(idx):
        s, t = pairs[i]
        src[r, : len(s)] = s
        lab[r, : len(t)] = t
    src_t, lab_t = torch.from_numpy(src).to(device), torch.from_numpy(lab).to(device)
    return src_t, (src_t != 0).long(), lab_t


def translate(model, tok, rows, prefix: str, beams: int, device, batch: int = 200, max_new: int = 160):
    import torch

    outs: list[str] = []
    model.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
        res: dict[int, str] = {}
        for k in range(0, len(order), batch):
            idx = order[k: k + batch]
            enc = tok.encode_batch([prefix.format(lang=rows[i][2]) + rows[i][0] for i in idx])
            L = max(len(e.ids) for e in enc)
            ids = torch.tensor([e.ids + [0] * (L - len(e.ids)) for e in enc], device=device)
            gen = model.generate(input_ids=ids, attention_mask=(ids != 0).long(), num_beams=beams,
                                 do_sample=False, max_new_tokens=max_new)
            for i, g in zip(idx, gen.tolist()):
                res[i] = tok.decode(g, skip_special_tokens=True)
        outs = [res[i] for i in range(len(rows))]
    model.train()
    return outs


def scores(hyps, rows):
    """Per-language corpus BLEU and chrF, then their means (the model card's numbers)."""
    import sacrebleu

    by: dict[str, list[int]] = {}
    for i, (_, _, lang) in enumerate(rows):
        by.setdefault(lang, []).append(i)
    per = {}
    for lang, idx in sorted(by.items()):
        tokenize = "char" if lang.split("-")[0] in {"ja", "ko", "th", "zh"} else "13a"
        h, r = [hyps[i] for i in idx], [[rows[i][1] for i in idx]]
        per[lang] = {"bleu": sacrebleu.corpus_bleu(h, r, tokenize=tokenize).score,
                     "chrf": sacrebleu.corpus_chrf(h, r).score, "n": len(idx)}
    mean = {k: sum(v[k] for v in per.values()) / len(per) for k in ("bleu", "chrf")}
    return {"mean": mean, "per_language": per}


def cmd_train(a) -> None:
    import torch
    from transformers import MarianConfig, MarianMTModel, PreTrainedTokenizerFast
    from transformers.models.marian.modeling_marian import shift_tokens_right

    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok = PreTrainedTokenizerFast.from_pretrained(str(a.out))
    prefix = json.loads((a.out / "qbench.json").read_text())["source_prefix"]
    train = encode(tok._tokenizer, read_split(a.manifest, "train"), prefix, a.max_len)
    dev_rows = read_split(a.manifest, "calibration")
    rng.shuffle(dev_rows)
    dev_rows = dev_rows[: a.dev_n]
    test_rows = read_split(a.manifest, "test")
    cfg = MarianConfig(
        vocab_size=tok._tokenizer.get_vocab_size(), d_model=a.d_model, encoder_layers=a.layers,
        decoder_layers=a.layers, encoder_attention_heads=a.heads, decoder_attention_heads=a.heads,
        encoder_ffn_dim=4 * a.d_model, decoder_ffn_dim=4 * a.d_model, max_position_embeddings=512,
        dropout=a.dropout, attention_dropout=0.0, activation_dropout=0.0, activation_function="swish",
        scale_embedding=True, share_encoder_decoder_embeddings=True, tie_word_embeddings=True,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, forced_eos_token_id=1,
        max_length=256, num_beams=1)
    model = MarianMTModel(cfg).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params {n_params / 1e6:.2f}M, train pairs {len(train)}, device {device}", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.98), weight_decay=0.01,
                            fused=device.type == "cuda")
    budget = a.minutes * 60
    t0 = time.time()
    step, best, best_state, log, eval_s = 0, -1.0, None, [], 0.0
    next_eval = a.eval_every
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-100, label_smoothing=a.label_smoothing)
    done = False
    while not done:
        for idx in batches(train, a.max_tokens, rng):
            src, mask, lab = collate(train, idx, device)
            frac = min(1.0, (time.time() - t0 - eval_s) / budget)
            # Linear warm-up, then cosine decay over the time budget (the budget, not a step count, is fixed).
            lr = a.lr * min(1.0, (step + 1) / a.warmup) * (0.5 * (1 + math.cos(math.pi * frac)) * 0.95 + 0.05)
            for g in opt.param_groups:
                g["lr"] = lr
            dec_in = shift_tokens_right(lab, 0, 0)  # -100 becomes pad; decoder start is pad (id 0)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(input_ids=src, attention_mask=mask, decoder_input_ids=dec_in).logits
            loss = loss_fn(logits.float().view(-1, logits.size(-1)), lab.view(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            elapsed = time.time() - t0 - eval_s
            if elapsed >= next_eval or elapsed >= budget:
                te = time.time()
                dev = scores(translate(model, tok._tokenizer, dev_rows, prefix, 1, device), dev_rows)["mean"]
                key = dev["chrf"] if a.select == "chrf" else dev["bleu"]
                log.append({"step": step, "s": round(elapsed, 1), "loss": round(loss.item(), 4), "lr": lr, **dev})
                print(json.dumps(log[-1]), flush=True)
                if key > best:
                    best = key
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                next_eval += a.eval_every
                eval_s += time.time() - te
            if elapsed >= budget:
                done = True
                break
    train_s = time.time() - t0 - eval_s
    model.load_state_dict(best_state)
    result = {"params": n_params, "steps": step, "train_seconds": round(train_s, 1),
              "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "seed": a.seed, "args": {k: str(v) for k, v in vars(a).items()},
              "dev_log": log}
    for beams in (1, 4):
        hyps = translate(model, tok._tokenizer, test_rows, prefix, beams, device)
        result[f"test_beam{beams}"] = scores(hyps, test_rows)
        print(f"test beam {beams}: {json.dumps(result[f'test_beam{beams}']['mean'])}", flush=True)
    model = model.to(torch.float16)
    model.generation_config.max_length = 256
    model.generation_config.num_beams = 1
    model.save_pretrained(str(a.out), safe_serialization=True)
    (a.out / "train_log.json").write_text(json.dumps(result, indent=1) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tokenizer")
    t.add_argument("--manifest", type=Path, required=True)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--vocab", type=int, default=8000)
    t.add_argument("--lang-tags", action="store_true")
    r = sub.add_parser("train")
    r.add_argument("--manifest", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--minutes", type=float, default=5.0)
    r.add_argument("--d-model", type=int, default=256)
    r.add_argument("--layers", type=int, default=6)
    r.add_argument("--heads", type=int, default=4)
    r.add_argument("--dropout", type=float, default=0.1)
    r.add_argument("--label-smoothing", type=float, default=0.1)
    r.add_argument("--lr", type=float, default=7e-4)
    r.add_argument("--warmup", type=int, default=400)
    r.add_argument("--max-tokens", type=int, default=16000)
    r.add_argument("--max-len", type=int, default=160)
    r.add_argument("--eval-every", type=float, default=60.0)
    r.add_argument("--dev-n", type=int, default=400)
    r.add_argument("--select", choices=["bleu", "chrf"], default="bleu")
    r.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    cmd_tokenizer(a) if a.cmd == "tokenizer" else cmd_train(a)


if __name__ == "__main__":
    main()
