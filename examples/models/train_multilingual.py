"""Recipe for qbench's many-language benchmark model: one Marian-architecture model, XX->EN and EN->XX.

Trained from scratch on datasets/debian_multi (32 languages; the training split is rebuilt by
datasets/scripts/extract_debian_multi.py). One shared Unigram vocabulary (SentencePiece-style Metaspace, trained
with Hugging Face `tokenizers` so qbench needs no sentencepiece at run time) and target-language tags in front of
the source, as Marian's OPUS-MT multilingual models do: ">>de<< Save the file" (EN->DE), ">>en<< Datei speichern"
(DE->EN). A deep encoder and a shallow decoder (6 + 3 layers) keep the weights under 30 M parameters and make
greedy decoding on a CPU cheap.

Steps; only `train` and `evaluate` want a GPU:

  # 1. CPU: the tokenizer (a sample of the training pairs, both sides, plus the tags)
  python examples/models/train_multilingual.py tokenizer --out examples/models/marian-debian-multi
  # 2. CPU: pack the training pairs as xz-compressed text chunks of at most --chunk-mib each (a GPU machine
  #    that receives files in limited parcels gets them one chunk at a time), plus the evaluation rows
  python examples/models/train_multilingual.py pack --tokenizer examples/models/marian-debian-multi --into .train
  # 3. GPU: train for a fixed time budget (both directions in every batch), then
  # 4. GPU: greedy FP32 decoding of 500 test segments per language and direction: chrF per language,
  #    direction and source domain, the copy-the-source baseline, runaway outputs; fp16 weights saved
  python examples/models/train_multilingual.py train --data .train --out /tmp/model --minutes 14
  python examples/models/train_multilingual.py evaluate --data .train --out /tmp/model

The shipped model (examples/models/marian-debian-multi) was made this way, with these differences, all
recorded in its train_log.json: the tokenizer was trained on the GPU machine from the packed chunks
(`tokenizer --chunks DIR --sample-per-lang 10000`, 16 cores instead of 2 busy ones); training used the first
three chunks (942,290 pairs) and `--minutes 13`; scores.json comes from `evaluate` on the fp16 weights loaded in
FP32 (500 test segments per language and direction), and scores_250_before_fp16.json from the first `evaluate`
on the FP32 weights with the test rows cut to 250 per language.

Needs torch, transformers, tokenizers, pyarrow and sacrebleu (`pip install 'qbench-workbench[export]'`).
"""
from __future__ import annotations

import argparse
import collections
import json
import lzma
import math
import random
import time
from pathlib import Path

SPECIALS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2: Marian's convention (pad doubles as decoder start)
REPO = Path(__file__).resolve().parents[2]
MANIFEST_DIR = REPO / "datasets"


def tag(lang: str) -> str:
    return f">>{lang}<<"


def read_parquet(name: str, columns=("en", "xx", "lang", "source")):
    import pyarrow.parquet as pq

    t = pq.read_table(MANIFEST_DIR / "debian_multi" / f"{name}.parquet", columns=list(columns))
    return list(zip(*(t.column(c).to_pylist() for c in columns)))


def capped_train(cap: int, seed: int):
    """The training pairs, at most `cap` per language (a random sample), so no language crowds out the rest."""
    rows = read_parquet("train")
    by = collections.defaultdict(list)
    for r in rows:
        by[r[2]].append(r)
    rng = random.Random(seed)
    out = []
    for lang in sorted(by):
        rs = by[lang]
        rng.shuffle(rs)
        out += rs[:cap]
    return out


