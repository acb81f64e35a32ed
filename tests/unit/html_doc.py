"""A small HTML reader for the report tests: every <table id=...> and every <h2>, as text."""

from __future__ import annotations

from html.parser import HTMLParser


class Doc(HTMLParser):
    """``tables[id]``: rows of (tr class, [(cell text, cell class)]); ``h2``: the text of every <h2>."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[tuple[str, list[tuple[str, str]]]]] = {}
        self.h2: list[str] = []
        self._id = self._cell = self._h2 = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
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
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._id][-1][1].append(("".join(self._cell[0]).strip(), self._cell[1]))
            self._cell = None
        elif tag == "table":
            self._id = None
        elif tag == "h2" and self._h2 is not None:
            self.h2.append("".join(self._h2).strip())
            self._h2 = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[0].append(data)
        if self._h2 is not None:
            self._h2.append(data)


def parse(html: str) -> Doc:
    d = Doc()
    d.feed(html)
    return d
