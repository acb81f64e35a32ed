"""A small HTML reader for the report tests: every <table id=...>, every <h2>, and every element with an id or
a class, as text. Also used by tests/browser on the DOM Chromium dumps after the page's scripts ran."""

from __future__ import annotations

from html.parser import HTMLParser

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
BLOCK = {"address", "br", "dd", "details", "div", "dl", "dt", "h1", "h2", "h3", "h4", "li", "p", "section",
         "summary", "table", "td", "th", "tr", "ul"}


class Element:
    def __init__(self, tag: str, attrs: dict):
        self.tag, self.attrs, self.parts = tag, attrs, []

    @property
    def text(self) -> str:
        """The text as the markup has it: block boundaries add nothing ('<b>de</b>-0.90' -> 'de-0.90')."""
        return "".join(p for p in self.parts if p is not None).strip()

    @property
    def words(self) -> str:
        """The text with a space at each block boundary and runs of whitespace collapsed, as a reader sees it."""
        return " ".join("".join(" " if p is None else p for p in self.parts).split())

    @property
    def classes(self) -> list[str]:
        return (self.attrs.get("class") or "").split()


class Doc(HTMLParser):
    """``tables[id]``: rows of (tr class, [(cell text, cell class)]); ``h2``: the text of every <h2>;
    ``ids[id]``: the element with that id (``.text``, ``.attrs``); ``elements``: every element with an id or a
    class, in document order (see ``by_class``)."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[tuple[str, list[tuple[str, str]]]]] = {}
        self.h2: list[str] = []
        self.ids: dict[str, Element] = {}
        self.elements: list[Element] = []
        self._id = self._cell = self._h2 = None
        self._open: list[tuple[str, Element | None]] = []

    def _boundary(self, tag):
        if tag in BLOCK:
            for _, el in self._open:
                if el is not None:
                    el.parts.append(None)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self._boundary(tag)
        el = Element(tag, a) if (a.get("id") or a.get("class")) else None
        if el is not None:
            self.elements.append(el)
            if a.get("id"):
                self.ids.setdefault(a["id"], el)
        if tag not in VOID:
            self._open.append((tag, el))
        if tag == "table":
            self._id = a.get("id")
            self.tables[self._id] = []
        elif tag == "tr" and self._id is not None:
            self.tables[self._id].append((a.get("class") or "", []))
        elif tag in ("td", "th") and self._id is not None:
            self._cell = [[], a.get("class") or ""]
        elif tag == "h2":
            self._h2 = []

    def handle_endtag(self, tag):
        self._boundary(tag)
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._id][-1][1].append(("".join(self._cell[0]).strip(), self._cell[1]))
            self._cell = None
        elif tag == "table":
            self._id = None
        elif tag == "h2" and self._h2 is not None:
            self.h2.append("".join(self._h2).strip())
            self._h2 = None
        if any(t == tag for t, _ in self._open):
            while self._open and self._open.pop()[0] != tag:
                pass

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[0].append(data)
        if self._h2 is not None:
            self._h2.append(data)
        for _, el in self._open:
            if el is not None:
                el.parts.append(data)

    def by_class(self, cls: str) -> list[Element]:
        return [e for e in self.elements if cls in e.classes]


def parse(html: str) -> Doc:
    d = Doc()
    d.feed(html)
    return d
