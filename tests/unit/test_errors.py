"""errors.first_line: what a one-line message quotes of a library's error."""

import pytest

from qbench.config.errors import first_line


@pytest.mark.parametrize("err, limit, want", [
    (ValueError("bad value\nTraceback (most recent call last):\n  ..."), 300, "bad value"),
    (RuntimeError("\n\n   [ONNXRuntimeError] : 6 \n second"), 300, "[ONNXRuntimeError] : 6"),
    (OSError(""), 300, "OSError"),            # an empty text: the type names it (an IndexError before)
    (KeyError(), None, "KeyError"),
    (ValueError("x" * 500), 300, "x" * 300),
    (ValueError("x" * 500), None, "x" * 500),
    ("  plain text  ", 4, "plai"),
    ("", 300, ""),                             # not an exception: nothing to name
])
def test_first_line(err, limit, want):
    assert first_line(err, limit) == want
