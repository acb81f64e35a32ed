#!/usr/bin/env python3
"""Build an English -> xx translation dataset from Django's own gettext catalogues.

Source: the ``.po`` files shipped in the Django wheel (BSD-3-Clause), i.e.
``django/conf/locale/<lang>/LC_MESSAGES/{django,djangojs}.po`` and
``django/contrib/<app>/locale/<lang>/LC_MESSAGES/*.po``.

Pairs are msgid -> msgstr (msgid -> msgstr[0] and msgid_plural -> msgstr[1] for
plural entries).  Fuzzy, obsolete (``#~``) and untranslated entries and the
header are skipped.  Placeholders (``%(name)s``, ``%s``, ``{0}``) are kept as is.

Splits are held out by msgid: every distinct English msgid (a plural entry's
msgid_plural travels with its msgid) is assigned, once for all languages, to test
(15 %), calibration (5 %) or train.  Then near-duplicates are held out too: a test or
calibration source whose normalised form (segment_key.normalise: case, digits and
punctuation dropped, placeholders unified, so 'Yesterday'/'yesterday', 'Dec'/'Dec.'
and 'Add another %(model)s'/'Add another %(verbose_name)s' are one key) is also the
normalised form of a training source, in any language, is dropped from its split
(and a test source that normalises like a calibration source likewise).  Dropping,
rather than re-drawing the split, keeps the train split exactly the one the shipped
model (examples/models/marian-django-multi) was trained on, so its test scores stay
held out.  No test source, nor a near-duplicate of one, is seen in training in any
language.  The test split is then
capped at ``--test-cap`` pairs per language (deterministic sample); test strings
dropped by the cap are *not* moved to train.

Output (deterministic for a given wheel, seed and pyarrow version):
    <out>/{train,calibration,test}.parquet  columns id, source, target, lang, script
    <manifest>                              qbench dataset manifest with sha256s
"""
from __future__ import annotations

import argparse
import collections
import gettext
import hashlib
import random
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from segment_key import normalise  # the split key, shared with extract_debian_multi.py and the leak tests

DJANGO_VERSION = "5.2.17"
ROOT = Path(__file__).resolve().parents[1]

# ISO 15924 script of every Django locale directory (5.2).  zh/ja/ko get
# Hans/Hant/Jpan/Kore (the written scripts, all Han-based).
SCRIPTS = {
    "af": "Latn", "am": "Ethi", "ar": "Arab", "ar_DZ": "Arab", "ast": "Latn", "az": "Latn",
    "be": "Cyrl", "bg": "Cyrl", "bn": "Beng", "br": "Latn", "bs": "Latn", "ca": "Latn",
    "ckb": "Arab", "cs": "Latn", "cy": "Latn", "da": "Latn", "de": "Latn", "dsb": "Latn",
    "el": "Grek", "eo": "Latn", "es": "Latn", "es_AR": "Latn", "es_CO": "Latn",
    "es_MX": "Latn", "es_VE": "Latn", "et": "Latn", "eu": "Latn", "fa": "Arab", "fi": "Latn",
    "fr": "Latn", "fy": "Latn", "ga": "Latn", "gd": "Latn", "gl": "Latn", "he": "Hebr",
    "hi": "Deva", "hr": "Latn", "hsb": "Latn", "hu": "Latn", "hy": "Armn", "ia": "Latn",
    "id": "Latn", "ig": "Latn", "io": "Latn", "is": "Latn", "it": "Latn", "ja": "Jpan",
    "ka": "Geor", "kab": "Latn", "kk": "Cyrl", "km": "Khmr", "kn": "Knda", "ko": "Kore",
    "ky": "Cyrl", "lb": "Latn", "lt": "Latn", "lv": "Latn", "mk": "Cyrl", "ml": "Mlym",
    "mn": "Cyrl", "mr": "Deva", "ms": "Latn", "my": "Mymr", "nb": "Latn", "ne": "Deva",
    "nl": "Latn", "nn": "Latn", "os": "Cyrl", "pa": "Guru", "pl": "Latn", "pt": "Latn",
    "pt_BR": "Latn", "ro": "Latn", "ru": "Cyrl", "sk": "Latn", "sl": "Latn", "sq": "Latn",
    "sr": "Cyrl", "sr_Latn": "Latn", "sv": "Latn", "sw": "Latn", "ta": "Taml", "te": "Telu",
    "tg": "Cyrl", "th": "Thai", "tk": "Latn", "tr": "Latn", "tt": "Cyrl", "udm": "Cyrl",
    "ug": "Arab", "uk": "Cyrl", "ur": "Arab", "uz": "Latn", "vi": "Latn", "zh_Hans": "Hans",
    "zh_Hant": "Hant",
}