# --------------------------------------------------------------------------------------------- tokenizer
def cmd_tokenizer(a) -> None:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    if a.chunks:  # on the GPU machine, from the packed chunks (the parquet file stays behind)
        by = collections.defaultdict(list)
        for lang, en, xx in load_pairs(a.chunks):
            if len(by[lang]) < a.sample_per_lang:
                by[lang].append((en, xx, lang))
        rows = [r for lang in sorted(by) for r in by[lang]]
    else:
        rows = capped_train(a.sample_per_lang, a.seed)
    langs = sorted({r[2] for r in rows})
    tags = [tag(x) for x in ["en"] + langs]
    tok = Tokenizer(models.Unigram())
    # NFC only: NFKC would fold CJK full-width punctuation that the references keep.
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Strip()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=a.vocab, special_tokens=SPECIALS + tags, unk_token="<unk>",
                                      max_piece_length=16, show_progress=False)
    # English once per pair would give it half the vocabulary: each language's side once, English once overall
    texts = sorted({r[0] for r in rows}) + [r[1] for r in rows]
    random.Random(a.seed).shuffle(texts)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A $B </s>",
                                                       special_tokens=[("</s>", tok.token_to_id("</s>"))])
    a.out.mkdir(parents=True, exist_ok=True)
    tok.save(str(a.out / "tokenizer.json"))
    (a.out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 512, "pad_token": "<pad>",
        "eos_token": "</s>", "unk_token": "<unk>", "padding_side": "right", "truncation_side": "right",
        "additional_special_tokens": tags}, indent=1) + "\n")
    # EN->XX by default; an XX->EN sweep sets the model's source_prefix to ">>en<< " in its config
    (a.out / "qbench.json").write_text(json.dumps({
        "source_prefix": ">>{lang}<< ", "source_prefix_xx_en": ">>en<< ", "languages": langs,
        "directions": ["en_xx", "xx_en"],
        "tokenizer": {"kind": "unigram", "vocab": tok.get_vocab_size(), "trained_on": "debian_multi train",
                      "sample_per_lang": a.sample_per_lang}}, indent=1) + "\n")
    unk = sum(tok.encode(t).ids.count(2) for t in texts[:5000])
    print(f"tokenizer: vocab {tok.get_vocab_size()}, {len(langs)} languages, unk tokens in 5000 texts: {unk}")


# --------------------------------------------------------------------------------------------- pack
def cmd_pack(a) -> None:
    import shutil

    a.into.mkdir(parents=True, exist_ok=True)
    rows = capped_train(a.cap, a.seed)
    random.Random(a.seed + 1).shuffle(rows)
    limit = int(a.chunk_mib * 2**20)
    k, buf, n_rows = 0, [], 0

    def flush():
        nonlocal k, buf
        data = lzma.compress("".join(buf).encode("utf-8"), preset=6)
        (a.into / f"train-{k:02d}.tsv.xz").write_bytes(data)
        print(f"train-{k:02d}.tsv.xz: {len(buf)} pairs, {len(data) / 2**20:.2f} MiB")
        k, buf = k + 1, []

    # compressed size grows almost linearly: estimate 0.3 of raw, then split where a chunk would pass the limit
    raw = 0
    for en, xx, lang, _src in rows:
        line = f"{lang}\t{en.replace(chr(9), ' ')}\t{xx.replace(chr(9), ' ')}\n"
        buf.append(line)
        raw += len(line.encode("utf-8"))
        n_rows += 1
        if raw * 0.3 > limit:
            flush()
            raw = 0
    if buf:
        flush()
    # evaluation rows: the first n test rows per language (file order is by id, a hash: a fixed random sample),
    # and a small development set from calibration (never the test split) for the training log
    ev = {"test": [], "dev": []}
    for split, n, key in (("test", a.test_n, "test"), ("calibration", a.dev_n, "dev")):
        per = collections.Counter()
        for en, xx, lang, src in read_parquet(split):
            if per[lang] < n:
                per[lang] += 1
                ev[key].append([lang, en, xx, src])
    (a.into / "eval.json").write_text(json.dumps(ev, ensure_ascii=False))
    for f in ("tokenizer.json", "tokenizer_config.json", "qbench.json"):
        if (a.tokenizer / f).is_file():
            shutil.copy(a.tokenizer / f, a.into / f)
        else:
            print(f"warning: {a.tokenizer / f} not found: copy it into {a.into} before training")
    shutil.copy(Path(__file__), a.into / "train_multilingual.py")
    print(f"{n_rows} pairs in {k} chunks; eval: {len(ev['test'])} test, {len(ev['dev'])} dev rows")


# --------------------------------------------------------------------------------------------- train
def load_pairs(data: Path):
    rows = []
    for f in sorted(data.glob("train-*.tsv.xz")):
        for line in lzma.decompress(f.read_bytes()).decode("utf-8").splitlines():
            lang, en, xx = line.split("\t")
            rows.append((lang, en, xx))
    return rows


