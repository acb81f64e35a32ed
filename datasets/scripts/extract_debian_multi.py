#!/usr/bin/env python3
"""Build the English <-> 32-language benchmark from Debian's software documentation and interface catalogues.

Sources (Debian 12 "bookworm" packages, fetched with ``apt-get download`` and unpacked with ``dpkg -x``,
nothing installed):

  libreoffice-help   LibreOffice help pages (HTML); paragraphs carry the same ``par_id...``/``hd_id...`` id
                     in every language, so pairs align by (page, id, occurrence). Per-platform variants inside
                     a ``switch`` are resolved to the ``default...`` one, as the help viewer shows them.
  libreoffice-ui     LibreOffice interface catalogues (gettext .mo, msgid = English).
  calibre            calibre's catalogues (.mo inside ``localization/locales.zip``).
  mediawiki          MediaWiki interface messages (JSON files paired by key).
  vlc, gimp, inkscape, gnupg   extra interface catalogues (.mo) that lift the non-Latin tail.

Every source is documentation or interface text; no freely translated narrative (game dialogue) is used,
so any segment may serve as a test or calibration reference.

Filters: translation non-empty and different from the English; single keyboard-accelerator markers
(``~``, ``_``, ``&``, and CJK-style ``(&F)`` suffixes) stripped; for non-Latin languages most letters in the
expected script; no Arabic presentation forms (visually stored text); a plausible length ratio; the same
numbers on both sides; no wiki or HTML markup. ``sr@latin``, ``zh_TW``/``zh_HK``, ``pt``(PT) and
``ca@valencia`` are ignored (``sr`` is Cyrillic, Portuguese is Brazilian, Chinese is Simplified).

Splits are made on the *normalised* English (lower-case; digits, punctuation and symbols removed;
placeholders ``%s``, ``%(name)s``, ``{0}``, ``$1``, ``%1`` unified), so 'Yesterday'/'yesterday' or
'Add another %(model)s'/'Add another %(verbose_name)s' are one unit:

  test         per language, the 1,000 normalised keys of >= 6 (and <= 50) English words with the smallest
               hash (fewer where the language has fewer); one pair per key.
  calibration  per language, 600 further keys (>= 3 words) with the smallest salted hash, none a test key
               of any language.
  train        everything else: every test and calibration key of EVERY language is removed from every
               language's training data, and the script checks that afterwards.

Output:
  datasets/debian_multi/{test,calibration}.parquet  shipped (columns id, en, xx, lang, script, source, words)
  datasets/debian_multi/train.parquet               rebuilt, not committed (ignored by git)
  datasets/debian_multi_{xx_en,en_xx}.yaml          qbench manifests, one per direction, same files
  datasets/debian_multi/PROVENANCE.yaml             packages (name, version, sha256), licences, counts, checks

Usage (about 10 minutes on 2 busy cores; needs apt-get and dpkg, pyarrow):
  python datasets/scripts/extract_debian_multi.py --work /tmp/debian-multi
With ``--pinned`` the exact package versions recorded in PROVENANCE.yaml are downloaded and their sha256
checked (Debian's mirror drops superseded versions after point releases, so this can fail years later;
without it the current bookworm versions are used and recorded).
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import html.parser
import json
import re
import subprocess
import sys
import unicodedata
import zipfile
from pathlib import Path

from segment_key import normalise  # the split key, shared with the Django script and the leak tests

ROOT = Path(__file__).resolve().parents[1]          # datasets/
NAME = "debian_multi"
N_TEST, N_CAL = 1000, 600
MIN_TEST_WORDS, MAX_TEST_WORDS, MIN_CAL_WORDS = 6, 50, 3

SCRIPT = {  # language -> ISO 15924 script
    "ar": "Arab", "fa": "Arab", "he": "Hebr", "el": "Grek", "hi": "Deva", "hy": "Armn", "ka": "Geor",
    "ta": "Taml", "th": "Thai", "ja": "Jpan", "ko": "Kore", "zh-hans": "Hans",
    "bg": "Cyrl", "ru": "Cyrl", "sr": "Cyrl", "uk": "Cyrl",
    **{x: "Latn" for x in "ca cs da de es fi fr hu id it nl pl pt-br sv tr vi".split()},
}
LANGS = sorted(SCRIPT)
SCRIPT_RE = {
    "Arab": r"\u0600-\u06FF\u0750-\u077F", "Hebr": r"\u0590-\u05FF", "Grek": r"\u0370-\u03FF\u1F00-\u1FFF",
    "Deva": r"\u0900-\u097F", "Armn": r"\u0530-\u058F", "Geor": r"\u10A0-\u10FF\u2D00-\u2D2F",
    "Taml": r"\u0B80-\u0BFF", "Thai": r"\u0E00-\u0E7F", "Jpan": r"\u3040-\u30FF\u4E00-\u9FFF",
    "Kore": r"\uAC00-\uD7AF\u1100-\u11FF\u3130-\u318F", "Hans": r"\u4E00-\u9FFF", "Cyrl": r"\u0400-\u04FF",
    "Latn": r"A-Za-z\u00C0-\u024F\u1E00-\u1EFF",
}
ALIASES = {"pt_br": "pt-br", "pt-br": "pt-br", "zh_cn": "zh-hans", "zh-cn": "zh-hans", "zh-hans": "zh-hans",
           "sr-ec": "sr"}
HELP_LANGS = "ca cs da de el es fi fr hi hu id it ja ko nl pl pt-br ru sv tr vi zh-cn".split()
UI_LANGS = [x if x != "zh-hans" else "zh-cn" for x in LANGS if x != "hy"]   # LibreOffice has no hy
EXTRA = {"vlc-l10n": "vlc", "gimp-data": "gimp", "inkscape": "inkscape", "gnupg-l10n": "gnupg"}
PACKAGES = (["libreoffice-help-en-us"] + [f"libreoffice-help-{x}" for x in HELP_LANGS]
            + [f"libreoffice-l10n-{x}" for x in UI_LANGS] + ["calibre", "mediawiki"] + list(EXTRA))
LICENCES = {  # per source, as the packages' debian/copyright state them
    "libreoffice-help": "MPL-2.0", "libreoffice-ui": "MPL-2.0", "calibre": "GPL-3",
    "mediawiki": "GPL-2.0-or-later", "vlc": "GPL-2.0-or-later", "gimp": "GPL-3.0-or-later",
    "inkscape": "GPL-2.0-or-later", "gnupg": "GPL-3.0-or-later",
}


def lang_of(locale: str) -> str | None:
    """Our language code for a locale directory name, or None for variants we ignore (sr@latin, zh_TW, pt)."""
    lo = locale.strip().lower()
    if lo in ALIASES:
        return ALIASES[lo]
    lo = lo.replace("_", "-")
    return lo if lo in SCRIPT and lo not in ("zh-hans",) else ALIASES.get(lo)


# ------------------------------------------------------------------------------------------------ readers
def read_mo(data: bytes) -> list[tuple[str, str]]:
    """(msgid, msgstr) pairs of a gettext .mo file; context dropped, plural entries give their singular."""
    import struct
    magic = struct.unpack("<I", data[:4])[0]
    end = "<" if magic == 0x950412DE else ">"
    _, n, o_orig, o_trans = struct.unpack(end + "4I", data[4:20])
    out = []
    for i in range(n):
        ln, off = struct.unpack(end + "2I", data[o_orig + 8 * i:o_orig + 8 * i + 8])
        tl, toff = struct.unpack(end + "2I", data[o_trans + 8 * i:o_trans + 8 * i + 8])
        try:
            mid = data[off:off + ln].decode("utf-8")
            mstr = data[toff:toff + tl].decode("utf-8")
        except UnicodeDecodeError:
            continue
        if not mid:
            continue  # header
        mid = mid.split("\x04")[-1].split("\x00")[0]
        mstr = mstr.split("\x00")[0]
        out.append((mid, mstr))
    return out


class HelpPage(html.parser.HTMLParser):
    """Text of every element whose id starts with par_id/hd_id, hidden non-default variants left out."""
    VOID = {"img", "br", "input", "meta", "link", "hr", "source", "col", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, bool, str | None]] = []  # (tag, skip, capture id)
        self.parts: dict[str, list[str]] = {}
        self.order: list[str] = []
        self.seen: collections.Counter = collections.Counter()

    def handle_starttag(self, tag, attrs):
        if tag in self.VOID:
            return
        a = dict(attrs)
        skip = bool(self.stack and self.stack[-1][1])
        if "hidden" in a and not str(a.get("id") or "").startswith("default"):
            skip = True
        cap = self.stack[-1][2] if self.stack else None
        i = a.get("id") or ""
        if cap is None and (i.startswith("par_id") or i.startswith("hd_id")):
            self.seen[i] += 1
            cap = f"{i}#{self.seen[i]}"
            self.parts[cap] = []
            self.order.append(cap)
        self.stack.append((tag, skip, cap))

    def handle_endtag(self, tag):
        for k in range(len(self.stack) - 1, -1, -1):
            if self.stack[k][0] == tag:
                del self.stack[k:]
                return

    def handle_data(self, d):
        if self.stack and self.stack[-1][2] is not None and not self.stack[-1][1]:
            self.parts[self.stack[-1][2]].append(d)

    def texts(self) -> dict[str, str]:
        return {k: " ".join("".join(self.parts[k]).split()) for k in self.order}


def parse_help(path: Path) -> dict[str, str]:
    p = HelpPage()
    p.feed(path.read_text(encoding="utf-8", errors="replace"))
    return p.texts()


def collect(root: Path, log) -> list[tuple[str, str, str, str]]:
    """All raw (lang, source, en, xx) pairs from the unpacked packages under root."""
    pairs: list[tuple[str, str, str, str]] = []
    # LibreOffice help: pair by page and paragraph id
    hroot = root / "usr/share/libreoffice/help"
    en_pages = sorted(p.relative_to(hroot / "en-US") for p in (hroot / "en-US").rglob("*.html"))
    en_cache = {}
    for hl in HELP_LANGS:
        lang, n0 = lang_of(hl), len(pairs)
        d = hroot / {"pt-br": "pt-BR", "zh-cn": "zh-CN"}.get(hl, hl)
        for rel in en_pages:
            f = d / rel
            if not f.is_file():
                continue
            if rel not in en_cache:
                en_cache[rel] = parse_help(hroot / "en-US" / rel)
            en = en_cache[rel]
            for k, t in parse_help(f).items():
                if k in en:
                    pairs.append((lang, "libreoffice-help", en[k], t))
        log(f"libreoffice-help {lang}: {len(pairs) - n0} aligned paragraphs")
    # LibreOffice UI
    for d in sorted((root / "usr/lib/libreoffice/program/resource").iterdir()):
        lang = lang_of(d.name)
        if lang:
            for mo in sorted((d / "LC_MESSAGES").glob("*.mo")):
                pairs += [(lang, "libreoffice-ui", a, b) for a, b in read_mo(mo.read_bytes())]
    # calibre
    with zipfile.ZipFile(root / "usr/share/calibre/localization/locales.zip") as z:
        for n in sorted(z.namelist()):
            loc, _, base = n.partition("/")
            if base == "messages.mo" and lang_of(loc):
                pairs += [(lang_of(loc), "calibre", a, b) for a, b in read_mo(z.read(n))]
    # MediaWiki: every folder with an en.json, paired by message key
    for en_json in sorted((root / "usr/share/mediawiki").rglob("en.json")):
        en = json.loads(en_json.read_text(encoding="utf-8"))
        for f in sorted(en_json.parent.glob("*.json")):
            lang = lang_of(f.stem)
            if not lang:
                continue
            try:
                tr = json.loads(f.read_text(encoding="utf-8"))
            except ValueError:
                continue
            pairs += [(lang, "mediawiki", en[k], v) for k, v in tr.items()
                      if k != "@metadata" and isinstance(v, str) and isinstance(en.get(k), str)]
    # extra interface catalogues
    doms = {"vlc": "vlc", "gimp20": "gimp", "gimp20-std-plug-ins": "gimp", "gimp20-script-fu": "gimp",
            "gimp20-python": "gimp", "inkscape": "inkscape", "gnupg2": "gnupg"}
    for mo in sorted((root / "usr/share/locale").glob("*/LC_MESSAGES/*.mo")):
        lang, src = lang_of(mo.parts[-3]), doms.get(mo.stem)
        if lang and src:
            pairs += [(lang, src, a, b) for a, b in read_mo(mo.read_bytes())]
    return pairs


# ------------------------------------------------------------------------------------------------ filters
_ACCEL_CJK = re.compile(r"\s*[(（][~_&][A-Za-z0-9][)）]")
_PRESENTATION = re.compile("[\uFB50-\uFDFF\uFE70-\uFEFF]")
_MARKUP = re.compile(r"\{\{|\[\[|<[a-zA-Z/!]|https?://|\\n")


def strip_accel(s: str) -> str:
    s = _ACCEL_CJK.sub("", s)
    for m in "~_&":
        if s.count(m) == 1:
            s = re.sub(re.escape(m) + r"(?=\w)", "", s)
    return " ".join(s.split())


def numbers(s: str) -> list[str]:
    out, cur = [], ""
    for c in s:
        d = unicodedata.digit(c, None)
        if d is not None:
            cur += str(d)
        elif cur:
            out.append(cur)
            cur = ""
    return sorted(out + ([cur] if cur else []))


def script_share(s: str, script: str) -> float:
    letters = [c for c in s if c.isalpha()]
    if not letters:
        return 0.0
    rx = re.compile(f"[{SCRIPT_RE[script]}]")
    return sum(1 for c in letters if rx.match(c)) / len(letters)


def keep(lang: str, en: str, xx: str, why: collections.Counter) -> bool:
    script = SCRIPT[lang]
    checks = (
        ("empty", bool(en) and bool(xx) and any(c.isalpha() for c in en)),
        ("untranslated", xx.lower() != en.lower()),
        ("markup", not _MARKUP.search(en) and not _MARKUP.search(xx)),
        ("presentation_forms", not _PRESENTATION.search(xx)),
        ("too_long", len(en) <= 600 and len(xx) <= 900),
        ("script", script_share(xx, script) >= (0.5 if script != "Latn" else 0.9)),
        ("kana_in_zh", lang != "zh-hans" or not re.search("[\u3040-\u30FF]", xx)),
        ("numbers", numbers(en) == numbers(xx)),
    )
    for name, ok in checks:
        if not ok:
            why[name] += 1
            return False
    if len(en) >= 12:
        r = len(xx) / len(en)
        lo, hi = (0.12, 2.0) if script in ("Jpan", "Hans", "Kore") else (0.3, 3.0)
        if not lo <= r <= hi:
            why["length_ratio"] += 1
            return False
    return True


def h(key: str, salt: str = "") -> int:
    return int.from_bytes(hashlib.sha256((salt + key).encode()).digest()[:8], "big")


# ------------------------------------------------------------------------------------------------ build
def fetch(work: Path, pinned: dict | None, log) -> list[dict]:
    debs = work / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    want = [f"{p}={pinned[p]['version']}" if pinned else p for p in PACKAGES]
    have = {f.name.split("_")[0] for f in debs.glob("*.deb")}
    missing = [w for w, p in zip(want, PACKAGES) if p not in have]
    if missing:
        log(f"apt-get download {len(missing)} packages into {debs}")
        subprocess.run(["apt-get", "download", *missing], cwd=debs, check=True)
    out = []
    for p in PACKAGES:
        (f,) = sorted(debs.glob(f"{p}_*.deb"))
        sha = hashlib.sha256(f.read_bytes()).hexdigest()
        ver = subprocess.run(["dpkg-deb", "-f", str(f), "Version"], capture_output=True, text=True,
                             check=True).stdout.strip()
        if pinned and (pinned[p]["sha256"] != sha or pinned[p]["version"] != ver):
            sys.exit(f"error: {f.name}: version {ver} sha256 {sha} is not the pinned "
                     f"{pinned[p]['version']} {pinned[p]['sha256']}")
        stamp = work / "root" / f".{f.name}.done"
        if not stamp.exists():
            subprocess.run(["dpkg", "-x", str(f), str(work / "root")], check=True)
            stamp.touch()
        out.append({"name": p, "version": ver, "sha256": sha, "file": f.name})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="scratch folder for .debs and unpacked files")
    ap.add_argument("--out", type=Path, default=ROOT / NAME)
    ap.add_argument("--pinned", action="store_true", help="download the versions in PROVENANCE.yaml")
    a = ap.parse_args(argv)
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    def log(m):
        print(m, file=sys.stderr, flush=True)

    pinned = None
    if a.pinned:
        prov = yaml.safe_load((a.out / "PROVENANCE.yaml").read_text(encoding="utf-8"))
        pinned = {p["name"]: p for p in prov["packages"]}
    packages = fetch(a.work, pinned, log)
    raw = collect(a.work / "root", log)
    log(f"{len(raw)} raw pairs")

    why: collections.Counter = collections.Counter()
    by_lang: dict[str, dict[str, dict[tuple[str, str], str]]] = {x: {} for x in LANGS}  # lang -> key -> pair
    seen = set()
    for lang, src, en, xx in raw:
        en, xx = strip_accel(en), strip_accel(xx)
        if (lang, en, xx) in seen:
            why["duplicate"] += 1
            continue
        seen.add((lang, en, xx))
        if not keep(lang, en, xx, why):
            continue
        by_lang[lang].setdefault(normalise(en), {})[(en, xx)] = src
    del seen, raw
    log("filtered: " + json.dumps(dict(why)))

    def best(pairs: dict[tuple[str, str], str]) -> tuple[str, str, str]:
        # one pair per key: documentation before interface text, then the shortest English, then text order
        (en, xx), src = min(pairs.items(), key=lambda kv: (kv[1] != "libreoffice-help", len(kv[0][0]), kv[0]))
        return en, xx, src

    def words(en: str) -> int:
        return len(en.split())

    test_keys, cal_keys, thresholds = {}, {}, {}
    for lang in LANGS:
        cands = sorted((k for k, ps in by_lang[lang].items() if k
                        and MIN_TEST_WORDS <= words(best(ps)[0]) <= MAX_TEST_WORDS), key=h)
        test_keys[lang] = cands[:N_TEST]
        thresholds[lang] = len(cands)
    all_test = set().union(*map(set, test_keys.values()))
    for lang in LANGS:
        cands = sorted((k for k, ps in by_lang[lang].items() if k and k not in all_test
                        and words(best(ps)[0]) >= MIN_CAL_WORDS), key=lambda k: h(k, "calibration:"))
        cal_keys[lang] = cands[:N_CAL]
    all_cal = set().union(*map(set, cal_keys.values()))
    held = all_test | all_cal

    def row(lang, key, en, xx, src):
        return {"id": f"{lang}:{hashlib.sha1(key.encode()).hexdigest()[:12]}", "en": en, "xx": xx, "lang": lang,
                "script": SCRIPT[lang], "source": src, "words": words(en)}

    splits = {"test": [], "calibration": [], "train": []}
    for lang in LANGS:
        for name, keys in (("test", test_keys[lang]), ("calibration", cal_keys[lang])):
            for k in keys:
                splits[name].append(row(lang, k, *best(by_lang[lang][k])))
        for k, ps in by_lang[lang].items():
            if k and k not in held:
                for (en, xx), src in sorted(ps.items()):
                    splits["train"].append(row(lang, k, en, xx, src) | {"id": f"{lang}:{len(splits['train'])}"})
    for rs in splits.values():
        rs.sort(key=lambda r: (r["lang"], r["id"]))

    # the leak check the shipped test repeats: no normalised test or calibration source of ANY language
    # occurs in ANY language's training data, and test and calibration share no key
    train_norm = {normalise(r["en"]) for r in splits["train"]}
    test_norm = {normalise(r["en"]) for r in splits["test"]}
    cal_norm = {normalise(r["en"]) for r in splits["calibration"]}
    leaks = {"test_in_train": len(test_norm & train_norm), "calibration_in_train": len(cal_norm & train_norm),
             "test_in_calibration": len(test_norm & cal_norm)}
    if any(leaks.values()):
        sys.exit(f"error: leak between splits: {leaks}")

    a.out.mkdir(parents=True, exist_ok=True)
    shas = {}
    for name, rs in splits.items():
        f = a.out / f"{name}.parquet"
        pq.write_table(pa.Table.from_pylist(rs), f, compression="zstd", compression_level=19)
        shas[name] = hashlib.sha256(f.read_bytes()).hexdigest()
    (a.out / ".gitignore").write_text("# rebuilt by datasets/scripts/extract_debian_multi.py, not shipped\n"
                                      "train.parquet\n")
    counts = {name: dict(sorted(collections.Counter(r["lang"] for r in rs).items())) for name, rs in splits.items()}
    by_source = {name: dict(collections.Counter(r["source"] for r in rs).most_common())
                 for name, rs in splits.items()}
    short = {lang: n for lang, n in counts["test"].items() if n < N_TEST}
    rel = a.out.relative_to(ROOT) if a.out.is_relative_to(ROOT) else a.out
    prov = {
        "name": NAME, "built_by": "datasets/scripts/extract_debian_multi.py", "distribution": "Debian 12 bookworm",
        "licences": LICENCES, "packages": packages,
        "split_rule": {"test": f"per language the {N_TEST} normalised English keys of {MIN_TEST_WORDS}-"
                               f"{MAX_TEST_WORDS} words with the smallest sha256",
                       "calibration": f"per language {N_CAL} further keys of >= {MIN_CAL_WORDS} words, "
                                      "smallest salted sha256, no test key of any language",
                       "train": "all other keys; every test and calibration key of every language removed"},
        "test_eligible_keys": thresholds, "test_short_of_1000": short,
        "filtered_out": dict(why), "counts": counts, "by_source": by_source,
        "leak_check": leaks | {"train_keys": len(train_norm), "test_keys": len(test_norm),
                               "calibration_keys": len(cal_norm)},
        "sha256": {f"{rel}/{n}.parquet": s for n, s in shas.items()},
    }
    (a.out / "PROVENANCE.yaml").write_text(yaml.safe_dump(prov, sort_keys=False, allow_unicode=True),
                                           encoding="utf-8")
    for direction, text, ref in (("xx_en", "xx", "en"), ("en_xx", "en", "xx")):
        desc = ("XX -> English" if direction == "xx_en" else "English -> XX")
        (ROOT / f"{NAME}_{direction}.yaml").write_text(
            f"name: {NAME}_{direction}\n"
            f"description: \"{desc}, {len(LANGS)} languages ({len(set(SCRIPT.values()))} scripts), Debian 12 "
            "software documentation and interface text (LibreOffice help and UI, calibre, MediaWiki, VLC, GIMP, "
            "Inkscape, GnuPG); splits held out by normalised English. Extracted by "
            "datasets/scripts/extract_debian_multi.py; packages, versions, sha256 and licences in "
            f"{rel}/PROVENANCE.yaml.\"\n"
            "license: \"MPL-2.0 / GPL-2.0-or-later / GPL-3.0-or-later per segment: see the source column and "
            f"{rel}/PROVENANCE.yaml\"\n"
            "task: translation\nsource:\n  kind: local\n  format: parquet\n"
            f"fields:\n  id: id\n  text: {text}\n  reference: {ref}\n  language: lang\n"
            f"# languages: {', '.join(LANGS)}\n"
            f"# test: <= {N_TEST} segments of {MIN_TEST_WORDS}-{MAX_TEST_WORDS} English words per language; "
            f"short: {', '.join(f'{k} {v}' for k, v in short.items()) or 'none'}\n"
            f"# train.parquet is not shipped: the script rebuilds it (byte-identical for the same packages)\n"
            "splits:\n" + "".join(f"  {n}: {rel}/{n}.parquet\n" for n in ("train", "calibration", "test"))
            + "sha256:\n" + "".join(f"  {rel}/{n}.parquet: {shas[n]}\n" for n in ("train", "calibration", "test")),
            encoding="utf-8")
    log(json.dumps({"counts": {n: sum(c.values()) for n, c in counts.items()}, "test_short": short,
                    "leaks": leaks}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