# Selected target languages (Django locale dir names).  Chosen from the coverage
# table this script prints: the best-covered languages of each script, every one
# with >= MIN_PAIRS pairs (checked at run time).
LANGS = [
    # Latin
    "de", "fr", "es", "it", "pt_BR", "pl", "nl", "tr", "vi", "id", "cs", "sv",
    # Cyrillic
    "ru", "uk", "bg", "sr",
    # Arabic, Hebrew
    "ar", "fa", "he",
    # Han-based
    "ja", "zh_Hans", "ko",
    # Devanagari, Bengali, Thai, Greek, Georgian, Armenian
    "hi", "bn", "th", "el", "ka", "hy",
]
MIN_PAIRS = 300
MAX_SOURCE_CHARS = 300
CHAR_TOKENIZED = {"ja", "zh-hans", "zh-hant", "ko", "th"}  # BLEU with tokenize='char'

PO_PATH_RE = re.compile(
    r"^django/(?:conf|contrib/[a-z_]+)/locale/([A-Za-z_]+)/LC_MESSAGES/([a-z_]+)\.po$"
)
PLACEHOLDER_RE = re.compile(r"%\([A-Za-z_][A-Za-z0-9_]*\)[-#0 +]*\d*(?:\.\d+)?[sdifrxXeEgGc]|%[-#0 +]*\d*(?:\.\d+)?[sdifrxXeEgGc]|%%|\{[A-Za-z0-9_]*\}")
ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "a": "\a", "b": "\b",
           "f": "\f", "v": "\v"}


# --------------------------------------------------------------------------- .po parsing

def unquote(s: str, where: str) -> str:
    """Decode one C-style quoted po string literal: '"abc\\n"' -> 'abc\\n'."""
    s = s.strip()
    if len(s) < 2 or s[0] != '"' or s[-1] != '"':
        raise ValueError(f"{where}: not a quoted string: {s!r}")
    body, out, i = s[1:-1], [], 0
    while i < len(body):
        c = body[i]
        if c == "\\":
            if i + 1 >= len(body):
                raise ValueError(f"{where}: dangling backslash in {s!r}")
            e = body[i + 1]
            if e not in ESCAPES:
                raise ValueError(f"{where}: unknown escape \\{e} in {s!r}")
            out.append(ESCAPES[e])
            i += 2
        elif c == '"':
            raise ValueError(f"{where}: unescaped quote in {s!r}")
        else:
            out.append(c)
            i += 1
    return "".join(out)


KEY_RE = re.compile(r'^(msgctxt|msgid_plural|msgid|msgstr(?:\[(\d+)\])?)\s+(".*")\s*$')


