#!/usr/bin/env python3
"""Extract aligned English (WEB) -> Spanish (Reina-Valera 1909) verse pairs via diatheke.

Requires the Debian packages ``diatheke``, ``sword-text-web`` and ``sword-text-sparv``
(SWORD modules ``engWEB2015eb`` and ``spaRV1909eb``); both texts are public domain.

Output (deterministic for a given seed and module versions):
    <out>/test.parquet         500 pairs, held out
    <out>/calibration.parquet  2,000 other pairs, held out
    <out>/train.parquet        all remaining pairs
    columns: id ("Gen.1.1", WEB numbering), source (English), target (Spanish), lang ("es")
    --stats FILE               optional JSON with the counts of every cleaning step

Reading and cleaning of the WEB module is shared with ``extract_kjv_web.py``
(OSIS output, one verse per line, leaked pre-verse headings discarded, notes and
markup removed).  The Spanish module needs more:
  * Words outside ``<w>`` elements are glued to their neighbours
    ("en sus alas</w>traerá<w>salud" -> "alastraerásalud", ~580 junctions).  A
    space is put back at every such junction, except where the right-hand part is
    an enclitic pronoun that belongs to the verb ("díjo</w>le" -> "díjole").
  * Chapter openings carry a drop capital written as an all-caps word
    ("EN el principio", "¿POR qué", "A TI, oh Jehová"): recased.
  * Psalm titles are part of verse 1 ("Salmo de David. JEHOVÁ es mi pastor"),
    while the WEB prints them as headings: removed.  Likewise the Hebrew letters
    of Psalm 119 ("ALEPH.") and the subscriptions after the last verse of the
    Pauline epistles ("Amén. Escrita de Roma á los Efesios por Tichîco.").
  * The module is keyed in KJV versification, but several chapters follow the
    Spanish numbering (Num 13, Num 30, 1 Sam 24, Job 39 and 41, Hos 12, Jonah 2,
    2 Cor 13, ...): the verse sits one key later and the KJV slot at the end of
    the previous chapter is empty.  Verses are therefore aligned per book by a
    Gale-Church style dynamic programme on lengths, which prefers equal keys,
    and only 1-1 matches are kept (id = the WEB key).
Old orthography (á, fué, circumflex in "Ezechîas") is the 1909 text itself and kept.
"""
from __future__ import annotations

import argparse
import collections
import functools
import hashlib
import json
import math
import random
import re
import shutil
import statistics
import subprocess
import sys
import unicodedata
from pathlib import Path

sys.dont_write_bytecode = True  # keep datasets/scripts free of __pycache__
sys.path.insert(0, str(Path(__file__).resolve().parent))
import extract_kjv_web as kw  # noqa: E402

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

EN_MODULE = kw.WEB_MODULE  # engWEB2015eb, package sword-text-web
ES_MODULE = "spaRV1909eb"  # package sword-text-sparv
PACKAGES = {"diatheke": "diatheke", EN_MODULE: "sword-text-web", ES_MODULE: "sword-text-sparv"}

# len(target) / len(source) in characters; 99.8 % of aligned pairs lie in 0.59-1.62.
# Above 2.0 the Spanish verse carries text of the next verse (verse boundary moved)
# or a Textus Receptus addition; below 0.5, the reverse.
RATIO_BAND = (0.5, 2.0)
SPLIT_SIZES = {"test": 500, "calibration": 2000}

