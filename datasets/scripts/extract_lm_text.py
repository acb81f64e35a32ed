"""Held-out English text for the causal_lm task: two domains, segments of about 80 words.

- ``bible``: World English Bible verses (public domain) from datasets/kjv_web (``reference`` column). The evaluation
  split's verses of one chapter, in verse order, joined until about 80 words: a chapter excerpt. Calibration text comes
  the same way from the kjv_web calibration split (disjoint verses).
- ``debian``: English LibreOffice help text (MPL-2.0, Debian 12 package libreoffice-help-en-us; see
  datasets/debian_multi/PROVENANCE.yaml) from datasets/debian_multi (``en`` column, ``source == libreoffice-help``):
  distinct help sentences of 6+ words, in id order, joined until about 80 words. Evaluation from the debian_multi test
  split, calibration from its calibration split (the two are held out by normalised English upstream).

Writes datasets/lm_text/{calibration,evaluation}.parquet (columns id, text, domain, licence) and prints their sha256.
Deterministic: no randomness, rows in a fixed order.

    python datasets/scripts/extract_lm_text.py            # --words 80 --n-eval 32 --n-calib 48
"""

from __future__ import annotations

import argparse
import hashlib
import re
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def _verse_key(vid: str) -> tuple[str, int, int]:
    book, ch, v = vid.rsplit(".", 2)
    return book, int(ch), int(v)


def bible_segments(split: str, words: int, n: int) -> list[dict]:
    df = pd.read_parquet(ROOT / "kjv_web" / f"{split}.parquet")
    df = df.assign(key=df.id.map(_verse_key)).sort_values("key")
    chapters: dict[tuple[str, int], list[tuple[int, str]]] = {}
    for key, text in zip(df.key, df.reference):
        chapters.setdefault(key[:2], []).append((key[2], text))
    out = []
    for (book, ch), verses in chapters.items():
        seg, first = [], verses[0][0]
        for _, text in verses:
            seg.append(text.strip())
            if sum(len(s.split()) for s in seg) >= words:
                break
        if sum(len(s.split()) for s in seg) >= words // 2:
            out.append({"id": f"bible:{book}.{ch}.{first}", "text": " ".join(seg), "domain": "bible",
                        "licence": "public-domain (World English Bible)"})
    # Spread over the whole Bible: every k-th chapter excerpt.
    step = max(1, len(out) // n)
    return out[::step][:n]


def debian_segments(split: str, words: int, n: int) -> list[dict]:
    df = pd.read_parquet(ROOT / "debian_multi" / f"{split}.parquet")
    df = df[(df.source == "libreoffice-help") & (df.words >= 6)]
    seen, sents = set(), []
    for en in df.sort_values("id").en:
        norm = re.sub(r"\s+", " ", en.strip())
        if norm.lower() not in seen and norm[-1:] in ".:!?":
            seen.add(norm.lower())
            sents.append(norm)
    sents.sort(key=lambda s: hashlib.sha1(s.encode()).hexdigest())  # a fixed order that mixes topics
    out, seg = [], []
    for s in sents:
        seg.append(s)
        if sum(len(x.split()) for x in seg) >= words:
            text = " ".join(seg)
            out.append({"id": f"debian:{hashlib.sha1(text.encode()).hexdigest()[:12]}", "text": text,
                        "domain": "debian", "licence": "MPL-2.0 (LibreOffice help, Debian libreoffice-help-en-us)"})
            seg = []
        if len(out) == n:
            break
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--words", type=int, default=80)
    ap.add_argument("--n-eval", type=int, default=32)
    ap.add_argument("--n-calib", type=int, default=48)
    a = ap.parse_args()
    out = ROOT / "lm_text"
    out.mkdir(exist_ok=True)
    splits = {"evaluation": ("evaluation", "test", a.n_eval), "calibration": ("calibration", "calibration", a.n_calib)}
    for name, (bible_split, debian_split, n) in splits.items():
        rows = bible_segments(bible_split, a.words, n) + debian_segments(debian_split, a.words, n)
        path = out / f"{name}.parquet"
        pd.DataFrame(rows).to_parquet(path, index=False)
        print(f"{path.relative_to(ROOT)}: {len(rows)} rows, sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}")


if __name__ == "__main__":
    main()