def parse_po(text: str, name: str) -> list[dict]:
    """Return entries {ctxt, msgid, msgid_plural, msgstr: {index: str}, flags, obsolete}."""
    entries: list[dict] = []
    cur: dict | None = None
    last_key = None  # the field continuation lines are appended to

    def new():
        return {"ctxt": None, "msgid": None, "msgid_plural": None, "msgstr": {},
                "flags": set(), "obsolete": False}

    def flush():
        nonlocal cur, last_key
        if cur is not None and cur["msgid"] is not None:
            entries.append(cur)
        elif cur is not None and (cur["ctxt"] is not None or cur["msgstr"]):
            raise ValueError(f"{name}: entry without msgid: {cur}")
        cur, last_key = None, None

    for lineno, raw in enumerate(text.split("\n"), 1):
        where = f"{name}:{lineno}"
        line = raw.strip()
        obsolete = False
        if line.startswith("#~"):
            obsolete = True
            line = line[2:].strip()
            if not line or line.startswith("|"):
                continue
        elif not line:
            flush()
            continue
        elif line.startswith("#"):
            # comments start a new entry if the previous one is complete
            if cur is not None and cur["msgstr"]:
                flush()
            if line.startswith("#,"):
                if cur is None:
                    cur = new()
                cur["flags"].update(f.strip() for f in line[2:].split(",") if f.strip())
            continue
        if line.startswith('"'):
            if cur is None or last_key is None:
                raise ValueError(f"{where}: continuation line without a keyword")
            val = unquote(line, where)
            if last_key[0] == "msgstr":
                cur["msgstr"][last_key[1]] += val
            else:
                cur[last_key[0]] += val
            continue
        m = KEY_RE.match(line)
        if not m:
            raise ValueError(f"{where}: cannot parse line: {raw!r}")
        key, idx, lit = m.group(1), m.group(2), m.group(3)
        val = unquote(lit, where)
        if key in ("msgctxt", "msgid") and cur is not None and cur["msgstr"]:
            flush()  # entries not separated by a blank line
        if cur is None:
            cur = new()
        cur["obsolete"] = cur["obsolete"] or obsolete
        if key.startswith("msgstr"):
            i = 0 if idx is None else int(idx)
            if i in cur["msgstr"]:
                raise ValueError(f"{where}: duplicate msgstr[{i}]")
            cur["msgstr"][i] = val
            last_key = ("msgstr", i)
        else:
            key = "ctxt" if key == "msgctxt" else key
            if cur[key] is not None:
                raise ValueError(f"{where}: duplicate {key}")
            cur[key] = val
            last_key = (key,)
    flush()
    return entries


def plural_indices(entries: list[dict], name: str) -> tuple[int, int]:
    """(singular, plural) msgstr indices from the header's Plural-Forms: msgstr[f(1)], msgstr[f(3)].

    That is msgid -> msgstr[0] and msgid_plural -> msgstr[1] for every selected
    language with two forms, and for ru/uk/pl/cs/sr, where form 1 ("few", 2-4)
    is the form of n=3.  Two catalogues differ: Arabic puts the zero form first
    (n==0 -> 0, "nothing selected"; n==1 -> 1; n==2 -> 2 dual; 3..10 -> 3) and
    Hebrew has a dual at index 1 ("שבועיים", two weeks); there the plural is
    msgstr[3], the form used with a counted plural noun.
    """
    head = [e for e in entries if e["msgid"] == "" and e["ctxt"] is None]
    pf = re.search(r"^Plural-Forms:.*?plural=([^;\n]+)", head[0]["msgstr"].get(0, "") if head else "",
                   re.M)
    if not pf:
        return 0, 1
    f = gettext.c2py(pf.group(1).strip())
    return f(1), f(3)


def entry_pairs(e: dict, idx: tuple[int, int], stats: collections.Counter) -> list[tuple[str, str, str]]:
    """(ctxt, source, target) pairs of one entry; counts why entries are skipped."""
    if e["obsolete"]:
        stats["skip_obsolete"] += 1
        return []
    if e["msgid"] == "" and e["ctxt"] is None:
        stats["skip_header"] += 1
        return []
    if "fuzzy" in e["flags"]:
        stats["skip_fuzzy"] += 1
        return []
    ctxt = e["ctxt"] or ""
    if e["msgid_plural"] is not None:
        if set(e["msgstr"]) == {0}:
            # one plural form only (ja, zh, ko, vi, th, id ...): msgid -> msgstr[0] only
            stats["plural_single_form"] += 1
            cands = [(e["msgid"], e["msgstr"][0])]
        else:
            if idx != (0, 1):
                stats["plural_indices_%d_%d" % idx] += 1
            cands = [(e["msgid"], e["msgstr"].get(idx[0], "")),
                     (e["msgid_plural"], e["msgstr"].get(idx[1], ""))]
    else:
        cands = [(e["msgid"], e["msgstr"].get(0, ""))]
    out = []
    for src, tgt in cands:
        if not tgt.strip():
            stats["skip_untranslated"] += 1
            continue
        out.append((ctxt, src, tgt))
    return out