LETTERS = "A-Za-zÁÉÍÓÚÜÑáéíóúüñâêîôûÂÊÎÔÛ"
ENCLITICS = {
    "me", "te", "se", "le", "lo", "la", "les", "los", "las", "nos", "os",
    "melo", "mela", "telo", "tela", "selo", "sela", "selos", "selas", "noslo", "osla", "oslo",
}
JUNCTION_RE = re.compile(rf"([{LETTERS}]+)((?:</?w\b[^>]*>)+)(?=([{LETTERS}]+))")
PS119_LETTERS = (
    "ALEPH BETH GIMEL DALETH HE VAU ZAIN CHETH TETH JOD CAPH LAMED MEM NUN SAMECH AIN PE "
    "TZADDI COPH KOPH RESH SCHIN SIN SHIN TAU"
).split()
PS119_RE = re.compile(r"^(?:%s)\.?\s+" % "|".join(PS119_LETTERS))
SUBSCRIPTION_RE = re.compile(r"(?<=Amén\.)\s+[^.]*\b(?:[Ee]scrita|[Ee]nviada)\b.*$")
EPISTLES = {"Rom", "1Cor", "2Cor", "Gal", "Eph", "Phil", "Col", "1Thess", "2Thess",
            "1Tim", "2Tim", "Titus", "Phlm", "Heb"}
CAPS_WORD_RE = re.compile(rf"[{LETTERS}]+")
DROPCAP_LEAD_RE = re.compile(r"(?:Aleluya\.|Las sentencias de Salomón\.) (?=[¿¡]?[A-ZÁÉÍÓÚÑ]{2})")
# Rom 16:25-27 (doxology): the WEB prints it at the end of 14:23 and leaves 16:25-27 empty.
WEB_FIXES = {("Rom", 14, 23): " Now to him who is able to establish you"}


