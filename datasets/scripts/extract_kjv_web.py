#!/usr/bin/env python3
"""Extract aligned KJV <-> WEB verse pairs from the SWORD modules via diatheke.

Requires the Debian packages ``diatheke``, ``sword-text-kjv`` and
``sword-text-web`` (modules ``engKJV2006eb`` and ``engWEB2015eb``).

Output (deterministic for a given seed and module versions):
    <out>/evaluation.parquet   2,000 pairs, no duplicate KJV or WEB text
    <out>/calibration.parquet  6,000 other pairs (disjoint ids and texts)
    --stats FILE               optional JSON with the counts of every cleaning step

Why OSIS output and not ``-f plain``:
  * ``-f plain`` breaks poetry over several lines, so verse boundaries have to be
    guessed; ``-f OSIS`` prints exactly one verse per line
    (``<heading>Book C:V: <text><milestone type="line"/>``), poetry lines already
    joined, which we verify (line count == label count).
  * Pre-verse headings (psalm titles, the acrostic letters of Ps 119, ...) are
    printed *before* the ``Book C:V:`` label.  diatheke does not reset them, so
    the last heading leaks onto every following verse of the run (KJV: the Ps 145
    title on ~14,800 verses; WEB: the 106-character "Psalm 151" title on ~9,600
    verses through Revelation).  Everything before the label is therefore
    discarded, never treated as verse text.
  * Footnotes and cross-references are switched on (``-o fs``) so that
    ``<note>`` elements can be removed explicitly; with them switched off
    diatheke deletes the note *and* the word gap it stood in
    ("God<note/>created" -> "Godcreated", "hear,<note/>the" -> "hear,the").
  * The KJV module leaks raw USFM character markers ("the \\nd LORD"), which
    are stripped as well.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import html
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

KJV_MODULE = "engKJV2006eb"
WEB_MODULE = "engWEB2015eb"
QUERY = "Gen 1:1-Rev 22:21"  # the whole module, in its own versification

# (OSIS id, name diatheke prints with locale "en"), canonical order.
PROTOCANON = [
    ("Gen", "Genesis"), ("Exod", "Exodus"), ("Lev", "Leviticus"), ("Num", "Numbers"),
    ("Deut", "Deuteronomy"), ("Josh", "Joshua"), ("Judg", "Judges"), ("Ruth", "Ruth"),
    ("1Sam", "I Samuel"), ("2Sam", "II Samuel"), ("1Kgs", "I Kings"), ("2Kgs", "II Kings"),
    ("1Chr", "I Chronicles"), ("2Chr", "II Chronicles"), ("Ezra", "Ezra"),
    ("Neh", "Nehemiah"), ("Esth", "Esther"), ("Job", "Job"), ("Ps", "Psalms"),
    ("Prov", "Proverbs"), ("Eccl", "Ecclesiastes"), ("Song", "Song of Solomon"),
    ("Isa", "Isaiah"), ("Jer", "Jeremiah"), ("Lam", "Lamentations"), ("Ezek", "Ezekiel"),
    ("Dan", "Daniel"), ("Hos", "Hosea"), ("Joel", "Joel"), ("Amos", "Amos"),
    ("Obad", "Obadiah"), ("Jonah", "Jonah"), ("Mic", "Micah"), ("Nah", "Nahum"),
    ("Hab", "Habakkuk"), ("Zeph", "Zephaniah"), ("Hag", "Haggai"), ("Zech", "Zechariah"),
    ("Mal", "Malachi"),
    ("Matt", "Matthew"), ("Mark", "Mark"), ("Luke", "Luke"), ("John", "John"),
    ("Acts", "Acts"), ("Rom", "Romans"), ("1Cor", "I Corinthians"),
    ("2Cor", "II Corinthians"), ("Gal", "Galatians"), ("Eph", "Ephesians"),
    ("Phil", "Philippians"), ("Col", "Colossians"), ("1Thess", "I Thessalonians"),
    ("2Thess", "II Thessalonians"), ("1Tim", "I Timothy"), ("2Tim", "II Timothy"),
    ("Titus", "Titus"), ("Phlm", "Philemon"), ("Heb", "Hebrews"), ("Jas", "James"),
    ("1Pet", "I Peter"), ("2Pet", "II Peter"), ("1John", "I John"), ("2John", "II John"),
    ("3John", "III John"), ("Jude", "Jude"), ("Rev", "Revelation of John"),
]
# Deuterocanonical books of the WEB module (NRSVA versification); parsed so that
# every line is accounted for, but they have no KJV counterpart.
DEUTEROCANON = [
    ("Tob", "Tobit"), ("Jdt", "Judith"), ("AddEsth", "Esther (Greek)"), ("Wis", "Wisdom"),
    ("Sir", "Sirach"), ("Bar", "Baruch"), ("PrAzar", "Prayer of Azariah"),
    ("Sus", "Susanna"), ("Bel", "Bel and the Dragon"), ("1Macc", "I Maccabees"),
    ("2Macc", "II Maccabees"), ("1Esd", "I Esdras"), ("PrMan", "Prayer of Manasses"),
    ("AddPs", "Additional Psalm"), ("3Macc", "III Maccabees"), ("2Esd", "II Esdras"),
    ("4Macc", "IV Maccabees"),
]
NAME_TO_OSIS = {name: osis for osis, name in PROTOCANON + DEUTEROCANON}
BOOK_ORDER = {osis: i for i, (osis, _) in enumerate(PROTOCANON)}

_names = sorted(NAME_TO_OSIS, key=len, reverse=True)
LABEL_RE = re.compile(
    r"(?:^|(?<=[\s>]))(" + "|".join(re.escape(n) for n in _names) + r") (\d+):(\d+): "
)
NOTE_RE = re.compile(r"<note\b[^>]*/>|<note\b[^>]*>.*?</note>", re.S)
TAG_RE = re.compile(r"<[^>]*>")
USFM_RE = re.compile(r"\\\+?[A-Za-z]+\d*\*?")
# A note sat where a word gap may have been: "God<note/>created".  Put a space
# back unless the next char closes a phrase or the previous one opens one.
SENTINEL = "\x00"
GLOSSARY_MARKER = "The following words used in the World English Bible"
MAX_VERSE_CHARS = 1000  # longest English verse (Esth 8:9) is ~530 chars


def run_diatheke(module: str) -> str:
    cmd = ["diatheke", "-b", module, "-f", "OSIS", "-o", "fs", "-l", "en", "-k", QUERY]
    res = subprocess.run(cmd, check=True, capture_output=True)
    return res.stdout.decode("utf-8")


def clean_text(body: str) -> str:
    s = NOTE_RE.sub(SENTINEL, body)
    s = TAG_RE.sub("", s)
    if "<" in s or ">" in s:
        raise ValueError(f"unbalanced markup left: {s!r}")
    s = html.unescape(s)
    s = re.sub(SENTINEL + r"+(?=[\s,.;:!?’”)\]…—-]|$)", "", s)
    s = re.sub(r"(?<=[\s“‘(\[—-])" + SENTINEL + "+", "", s)
    s = s.replace(SENTINEL, " ")
    s = USFM_RE.sub(" ", s)                      # "\\nd LORD" -> "LORD"
    s = s.replace("¶", " ")                      # KJV paragraph marks
    s = re.sub(r"[\[\]{}]", "", s)               # italics / added-word brackets
    s = re.sub(r"\s+", " ", s).strip()           # doubled spaces, stray newlines
    s = re.sub(r" (?=[,.;:!?’”)])", "", s)       # "word ." -> "word."
    return s


def parse_module(raw: str, module: str, stats: dict) -> dict:
    """Return {(osis_book, chapter, verse): text} for the 66 protocanonical books."""
    lines = raw.split("\n")
    footer = f"({module})"
    verses: dict = {}
    heads = collections.Counter()
    n_lines = n_deutero = n_head = n_notes = 0
    glossary_cut = None
    for line in lines:
        if not line.strip() or line.strip() == footer:
            continue
        n_lines += 1
        labels = list(LABEL_RE.finditer(line))
        if len(labels) != 1:
            raise ValueError(f"{module}: expected one verse label, got {len(labels)}: {line[:200]!r}")
        m = labels[0]
        heading = TAG_RE.sub("", NOTE_RE.sub("", line[: m.start()])).strip()
        if heading:
            n_head += 1
            heads[heading] += 1
        body = line[m.end():]
        n_notes += len(NOTE_RE.findall(body))
        osis = NAME_TO_OSIS[m.group(1)]
        if osis not in BOOK_ORDER:
            n_deutero += 1
            continue
        text = clean_text(body)
        key = (osis, int(m.group(2)), int(m.group(3)))
        if GLOSSARY_MARKER in text:
            before = len(text)
            text = text[: text.index(GLOSSARY_MARKER)].strip()
            glossary_cut = {"id": "%s.%d.%d" % key, "chars_before": before, "chars_after": len(text)}
        if key in verses:
            raise ValueError(f"{module}: duplicate key {key}")
        verses[key] = text
    stats.update(
        lines_parsed=n_lines,
        deuterocanon_verses_skipped=n_deutero,
        protocanon_keys=len(verses),
        empty_verses=sum(1 for t in verses.values() if not t),
        verses_with_leaked_heading_removed=n_head,
        distinct_headings=len(heads),
        most_common_heading=heads.most_common(1)[0] if heads else None,
        footnotes_removed=n_notes,
        glossary_cut=glossary_cut,
    )
    return verses


def osis_id(key) -> str:
    return "%s.%d.%d" % key


def sort_key(key):
    return (BOOK_ORDER[key[0]], key[1], key[2])


_STOP = set(
    "the and of to in that he for his they be is him not them it with all unto shall was my thou "
    "thy thee ye you your their will have from which but are as by this me on were so when upon had "
    "there then we who what our out said she her up at or an also hath no one into do did has come "
    "came let now its these those because if man men".split()
)


def _stems(text: str) -> set:
    words = re.findall(r"[a-z]+", text.lower())
    return {w[:5] for w in words if len(w) > 2 and w not in _STOP}


def _overlap(a: str, b: str) -> float:
    sa, sb = _stems(a), _stems(b)
    return len(sa & sb) / min(len(sa), len(sb)) if sa and sb else 0.0


def _swapped(kjv: dict, web: dict, key) -> bool:
    """True if this verse and an adjacent one are in opposite order in the two
    translations (e.g. Matt 23:13/14): the crossed pairing shares clearly more
    words than the pairing by key."""
    for d in (-1, 1):
        nkey = (key[0], key[1], key[2] + d)
        if not kjv.get(nkey) or not web.get(nkey):
            continue
        straight = _overlap(kjv[key], web[key]) + _overlap(kjv[nkey], web[nkey])
        crossed = _overlap(kjv[key], web[nkey]) + _overlap(kjv[nkey], web[key])
        if crossed > straight + 0.5:
            return True
    return False


def shift_diagnostic(pairs: list, web: dict) -> list:
    """Ids whose KJV verse shares clearly more words with the WEB verse before or
    after it than with its own.  Versification shifts (e.g. Job/Psalms in
    Hebrew numbering) would show up here as runs of consecutive ids."""
    flagged = []
    for key, k, w in pairs:
        own = _overlap(k, w)
        nb = max(
            _overlap(k, web.get((key[0], key[1], key[2] + d), "")) for d in (-1, 1)
        )
        if own < 0.4 and nb > own + 0.15:
            flagged.append(osis_id(key))
    return flagged


def align(kjv: dict, web: dict, stats: dict) -> list:
    common = sorted(set(kjv) & set(web), key=sort_key)
    stats["keys_only_in_kjv"] = sorted(osis_id(k) for k in set(kjv) - set(web))
    stats["keys_only_in_web"] = sorted(osis_id(k) for k in set(web) - set(kjv))
    stats["matched_by_key"] = len(common)
    dropped = collections.Counter()
    examples: dict = collections.defaultdict(list)
    pairs = []
    for key in common:
        k, w = kjv[key], web[key]
        reason = None
        if not k or not w:
            reason = "empty_side"
        elif len(k) > MAX_VERSE_CHARS or len(w) > MAX_VERSE_CHARS:
            reason = "overlong"
        elif not 0.4 <= len(k) / len(w) <= 2.5:
            reason = "length_ratio_outside_0.4_2.5"
        elif _swapped(kjv, web, key):
            reason = "swapped_with_adjacent_verse"
        if reason:
            dropped[reason] += 1
            examples[reason].append(osis_id(key))
            continue
        pairs.append((key, k, w))
    stats["dropped"] = dict(dropped)
    stats["dropped_ids"] = {r: v for r, v in examples.items()}
    stats["kept_pairs"] = len(pairs)
    flagged = shift_diagnostic(pairs, web)
    # Diagnostic only: isolated hits are free paraphrases ("Thou shalt not kill" /
    # "You shall not murder"); a run of >= 3 consecutive verses would mean a
    # numbering shift and fails the build.
    stats["lexical_shift_diagnostic"] = {"flagged_isolated_kept": len(flagged), "ids": flagged}
    runs, prev, run = 0, None, 1
    for fid in flagged:
        b, c, v = fid.rsplit(".", 2)
        cur = (b, int(c), int(v))
        run = run + 1 if prev and cur == (prev[0], prev[1], prev[2] + 1) else 1
        runs = max(runs, run)
        prev = cur
    assert runs < 3, "consecutive verses look shifted: versification mismatch"
    web_counts = collections.Counter(w for _, _, w in pairs)
    kjv_counts = collections.Counter(k for _, k, _ in pairs)
    stats["duplicate_web_texts"] = {
        "distinct_texts_repeated": sum(1 for c in web_counts.values() if c > 1),
        "pairs_involved": sum(c for c in web_counts.values() if c > 1),
    }
    stats["duplicate_kjv_texts"] = {
        "distinct_texts_repeated": sum(1 for c in kjv_counts.values() if c > 1),
        "pairs_involved": sum(c for c in kjv_counts.values() if c > 1),
    }
    return pairs


def split(pairs: list, n_eval: int, n_calib: int, seed: int, stats: dict):
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    evaluation, seen_k, seen_w = [], set(), set()
    skipped_eval = 0
    pos = 0
    while len(evaluation) < n_eval:
        key, k, w = pairs[order[pos]]
        pos += 1
        if k in seen_k or w in seen_w:
            skipped_eval += 1
            continue
        seen_k.add(k)
        seen_w.add(w)
        evaluation.append(pairs[order[pos - 1]])
    calibration, skipped_calib = [], 0
    while len(calibration) < n_calib:
        key, k, w = pairs[order[pos]]
        pos += 1
        # keep calibration free of any text that is an evaluation target/query
        if k in seen_k or w in seen_w:
            skipped_calib += 1
            continue
        calibration.append(pairs[order[pos - 1]])
    stats["split"] = {
        "seed": seed,
        "evaluation": len(evaluation),
        "calibration": len(calibration),
        "skipped_duplicate_text_for_evaluation": skipped_eval,
        "skipped_calibration_text_in_evaluation": skipped_calib,
    }
    return sorted(evaluation, key=lambda p: sort_key(p[0])), sorted(calibration, key=lambda p: sort_key(p[0]))


SCHEMA = pa.schema([
    ("id", pa.string()), ("book", pa.string()), ("text", pa.string()),
    ("reference", pa.string()), ("lang", pa.string()),
])


def write_parquet(rows: list, path: Path) -> str:
    table = pa.Table.from_pydict(
        {
            "id": [osis_id(k) for k, _, _ in rows],
            "book": [k[0] for k, _, _ in rows],
            "text": [t for _, t, _ in rows],
            "reference": [r for _, _, r in rows],
            "lang": ["en"] * len(rows),
        },
        schema=SCHEMA,
    )
    pq.write_table(table, path, compression="zstd", write_statistics=True)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "kjv_web")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-eval", type=int, default=2000)
    ap.add_argument("--n-calib", type=int, default=6000)
    ap.add_argument("--stats", type=Path, default=None, help="write full cleaning statistics (JSON) here")
    args = ap.parse_args(argv)

    stats: dict = {"modules": {"kjv": KJV_MODULE, "web": WEB_MODULE}, "query": QUERY}
    stats["kjv"], stats["web"] = {}, {}
    kjv = parse_module(run_diatheke(KJV_MODULE), KJV_MODULE, stats["kjv"])
    web = parse_module(run_diatheke(WEB_MODULE), WEB_MODULE, stats["web"])
    pairs = align(kjv, web, stats)
    evaluation, calibration = split(pairs, args.n_eval, args.n_calib, args.seed, stats)

    ev_ids = {osis_id(k) for k, _, _ in evaluation}
    ca_ids = {osis_id(k) for k, _, _ in calibration}
    assert len(ev_ids) == args.n_eval and len(ca_ids) == args.n_calib
    assert not ev_ids & ca_ids, "verse id in both splits"
    assert len({w for _, _, w in evaluation}) == args.n_eval, "duplicate WEB text in evaluation"
    assert len({k for _, k, _ in evaluation}) == args.n_eval, "duplicate KJV text in evaluation"
    bad = re.compile(r"[<>{}\[\]¶\x00\\]|Psalm 151|genuine one of David|World English Bible")
    for _, k, w in evaluation + calibration:
        assert not bad.search(k) and not bad.search(w), (k, w)

    args.out.mkdir(parents=True, exist_ok=True)
    stats["sha256"] = {
        "evaluation.parquet": write_parquet(evaluation, args.out / "evaluation.parquet"),
        "calibration.parquet": write_parquet(calibration, args.out / "calibration.parquet"),
    }
    stats["books_in_evaluation"] = len({k[0] for k, _, _ in evaluation})
    if args.stats:
        args.stats.write_text(json.dumps(stats, indent=1, ensure_ascii=False) + "\n")
    summary = {
        k: v for k, v in stats.items()
        if k not in ("keys_only_in_kjv", "keys_only_in_web", "dropped_ids", "lexical_shift_diagnostic")
    }
    summary["lexical_shift_flagged"] = stats["lexical_shift_diagnostic"]["flagged_isolated_kept"]
    summary["keys_only_in_kjv"] = len(stats["keys_only_in_kjv"])
    summary["keys_only_in_web"] = len(stats["keys_only_in_web"])
    print(json.dumps(summary, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
