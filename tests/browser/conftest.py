"""Fixture of the browser tests: the Chromium binary (the small real sweep they open is tests/conftest.py's).

No Chromium: the tests skip, unless QBENCH_REQUIRE_BROWSER=1 (CI sets it), where they fail.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if str(HERE.parent / "unit") not in sys.path:
    sys.path.append(str(HERE.parent / "unit"))  # html_doc: the report tests' HTML reader, for the dumped DOM


@pytest.fixture(scope="session")
def chromium_binary() -> str:
    from chromium import NAMES, find

    binary = find()
    if binary is None:
        why = f"no Chromium on PATH (looked for {', '.join(NAMES)}; QBENCH_CHROMIUM names another)"
        if os.environ.get("QBENCH_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{why}, and QBENCH_REQUIRE_BROWSER=1 requires one", pytrace=False)
        pytest.skip(why)
    return binary