def die(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def check_tools() -> None:
    if shutil.which("diatheke") is None:
        die("diatheke not found; install it with: apt-get install -y diatheke "
            "sword-text-web sword-text-sparv")
    res = subprocess.run(["diatheke", "-b", "system", "-k", "modulelist"],
                         capture_output=True, text=True)
    have = set(re.findall(r"^(\S+) : ", res.stdout, re.M))
    for mod in (EN_MODULE, ES_MODULE):
        if mod not in have:
            die(f"SWORD module {mod} not found; install it with: apt-get install -y {PACKAGES[mod]}")


# ---------------------------------------------------------------- Spanish specifics
def fix_junctions(raw: str, stats: dict) -> str:
    """Put a space back where text outside <w> elements touches a word."""
    plain = re.sub(r"<[^>]*>", " ", raw)
    vocab = collections.Counter(w.lower() for w in re.findall(f"[{LETTERS}]+", plain))
    counts = collections.Counter()

    def repl(m: re.Match) -> str:
        left, tags, right = m.groups()
        enclitic = right.lower() in ENCLITICS and (
            vocab[(left + right).lower()] > 0          # "díjole" occurs elsewhere
            # "sáca", "mirándo": accented for the pronoun, not a word alone
            or (vocab[left.lower()] <= 5 and re.search("[áéíóú]", left) is not None)
            or (left[0].islower() and left[-1] in "rd")  # infinitive / imperative + pronoun
        )
        counts["enclitic_kept_joined" if enclitic else "space_inserted"] += 1
        return left + tags if enclitic else left + tags + " "

    raw = JUNCTION_RE.sub(repl, raw)  # the right word is a lookahead: "a</w>b<w>c" works
    stats["glued_word_junctions"] = dict(counts)
    return raw


def recase_dropcap(text: str, cap_vocab: collections.Counter) -> tuple[str, bool]:
    """'¿POR qué' -> '¿Por qué', 'A TI, oh' -> 'A ti, oh', 'JEHOVÁ es' -> 'Jehová es'."""
    lead = DROPCAP_LEAD_RE.match(text)  # "Aleluya. ALABAD ...": the drop cap follows
    if lead:
        new, changed = recase_dropcap(text[lead.end():], cap_vocab)
        return text[: lead.end()] + new, changed
    words = list(CAPS_WORD_RE.finditer(text))
    if not words or text[: words[0].start()].strip("¿¡ ") != "":
        return text, False
    run = []
    for m in words:
        if not m.group().isupper():
            break
        run.append(m)
    if not run or max(len(m.group()) for m in run) < 2:
        return text, False
    if len(run) == len(words) or len(run) > 4:  # an all-caps inscription, not a drop cap
        return text, False
    out, pos = [], 0
    for i, m in enumerate(run):
        w = m.group()
        if i == 0 or w.capitalize() in cap_vocab:
            new = w.capitalize()
        else:
            new = w.lower()
        out.append(text[pos: m.start()] + new)
        pos = m.end()
    return "".join(out) + text[pos:], True


def clean_spanish(es: dict, stats: dict) -> dict:
    # proper nouns seen capitalised mid-sentence ("Jehová", "Dios"), for recasing
    cap_vocab = collections.Counter()
    for t in es.values():
        for w in re.findall(rf"(?<=[{LETTERS}] )[{LETTERS}]+", t):
            if w[0].isupper() and not w.isupper():
                cap_vocab[w] += 1
    cap_vocab = collections.Counter({w: c for w, c in cap_vocab.items() if c >= 3})
    n = collections.Counter()
    out = {}
    for key, t in es.items():
        book, ch, v = key
        if book == "Ps" and v == 1 and t:
            # title = everything before the first all-caps (drop-cap) word
            m = re.search(rf"(?:(?<=^)|(?<=\s))[¿¡]?(?:A |Y )?[{LETTERS}]*[A-ZÁÉÍÓÚÑ]{{2,}}\b", t)
            if m and m.start() > 0 and t[: m.start()].strip() != "Aleluya.":
                t = t[m.start():]
                n["psalm_titles_removed"] += 1
        if book == "Ps" and ch == 119 and (v - 1) % 8 == 0:
            t2 = PS119_RE.sub("", t)
            if t2 != t:
                n["ps119_letters_removed"] += 1
                t = t2
        if book in EPISTLES:
            t2 = SUBSCRIPTION_RE.sub("", t)
            if t2 != t:
                n["epistle_subscriptions_removed"] += 1
                t = t2
        t, changed = recase_dropcap(t, cap_vocab)
        n["drop_capitals_recased"] += changed
        out[key] = t
    stats.update(n)
    return out


# ---------------------------------------------------------------- both sides
QUOTES = str.maketrans({"“": '"', "”": '"', "„": '"', "«": '"', "»": '"',
                        "‘": "'", "’": "'", "‚": "'", "´": "'"})


def normalize(t: str) -> str:
    t = unicodedata.normalize("NFC", t).translate(QUOTES)
    t = t.replace("¶", " ")
    t = re.sub(r"\s+", " ", t).strip()
    t = re.sub(r" (?=[,.;:!?)])", "", t)
    t = re.sub(r"(?<=[¿¡(]) ", "", t)
    return t


def read_module(module: str, stats: dict, spanish: bool) -> dict:
    raw = kw.run_diatheke(module)
    if spanish:
        raw = fix_junctions(raw, stats)
    verses = kw.parse_module(raw, module, stats)
    if spanish:
        verses = clean_spanish(verses, stats)
    else:
        for key, marker in WEB_FIXES.items():
            if marker in verses.get(key, ""):
                verses[key] = verses[key][: verses[key].index(marker)]
                stats.setdefault("merged_text_cut", []).append(kw.osis_id(key))
    return {k: normalize(t) for k, t in verses.items()}


# ---------------------------------------------------------------- alignment
def _len_model(en: dict, es: dict) -> tuple[float, float]:
    common = [k for k in en if en[k] and es.get(k)]
    c = sum(len(es[k]) for k in common) / sum(len(en[k]) for k in common)
    resid = [(len(es[k]) - c * len(en[k])) / math.sqrt(len(en[k])) for k in common]
    med = statistics.median(abs(r) for r in resid)
    return c, (1.4826 * med) ** 2  # robust variance per character


def _tokens(text: str) -> frozenset:
    t = unicodedata.normalize("NFD", text.lower())
    t = "".join(ch for ch in t if unicodedata.category(ch) != "Mn")
    return frozenset(w for w in re.findall(r"[a-z]+", t) if len(w) > 2)


def build_lexicon(en: dict, es: dict, stats: dict) -> dict:
    """English word -> most associated Spanish word (Dice >= 0.3 over the verses
    paired by key).  Mostly right pairs are enough to learn 'darkness -> tinieblas'."""
    keys = [k for k in en if en[k] and es.get(k)]
    fe, fs, co = collections.Counter(), collections.Counter(), collections.Counter()
    for k in keys:
        a, b = _tokens(en[k]), _tokens(es[k])
        fe.update(a)
        fs.update(b)
        co.update((x, y) for x in a for y in b)
    n = len(keys)
    best: dict = {}
    for (x, y), cnt in co.items():
        if cnt < 4 or fe[x] > 0.2 * n or fs[y] > 0.2 * n:
            continue
        score = (2 * cnt / (fe[x] + fs[y]), cnt, y)  # ties broken by count, then word
        if score[0] >= 0.3 and (x not in best or score > best[x]):
            best[x] = score
    stats["lexicon_entries"] = len(best)
    return {x: sc[2] for x, sc in best.items()}


def lex_sim(lex: dict, en_toks, es_toks) -> float:
    """Share of the English words with a lexicon entry whose translation is present."""
    ws = [w for w in en_toks if w in lex]
    return sum(lex[w] in es_toks for w in ws) / len(ws) if ws else 0.5


def align_book(W: list, E: list, c: float, s2: float, lex: dict, band: int = 30) -> list:
    """Monotone alignment of two verse lists [(key, text)]; returns moves
    (kind, [w indices], [e indices]).  Cost = Gale-Church length cost + a lexical
    cost from the learnt word list."""
    # A pair with equal keys costs at most CAP: it may be a loose translation, and the
    # length-ratio filter decides about it later.  Leaving the key diagonal (skips,
    # merges, shifted pairs) must pay for itself over a run of verses.
    SKIP, MERGE, SHIFT, CAP, LEX, CAP_SAME = 7.0, 4.5, 1.0, 5.0, 5.0, 6.0
    lw = [len(t) for _, t in W]
    le = [len(t) for _, t in E]
    tw = [_tokens(t) for _, t in W]
    te = [_tokens(t) for _, t in E]

    @functools.lru_cache(maxsize=None)
    def xcost(wi: tuple, ej: tuple) -> float:
        return LEX * (1.0 - lex_sim(lex, frozenset().union(*(tw[i] for i in wi)),
                                    frozenset().union(*(te[j] for j in ej))))

    def lcost(a: int, b: int) -> float:
        d = (b - c * a) / math.sqrt(s2 * max((a + b / c) / 2, 1))
        return -math.log(max(math.erfc(abs(d) / math.sqrt(2)), 1e-300))

    n, m = len(W), len(E)
    INF = float("inf")
    cost = {(0, 0): 0.0}
    back = {}
    for i in range(n + 1):
        for j in range(max(0, i - band), min(m, i + band) + 1):
            if (i, j) == (0, 0):
                continue
            best, arg = INF, None
            cands = []
            if i and j:
                lc = lcost(lw[i - 1], le[j - 1])
                if W[i - 1][0] == E[j - 1][0]:
                    lc = min(min(lc, CAP) + xcost((i - 1,), (j - 1,)), CAP_SAME)
                else:
                    lc += SHIFT + xcost((i - 1,), (j - 1,))
                cands.append(((i - 1, j - 1), lc, "1-1"))
            if i:
                cands.append(((i - 1, j), SKIP, "1-0"))
            if j:
                cands.append(((i, j - 1), SKIP, "0-1"))
            if i >= 2 and j:
                cands.append(((i - 2, j - 1), MERGE + lcost(lw[i - 1] + lw[i - 2], le[j - 1])
                              + xcost((i - 2, i - 1), (j - 1,)), "2-1"))
            if i and j >= 2:
                cands.append(((i - 1, j - 2), MERGE + lcost(lw[i - 1], le[j - 1] + le[j - 2])
                              + xcost((i - 1,), (j - 2, j - 1)), "1-2"))
            for prev, add, kind in cands:
                p = cost.get(prev)
                if p is not None and p + add < best:
                    best, arg = p + add, (prev, kind)
            if arg is not None:
                cost[(i, j)] = best
                back[(i, j)] = arg
    moves, cur = [], (n, m)
    while cur != (0, 0):
        prev, kind = back[cur]
        moves.append((kind, list(range(prev[0], cur[0])), list(range(prev[1], cur[1]))))
        cur = prev
    return moves[::-1]


def align(en: dict, es: dict, stats: dict) -> list:
    c, s2 = _len_model(en, es)
    st = stats["alignment"] = {"length_ratio_mean": round(c, 4), "length_var_per_char": round(s2, 4)}
    st["keys_only_in_en"] = sorted(kw.osis_id(k) for k in set(en) - set(es))
    st["keys_only_in_es"] = sorted(kw.osis_id(k) for k in set(es) - set(en))
    st["empty_en"] = sorted(kw.osis_id(k) for k, t in en.items() if not t)
    st["empty_es"] = sorted(kw.osis_id(k) for k, t in es.items() if not t)
    lex = build_lexicon(en, es, st)
    # Verses the WEB omits (textual variants: Luke 17:36, Acts 8:37, ...) have no
    # English counterpart; without this the aligner may pair them with a neighbour.
    st["es_dropped_en_key_empty"] = sorted(kw.osis_id(k) for k, t in es.items()
                                           if t and k in en and not en[k])
    es = {k: t for k, t in es.items() if not (k in en and not en[k])}
    moves = collections.Counter()
    shifted, merged, unmatched = [], [], []
    pairs = []
    for book, _ in kw.PROTOCANON:
        W = sorted(((k, t) for k, t in en.items() if k[0] == book and t), key=lambda kt: kw.sort_key(kt[0]))
        E = sorted(((k, t) for k, t in es.items() if k[0] == book and t), key=lambda kt: kw.sort_key(kt[0]))
        for kind, wi, ei in align_book(W, E, c, s2, lex):
            moves[kind] += 1
            if kind == "1-1":
                (wk, wt), (ek, et) = W[wi[0]], E[ei[0]]
                if wk != ek:
                    shifted.append(f"{kw.osis_id(wk)}<-{kw.osis_id(ek)}")
                pairs.append((wk, wt, et))
            elif kind in ("2-1", "1-2"):
                merged.append("+".join(kw.osis_id(W[i][0]) for i in wi) + "="
                              + "+".join(kw.osis_id(E[j][0]) for j in ei))
            else:
                unmatched.extend(("en:" + kw.osis_id(W[i][0])) for i in wi)
                unmatched.extend(("es:" + kw.osis_id(E[j][0])) for j in ei)
    st["moves"] = dict(moves)
    st["matched_same_key"] = moves["1-1"] - len(shifted)
    st["matched_shifted_key"] = len(shifted)
    st["shifted"] = shifted
    st["merged_groups"] = merged
    st["unmatched"] = unmatched
    return pairs


def filter_pairs(pairs: list, stats: dict) -> list:
    lo, hi = RATIO_BAND
    dropped = collections.defaultdict(list)
    kept = []
    for key, s, t in pairs:
        r = len(t) / len(s) if s else 0.0
        if not s or not t:
            dropped["empty_side"].append(kw.osis_id(key))
        elif not lo <= r <= hi:
            dropped[f"length_ratio_outside_{lo}_{hi}"].append(f"{kw.osis_id(key)}:{r:.2f}")
        else:
            kept.append((key, s, t))
    stats["ratio_filter"] = {k: len(v) for k, v in dropped.items()}
    stats["ratio_filter_ids"] = dict(dropped)
    return kept


def split(pairs: list, seed: int, stats: dict) -> dict:
    src_n = collections.Counter(s for _, s, _ in pairs)
    tgt_n = collections.Counter(t for _, _, t in pairs)
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    held = {name: [] for name in SPLIT_SIZES}
    skipped = 0
    taken = set()
    it = iter(order)
    for name, size in SPLIT_SIZES.items():
        while len(held[name]) < size:
            i = next(it)
            _, s, t = pairs[i]
            if src_n[s] > 1 or tgt_n[t] > 1:  # repeated verse text: train only
                skipped += 1
                continue
            held[name].append(pairs[i])
            taken.add(i)
    train = [p for i, p in enumerate(pairs) if i not in taken]
    out = {"train": train, **held}
    stats["split"] = {"seed": seed, **{k: len(v) for k, v in out.items()},
                      "duplicate_text_pairs_kept_in_train_only": skipped,
                      "pairs_with_repeated_source": sum(c for c in src_n.values() if c > 1),
                      "pairs_with_repeated_target": sum(c for c in tgt_n.values() if c > 1)}
    return {k: sorted(v, key=lambda p: kw.sort_key(p[0])) for k, v in out.items()}


SCHEMA = pa.schema([("id", pa.string()), ("source", pa.string()),
                    ("target", pa.string()), ("lang", pa.string())])


def write_parquet(rows: list, path: Path) -> str:
    table = pa.Table.from_pydict(
        {"id": [kw.osis_id(k) for k, _, _ in rows], "source": [s for _, s, _ in rows],
         "target": [t for _, _, t in rows], "lang": ["es"] * len(rows)},
        schema=SCHEMA,
    )
    pq.write_table(table, path, compression="zstd", compression_level=19)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "bible_en_es")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stats", type=Path, default=None, help="write full cleaning statistics (JSON) here")
    args = ap.parse_args(argv)
    check_tools()

    stats: dict = {"modules": {"en": EN_MODULE, "es": ES_MODULE}, "query": kw.QUERY, "en": {}, "es": {}}
    en = read_module(EN_MODULE, stats["en"], spanish=False)
    es = read_module(ES_MODULE, stats["es"], spanish=True)
    pairs = align(en, es, stats)
    pairs = filter_pairs(pairs, stats)
    splits = split(pairs, args.seed, stats)

    ids = {k: {kw.osis_id(p[0]) for p in v} for k, v in splits.items()}
    srcs = {k: {p[1] for p in v} for k, v in splits.items()}
    names = list(splits)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            assert not ids[names[a]] & ids[names[b]], "verse id in two splits"
            assert not srcs[names[a]] & srcs[names[b]], "source text in two splits"
    assert len(splits["train"]) >= 20000
    bad = re.compile(r"[<>{}\[\]¶\x00\\“”‘’]|\s{2}|^\s|\s$")
    for rows in splits.values():
        for _, s, t in rows:
            assert not bad.search(s) and not bad.search(t), (s, t)

    args.out.mkdir(parents=True, exist_ok=True)
    stats["sha256"] = {f"{k}.parquet": write_parquet(v, args.out / f"{k}.parquet") for k, v in splits.items()}
    stats["bytes"] = {f"{k}.parquet": (args.out / f"{k}.parquet").stat().st_size for k in splits}
    if args.stats:
        args.stats.write_text(json.dumps(stats, indent=1, ensure_ascii=False) + "\n")
    long_lists = {"es_dropped_en_key_empty", "keys_only_in_en", "keys_only_in_es", "empty_en", "empty_es", "shifted",
                  "merged_groups", "unmatched"}
    summary = json.loads(json.dumps(stats))
    summary.pop("ratio_filter_ids")
    for k in long_lists:
        summary["alignment"][k] = len(summary["alignment"][k])
    print(json.dumps(summary, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
