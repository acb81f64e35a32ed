"""The readers and filters of datasets/scripts/extract_debian_multi.py, on small inputs with known answers."""
from __future__ import annotations

import gettext
import io
import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "datasets" / "scripts"))
import extract_debian_multi as ex  # noqa: E402


def write_mo(entries: list[tuple[str, str]]) -> bytes:
    """A little-endian GNU .mo file (the layout msgfmt writes), keys sorted as gettext expects."""
    entries = sorted(entries, key=lambda e: e[0].encode())
    ids = [k.encode() for k, _ in entries]
    strs = [v.encode() for _, v in entries]
    n = len(entries)
    o_orig, o_trans = 28, 28 + 8 * n
    data_start = o_trans + 8 * n
    blob, tab_o, tab_t = b"", [], []
    for s in ids:
        tab_o.append((len(s), data_start + len(blob)))
        blob += s + b"\0"
    for s in strs:
        tab_t.append((len(s), data_start + len(blob)))
        blob += s + b"\0"
    head = struct.pack("<7I", 0x950412DE, 0, n, o_orig, o_trans, 0, 0)
    return head + b"".join(struct.pack("<2I", *t) for t in tab_o + tab_t) + blob


def test_read_mo_agrees_with_gettext():
    entries = [("", "Content-Type: text/plain; charset=UTF-8\nPlural-Forms: nplurals=2; plural=(n != 1);\n"),
               ("Open ~File", "Datei ö~ffnen"),
               ("menu\x04Save", "Speichern"),                         # msgctxt "menu"
               ("%d file\x00%d files", "%d Datei\x00%d Dateien"),   # plural entry
               ("Größe", "Größe (neu)")]
    data = write_mo(entries)
    got = dict(ex.read_mo(data))
    assert got == {"Open ~File": "Datei ö~ffnen", "Save": "Speichern", "%d file": "%d Datei",
                   "Größe": "Größe (neu)"}
    t = gettext.GNUTranslations(io.BytesIO(data))                      # the independent reader
    assert t.gettext("Open ~File") == got["Open ~File"]
    assert t.pgettext("menu", "Save") == got["Save"]
    assert t.ngettext("%d file", "%d files", 1) == got["%d file"]


def test_help_page_pairs_by_id_and_keeps_the_default_variant():
    html = ('<html><body><div id="DisplayArea">'
            '<h2 id="hd_id3149031" dir="auto"><span class="switchinline"> <span hidden="true" id="WRITERx_1" '
            'class="WRITER"><a href="x">To Document Begin</a></span> <span hidden="true" id="defaultx_1">'
            '<a href="x">First Page</a></span> </span></h2>'
            '<p id="par_id3153539" class="paragraph"><span class="avis">Moves to the first page.</span> Only in '
            '<span class="emph">Print Preview</span>.<img src="a.png" alt="Icon"></p>'
            '<p id="par_id3153539">Again.</p><p id="other">not a help paragraph</p></div></body></html>')
    p = ex.HelpPage()
    p.feed(html)
    assert p.texts() == {"hd_id3149031#1": "First Page",
                         "par_id3153539#1": "Moves to the first page. Only in Print Preview.",
                         "par_id3153539#2": "Again."}


@pytest.mark.parametrize("raw, clean", [
    ("~File", "File"), ("Save _As...", "Save As..."), ("&Open", "Open"), ("ファイル(~F)", "ファイル"),
    ("開く(&O)...", "開く..."), ("Tom & Jerry", "Tom & Jerry"), ("a_b_c", "a_b_c"),
])
def test_accelerator_markers(raw, clean):
    assert ex.strip_accel(raw) == clean


@pytest.mark.parametrize("locale, lang", [
    ("de", "de"), ("pt_BR", "pt-br"), ("pt-br", "pt-br"), ("zh_CN", "zh-hans"), ("zh-hans", "zh-hans"),
    ("sr", "sr"), ("sr-ec", "sr"), ("sr@latin", None), ("sr-el", None), ("zh_TW", None), ("pt", None),
    ("ca@valencia", None), ("en", None),
])
def test_locale_mapping(locale, lang):
    assert ex.lang_of(locale) == lang


def test_filters_reject_what_the_docs_say():
    def ok(lang, en, xx):
        return ex.keep(lang, en, xx, __import__("collections").Counter())
    assert ok("de", "Insert a new table.", "Fügt eine neue Tabelle ein.")
    assert not ok("de", "Insert a new table.", "Insert a new table.")             # untranslated
    assert not ok("ru", "Insert a new table.", "Insert a new tabelle.")            # wrong script
    assert ok("ru", "Insert a new table.", "Вставить новую таблицу.")
    assert not ok("ar", "Insert a table", "\uFEE9\uFEDF\uFEE4\uFE8E")                # presentation forms
    assert not ok("de", "Page 3 of 10", "Seite 3 von 11")                          # numbers differ
    assert ok("fa", "Page 3 of 10", "صفحه ۳ از ۱۰")                                 # Persian digits count
    assert not ok("de", "See [[Help:Contents]]", "Siehe [[Hilfe:Inhalt]]")         # wiki markup
    assert not ok("de", "Insert a new table into the document.", "Ja")             # length ratio
    assert not ok("zh-hans", "Insert a new table.", "新しい表を挿入します。")        # kana in Chinese