def build_batches(tok, rows, max_tokens: int, max_len: int, upsample: dict, device, seed: int):
    """Both directions of every pair, tokenised, cut into length-bucketed padded batches that live on the GPU."""
    import numpy as np
    import torch

    en_ids = tok.encode_batch([r[1] for r in rows])
    xx_ids = tok.encode_batch([r[2] for r in rows])
    tid = {lang: tok.token_to_id(tag(lang)) for lang in {r[0] for r in rows} | {"en"}}
    ex = []
    for (lang, _, _), e, x in zip(rows, en_ids, xx_ids):
        e, x = e.ids[:max_len], x.ids[:max_len]
        for _ in range(upsample.get(lang, 1)):
            ex.append(([tid[lang]] + e, x))      # EN -> XX
            ex.append(([tid["en"]] + x, e))      # XX -> EN
    rng = random.Random(seed)
    order = sorted(range(len(ex)), key=lambda i: (len(ex[i][0]) + rng.random(), len(ex[i][1])))
    batches, cur, longest = [], [], 0
    for i in order + [None]:
        if i is not None:
            ls = max(len(ex[i][0]), len(ex[i][1]))
        if cur and (i is None or max(longest, ls) * (len(cur) + 1) * 2 > max_tokens):
            s_len = max(len(ex[j][0]) for j in cur)
            t_len = max(len(ex[j][1]) for j in cur)
            src = np.zeros((len(cur), s_len), dtype=np.int64)
            lab = np.full((len(cur), t_len), -100, dtype=np.int64)
            for r, j in enumerate(cur):
                src[r, : len(ex[j][0])] = ex[j][0]
                lab[r, : len(ex[j][1])] = ex[j][1]
            batches.append((torch.from_numpy(src).to(device), torch.from_numpy(lab).to(device)))
            cur, longest = [], 0
        if i is not None:
            cur.append(i)
            longest = max(longest, ls)
    n_tok = sum(int((s != 0).sum()) + int((lab != -100).sum()) for s, lab in batches)
    return batches, len(ex), n_tok


