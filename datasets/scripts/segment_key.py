"""The key that translation splits are held out by: one normalised form of an English segment.

Two segments with the same key count as the same test item, so they must land in the same split:
'Yesterday' and 'yesterday', 'Dec' and 'Dec.', 'Add another %(model)s' and 'Add another %(verbose_name)s'.
Lower-case; printf/Python/ICU/MediaWiki placeholders (``%s``, ``%(name)s``, ``%1$d``, ``{0}``, ``{name}``,
``$1``, ``%1``) replaced by one token; digits, punctuation, symbols and spacing removed.
Used by extract_debian_multi.py and extract_django_po.py, and by the leak tests on the shipped splits.
"""
from __future__ import annotations

import re
import unicodedata

PLACEHOLDER = re.compile(r"%\([^)]*\)[-#0 +]*\d*(?:\.\d+)?[a-zA-Z]|%\d*\$?[-#0 +]*\d*(?:\.\d+)?[sdifuxXcgeEl]|%\d+|"
                         r"\{[^{}\s]*\}|\$\d+|\$[A-Za-z_]+\$?|&[a-z]+;")


def normalise(en: str) -> str:
    s = PLACEHOLDER.sub(" ph ", en.lower())
    s = "".join(" " if unicodedata.category(c)[0] in "PSNZC" else c for c in s)
    return " ".join(s.split())