def source_ok(src: str, stats: collections.Counter) -> bool:
    if not src.strip():
        stats["drop_empty_source"] += 1
        return False
    if len(src) > MAX_SOURCE_CHARS:
        stats["drop_source_over_%d_chars" % MAX_SOURCE_CHARS] += 1
        return False
    rest = PLACEHOLDER_RE.sub("", src)
    if not any(ch.isalpha() for ch in rest):
        stats["drop_punct_or_placeholder_only"] += 1
        return False
    return True


# --------------------------------------------------------------------------- wheel

def get_wheel(path: Path | None, tmp: Path) -> Path:
    if path is not None:
        return path
    subprocess.run([sys.executable, "-m", "pip", "download", f"django=={DJANGO_VERSION}",
                    "--no-deps", "--only-binary=:all:", "-d", str(tmp), "-q"], check=True)
    wheels = sorted(tmp.glob("Django-*.whl")) + sorted(tmp.glob("django-*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected one Django wheel in {tmp}, found {wheels}")
    return wheels[0]


def lang_code(d: str) -> str:
    return d.replace("_", "-").lower()


def collect(wheel: Path, stats: dict) -> dict[str, list[tuple[str, str, str, str]]]:
    """{locale dir: [(ctxt, source, target, po path, msgid), ...]} deduped by (lang, source)."""
    per_lang: dict[str, list] = collections.defaultdict(list)
    seen: dict[str, set] = collections.defaultdict(set)
    c = collections.Counter()
    n_files = 0
    with zipfile.ZipFile(wheel) as z:
        names = sorted(n for n in z.namelist() if n.endswith(".po"))
        for name in names:
            m = PO_PATH_RE.match(name)
            if not m:
                raise ValueError(f"unexpected .po path {name}")
            loc = m.group(1)
            if loc.startswith("en"):
                continue
            if loc not in SCRIPTS:
                raise ValueError(f"no script known for locale {loc} ({name})")
            n_files += 1
            entries = parse_po(z.read(name).decode("utf-8"), name)
            idx = plural_indices(entries, name)
            c["entries"] += len(entries)
            for e in entries:
                for ctxt, src, tgt in entry_pairs(e, idx, c):
                    c["pairs_raw"] += 1
                    if not source_ok(src, c):
                        continue
                    if set(PLACEHOLDER_RE.findall(src)) != set(PLACEHOLDER_RE.findall(tgt)):
                        # e.g. "a minute ago" -> "%(count)s минуту назад" (form 0 also serves
                        # 21, 31, ...), or "%(num)d week" -> "שבוע": not a usable pair
                        c["drop_placeholder_mismatch"] += 1
                        continue
                    if src in seen[loc]:
                        c["drop_duplicate_lang_source"] += 1
                        continue
                    seen[loc].add(src)
                    per_lang[loc].append((ctxt, src, tgt, name, e["msgid"]))
    stats["po_files"] = n_files
    stats["counts"] = dict(sorted(c.items()))
    return per_lang


# --------------------------------------------------------------------------- splits

def sid(src: str) -> str:
    return hashlib.sha1(src.encode("utf-8")).hexdigest()[:12]


SCHEMA = pa.schema([("id", pa.string()), ("source", pa.string()), ("target", pa.string()),
                    ("lang", pa.string()), ("script", pa.string())])


def write_parquet(rows: list[dict], path: Path) -> str:
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    pq.write_table(table, path, compression="zstd", write_statistics=True)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_baseline(test_rows: list[dict]) -> dict[str, tuple[float, float, int]]:
    import sacrebleu

    by = collections.defaultdict(list)
    for r in test_rows:
        by[r["lang"]].append(r)
    out = {}
    for lang, rs in by.items():
        hyp = [r["source"] for r in rs]
        ref = [r["target"] for r in rs]
        chrf = sacrebleu.corpus_chrf(hyp, [ref]).score
        tok = "char" if lang in CHAR_TOKENIZED else "13a"
        bleu = sacrebleu.corpus_bleu(hyp, [ref], tokenize=tok).score
        out[lang] = (chrf, bleu, len(rs))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wheel", type=Path, default=None,
                    help=f"Django wheel; default: pip download django=={DJANGO_VERSION} to a temp dir")
    ap.add_argument("--out", type=Path, default=ROOT / "django_multi")
    ap.add_argument("--manifest", type=Path, default=ROOT / "django_multi.yaml")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-frac", type=float, default=0.15)
    ap.add_argument("--calib-frac", type=float, default=0.05)
    ap.add_argument("--test-cap", type=int, default=250, help="max test pairs per language")
    args = ap.parse_args(argv)

    stats: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        wheel = get_wheel(args.wheel, Path(tmp))
        wheel_sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
        per_lang = collect(wheel, stats)
    print(f"wheel {wheel.name} sha256 {wheel_sha}")
    print(f"po files parsed (non-English): {stats['po_files']}")
    for k, v in stats["counts"].items():
        print(f"  {k}: {v}")

    # coverage of every locale
    print("\ncoverage (pairs after filtering and dedup), * = selected")
    print(f"{'locale':10} {'script':6} {'pairs':>6}")
    for loc in sorted(per_lang, key=lambda l: (-len(per_lang[l]), l)):
        mark = "*" if loc in LANGS else " "
        print(f"{mark}{loc:9} {SCRIPTS[loc]:6} {len(per_lang[loc]):6d}")
    for loc in LANGS:
        if len(per_lang.get(loc, ())) < MIN_PAIRS:
            raise SystemExit(f"{loc}: only {len(per_lang.get(loc, ()))} pairs (< {MIN_PAIRS})")
    scripts_used = sorted({SCRIPTS[l] for l in LANGS})
    print(f"\nselected {len(LANGS)} languages, {len(scripts_used)} scripts: {', '.join(scripts_used)}")

    # split by msgid, across all selected languages: a plural source (msgid_plural)
    # goes with its msgid, so "%(num)d month" / "%(num)d months" share a split.
    # Sources linked through a msgid are joined (union-find) into one unit.
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for loc in LANGS:
        for _, src, _, _, msgid in per_lang[loc]:
            a, b = find(src), find(msgid)
            if a != b:
                parent[max(a, b)] = min(a, b)
    sources = sorted({src for loc in LANGS for _, src, _, _, _ in per_lang[loc]})
    units = sorted({find(s) for s in sources})
    order = units[:]
    random.Random(args.seed).shuffle(order)
    n_test = round(len(order) * args.test_frac)
    n_cal = round(len(order) * args.calib_frac)
    unit_split = {u: "test" for u in order[:n_test]}
    unit_split.update({u: "calibration" for u in order[n_test:n_test + n_cal]})
    unit_split.update({u: "train" for u in order[n_test + n_cal:]})
    assign = {s: unit_split[find(s)] for s in sources}
    # near-duplicates: a normalised key belongs to the highest-ranked split any of its sources is in
    # (train > calibration > test); sources of that key in a lower-ranked split are dropped
    rank = {"train": 2, "calibration": 1, "test": 0}
    key_split: dict[str, str] = {}
    for src in sources:
        k = normalise(src)
        if k not in key_split or rank[assign[src]] > rank[key_split[k]]:
            key_split[k] = assign[src]
    near_dup = {s for s in sources if assign[s] != key_split[normalise(s)]}
    print(f"near-duplicates dropped: {len(near_dup)} sources "
          f"({collections.Counter(assign[s] for s in near_dup)})")
    n_src = collections.Counter(assign.values())
    print(f"distinct English sources: {len(sources)} in {len(units)} msgid units -> "
          f"test {n_test} units ({n_src['test']} sources), calibration {n_cal} ({n_src['calibration']}), "
          f"train {len(units) - n_test - n_cal} ({n_src['train']})")

    splits = {"train": [], "calibration": [], "test": []}
    for loc in LANGS:
        lang = lang_code(loc)
        for _, src, tgt, _, _ in per_lang[loc]:
            if src in near_dup:
                continue
            splits[assign[src]].append({"id": f"{lang}:{sid(src)}", "source": src, "target": tgt,
                                        "lang": lang, "script": SCRIPTS[loc]})
    # cap test per language (deterministic sample by id)
    capped, dropped_by_cap = [], {}
    by = collections.defaultdict(list)
    for r in splits["test"]:
        by[r["lang"]].append(r)
    for lang in sorted(by):
        rs = sorted(by[lang], key=lambda r: r["id"])
        if len(rs) > args.test_cap:
            keep = random.Random(f"{args.seed}:{lang}").sample(rs, args.test_cap)
            dropped_by_cap[lang] = len(rs) - args.test_cap
            rs = keep
        capped.extend(rs)
    splits["test"] = capped
    for name in splits:
        splits[name].sort(key=lambda r: (r["lang"], r["id"]))

    # checks
    for name, rs in splits.items():
        ids = [r["id"] for r in rs]
        assert len(ids) == len(set(ids)), f"duplicate id in {name}"
    tr = {r["source"] for r in splits["train"]}
    te = {r["source"] for r in splits["test"]}
    ca = {r["source"] for r in splits["calibration"]}
    assert not tr & te and not tr & ca and not te & ca, "source string in two splits"
    ntr, nte, nca = ({normalise(x) for x in xs} for xs in (tr, te, ca))
    assert not ntr & nte and not ntr & nca and not nte & nca, "normalised source in two splits"

    args.out.mkdir(parents=True, exist_ok=True)
    shas = {name: write_parquet(rs, args.out / f"{name}.parquet") for name, rs in splits.items()}

    # per-language table
    cnt = {name: collections.Counter(r["lang"] for r in rs) for name, rs in splits.items()}
    base = copy_baseline(splits["test"])
    print(f"\n| lang | script | train | calibration | test | test dropped by cap | copy-source chrF | copy-source BLEU |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for loc in LANGS:
        lang = lang_code(loc)
        chrf, bleu, _ = base[lang]
        print(f"| {lang} | {SCRIPTS[loc]} | {cnt['train'][lang]} | {cnt['calibration'][lang]} | "
              f"{cnt['test'][lang]} | {dropped_by_cap.get(lang, 0)} | {chrf:.1f} | {bleu:.1f} |")
    tot = {name: len(rs) for name, rs in splits.items()}
    mean_chrf = sum(v[0] for v in base.values()) / len(base)
    mean_bleu = sum(v[1] for v in base.values()) / len(base)
    print(f"| **total** | {len(scripts_used)} scripts | {tot['train']} | {tot['calibration']} | "
          f"{tot['test']} | {sum(dropped_by_cap.values())} | {mean_chrf:.1f} (mean) | {mean_bleu:.1f} (mean) |")
    for name in splits:
        p = args.out / f"{name}.parquet"
        print(f"{p.relative_to(ROOT.parent) if p.is_relative_to(ROOT.parent) else p}: "
              f"{tot[name]} rows, {p.stat().st_size} bytes, sha256 {shas[name]}")

    rel = args.out.relative_to(args.manifest.parent).as_posix()
    langs_txt = ", ".join(lang_code(l) for l in LANGS)
    manifest = (
        "name: django_multi\n"
        f"description: \"English -> {len(LANGS)} languages ({len(scripts_used)} scripts), Django "
        f"{DJANGO_VERSION} gettext catalogues (msgid -> msgstr); splits held out by msgid, near-duplicates dropped. "
        "Extracted by datasets/scripts/extract_django_po.py.\"\n"
        "license: BSD-3-Clause\n"
        "task: translation\n"
        "source:\n"
        "  kind: local\n"
        "  format: parquet\n"
        "fields:\n"
        "  id: id\n"
        "  text: source\n"
        "  reference: target\n"
        "  language: lang\n"
        f"# languages: {langs_txt}\n"
        f"# test capped at {args.test_cap} pairs per language (seed {args.seed})\n"
        "splits:\n"
        + "".join(f"  {n}: {rel}/{n}.parquet\n" for n in splits)
        + "sha256:\n"
        + "".join(f"  {rel}/{n}.parquet: {shas[n]}\n" for n in splits)
    )
    args.manifest.write_text(manifest, encoding="utf-8")
    print(f"wrote {args.manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