def translate(model, tok, srcs: list[str], tags_: list[str], device, batch_tokens: int = 60000,
              max_new: int = 200, dtype=None):
    """Greedy decoding; returns (text, number of generated tokens, hit the length cap) per source."""
    import torch

    model.eval()
    enc = tok.encode_batch([f"{t} {s}" for t, s in zip(tags_, srcs)])
    ids = [e.ids[:256] for e in enc]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: dict[int, tuple[str, int, bool]] = {}
    k = 0
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype or torch.bfloat16,
                                         enabled=dtype is not None and device.type == "cuda"):
        while k < len(order):
            L = len(ids[order[min(k + 1, len(order) - 1)]])
            n = max(1, min(1024, batch_tokens // (max(L, 8) * 3)))
            idx = order[k: k + n]
            k += n
            L = max(len(ids[i]) for i in idx)
            x = torch.tensor([ids[i] + [0] * (L - len(ids[i])) for i in idx], device=device)
            cap = min(max_new, int(L * 2.5) + 10)
            g = model.generate(input_ids=x, attention_mask=(x != 0).long(), num_beams=1, do_sample=False,
                               max_new_tokens=cap)
            for i, row in zip(idx, g.tolist()):
                toks = [t for t in row[1:] if t not in (0, 1)]
                out[i] = (tok.decode(toks, skip_special_tokens=True), len(toks), 1 not in row[1:])
    model.train()
    return [out[i] for i in range(len(srcs))]


def chrf_by(hyps, refs, keys):
    import sacrebleu

    by = collections.defaultdict(list)
    for i, k in enumerate(keys):
        by[k].append(i)
    return {k: sacrebleu.corpus_chrf([hyps[i] for i in ix], [[refs[i] for i in ix]]).score
            for k, ix in sorted(by.items())}


def dev_score(model, tok, dev, device):
    srcs = [r[1] for r in dev] + [r[2] for r in dev]
    tags_ = [tag(r[0]) for r in dev] + [">>en<<"] * len(dev)
    refs = [r[2] for r in dev] + [r[1] for r in dev]
    keys = ["en_xx"] * len(dev) + ["xx_en"] * len(dev)
    hyps = [h for h, _, _ in translate(model, tok, srcs, tags_, device, dtype=__import__("torch").bfloat16)]
    return chrf_by(hyps, refs, keys)


def cmd_train(a) -> None:
    import torch
    from tokenizers import Tokenizer
    from transformers import MarianConfig, MarianMTModel
    from transformers.models.marian.modeling_marian import shift_tokens_right

    torch.manual_seed(a.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t_start = time.time()
    tok = Tokenizer.from_file(str(a.data / "tokenizer.json"))
    rows = load_pairs(a.data)
    counts = collections.Counter(r[0] for r in rows)
    # languages with little data are seen more often (at most 4x), so that they are not drowned out
    upsample = {lang: max(1, min(4, a.min_pairs // max(n, 1))) for lang, n in counts.items()}
    batches, n_ex, n_tok = build_batches(tok, rows, a.max_tokens, a.max_len, upsample, device, a.seed)
    ev = json.loads((a.data / "eval.json").read_text())
    dev = ev["dev"]
    prep_s = time.time() - t_start
    up = {k: v for k, v in upsample.items() if v > 1}
    print(f"{len(rows)} pairs, {n_ex} examples, {len(batches)} batches, {n_tok / 1e6:.1f} M tokens per epoch, "
          f"prepared in {prep_s:.0f} s; upsampled: {up}", flush=True)
    cfg = MarianConfig(
        vocab_size=tok.get_vocab_size(), d_model=a.d_model, encoder_layers=a.enc_layers,
        decoder_layers=a.dec_layers, encoder_attention_heads=a.heads, decoder_attention_heads=a.heads,
        encoder_ffn_dim=4 * a.d_model, decoder_ffn_dim=4 * a.d_model, max_position_embeddings=512,
        dropout=a.dropout, attention_dropout=0.0, activation_dropout=0.0, activation_function="swish",
        scale_embedding=True, share_encoder_decoder_embeddings=True, tie_word_embeddings=True,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, forced_eos_token_id=1,
        max_length=256, num_beams=1)
    model = MarianMTModel(cfg).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params {n_params / 1e6:.2f} M, device {device}", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.98), weight_decay=0.01,
                            fused=device.type == "cuda")
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-100, label_smoothing=a.label_smoothing)
    budget, t0, eval_s = a.minutes * 60, time.time(), 0.0
    step, epoch, tokens, log = 0, 0, 0, []
    next_eval = a.eval_every
    rng = random.Random(a.seed)
    done = False
    while not done:
        order = list(range(len(batches)))
        rng.shuffle(order)
        for b in order:
            src, lab = batches[b]
            elapsed = time.time() - t0 - eval_s
            frac = min(1.0, elapsed / budget)
            # linear warm-up, then cosine decay over the time budget (the budget, not a step count, is fixed)
            lr = a.lr * min(1.0, (step + 1) / a.warmup) * (0.5 * (1 + math.cos(math.pi * frac)) * 0.97 + 0.03)
            for g in opt.param_groups:
                g["lr"] = lr
            dec_in = shift_tokens_right(lab, 0, 0)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(input_ids=src, attention_mask=(src != 0), decoder_input_ids=dec_in).logits
            loss = loss_fn(logits.float().view(-1, logits.size(-1)), lab.view(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            tokens += int(src.numel() + lab.numel())
            if elapsed >= next_eval or elapsed >= budget:
                te = time.time()
                d = dev_score(model, tok, dev, device) if dev else {}
                log.append({"step": step, "epoch": epoch, "s": round(elapsed, 1), "loss": round(loss.item(), 4),
                            "lr": lr, "tokens_per_s": round(tokens / max(elapsed, 1e-9)),
                            **{f"dev_chrf_{k}": round(v, 2) for k, v in d.items()}})
                print(json.dumps(log[-1]), flush=True)
                next_eval += a.eval_every
                eval_s += time.time() - te
            if elapsed >= budget:
                done = True
                break
        epoch += 1
    a.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(a.out / "fp32"), safe_serialization=True)
    result = {"params": n_params, "steps": step, "epochs": round(step / len(batches), 2),
              "train_seconds": round(time.time() - t0 - eval_s, 1), "prepare_seconds": round(prep_s, 1),
              "pairs": len(rows), "pairs_per_language": dict(sorted(counts.items())), "upsample": upsample,
              "tokens_per_epoch": n_tok,
              "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "transformers": __import__("transformers").__version__,
              "seed": a.seed, "args": {k: str(v) for k, v in vars(a).items()}, "dev_log": log}
    (a.out / "train_log.json").write_text(json.dumps(result, indent=1) + "\n")


# --------------------------------------------------------------------------------------------- evaluate
def cmd_evaluate(a) -> None:
    import shutil

    import sacrebleu
    import torch
    from tokenizers import Tokenizer
    from transformers import MarianMTModel

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok = Tokenizer.from_file(str(a.data / "tokenizer.json"))
    model = MarianMTModel.from_pretrained(str(a.out / "fp32"), dtype=torch.float32).to(device)
    test = json.loads((a.data / "eval.json").read_text())["test"]
    res = {}
    t0 = time.time()
    for direction in ("xx_en", "en_xx"):
        srcs = [r[2] if direction == "xx_en" else r[1] for r in test]
        refs = [r[1] if direction == "xx_en" else r[2] for r in test]
        tags_ = [">>en<<" if direction == "xx_en" else tag(r[0]) for r in test]
        out = translate(model, tok, srcs, tags_, device)          # FP32: no autocast
        hyps = [h for h, _, _ in out]
        # runaway: no end of sentence within the cap, or more than three times the reference's length plus 20
        run = [cap or len(h) > 3 * len(ref) + 20 for (h, _, cap), ref in zip(out, refs)]
        langs = [r[0] for r in test]
        per_lang = chrf_by(hyps, refs, langs)
        copy = chrf_by(srcs, refs, langs)
        dom = chrf_by(hyps, refs, [f"{r[0]}|{r[3]}" for r in test])
        runaway = collections.Counter(lang for lang, x in zip(langs, run) if x)
        n = collections.Counter(langs)
        res[direction] = {
            "mean_chrf": sum(per_lang.values()) / len(per_lang),
            "mean_copy_chrf": sum(copy.values()) / len(copy),
            "corpus_chrf": sacrebleu.corpus_chrf(hyps, [refs]).score,
            "per_language": {lang: {"chrf": round(per_lang[lang], 2), "copy_chrf": round(copy[lang], 2),
                                    "margin": round(per_lang[lang] - copy[lang], 2), "n": n[lang],
                                    "runaway": runaway[lang], "runaway_pct": round(100 * runaway[lang] / n[lang], 2)}
                             for lang in per_lang},
            "per_language_source": {k: round(v, 2) for k, v in dom.items()},
            "examples": [[langs[i], srcs[i], hyps[i], refs[i]] for i in range(0, len(test), max(1, len(test) // 40))],
        }
        r = res[direction]
        worst = min(r["per_language"].items(), key=lambda kv: kv[1]["margin"])
        print(f"{direction}: mean chrF {r['mean_chrf']:.2f} (copy {r['mean_copy_chrf']:.2f}); smallest margin "
              f"{worst[0]} {worst[1]['margin']}; max runaway "
              f"{max(v['runaway_pct'] for v in r['per_language'].values())}%", flush=True)
    res["decode_seconds"] = round(time.time() - t0, 1)
    res["decoding"] = "greedy, FP32, max_new_tokens = min(200, 2.5 x source tokens + 10)"
    (a.out / "scores.json").write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n")
    half = MarianMTModel.from_pretrained(str(a.out / "fp32"), dtype=torch.float16)
    half.generation_config.max_length = 256
    half.generation_config.num_beams = 1
    half.save_pretrained(str(a.out / "fp16"), safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "qbench.json"):
        shutil.copy(a.data / f, a.out / "fp16" / f)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tokenizer")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--vocab", type=int, default=30000)
    t.add_argument("--chunks", type=Path, default=None, help="train on packed chunks instead of the parquet file")
    t.add_argument("--sample-per-lang", type=int, default=8000)
    t.add_argument("--seed", type=int, default=0)
    k = sub.add_parser("pack")
    k.add_argument("--tokenizer", type=Path, required=True)
    k.add_argument("--into", type=Path, required=True)
    k.add_argument("--cap", type=int, default=50000, help="training pairs per language at most")
    k.add_argument("--chunk-mib", type=float, default=10.0)
    k.add_argument("--test-n", type=int, default=500)
    k.add_argument("--dev-n", type=int, default=25)
    k.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("train")
    r.add_argument("--data", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--minutes", type=float, default=14.0)
    r.add_argument("--d-model", type=int, default=384)
    r.add_argument("--enc-layers", type=int, default=6)
    r.add_argument("--dec-layers", type=int, default=3)
    r.add_argument("--heads", type=int, default=6)
    r.add_argument("--dropout", type=float, default=0.1)
    r.add_argument("--label-smoothing", type=float, default=0.1)
    r.add_argument("--lr", type=float, default=1e-3)
    r.add_argument("--warmup", type=int, default=800)
    r.add_argument("--max-tokens", type=int, default=40000)
    r.add_argument("--max-len", type=int, default=128)
    r.add_argument("--min-pairs", type=int, default=20000, help="languages below this are upsampled")
    r.add_argument("--eval-every", type=float, default=180.0)
    r.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("evaluate")
    e.add_argument("--data", type=Path, required=True)
    e.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    {"tokenizer": cmd_tokenizer, "pack": cmd_pack, "train": cmd_train, "evaluate": cmd_evaluate}[a.cmd](a)


if __name__ == "__main__":
    main()
