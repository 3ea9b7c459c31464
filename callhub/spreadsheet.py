"""Text for a CSV cell that a spreadsheet will not run as a formula.

A cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return is a formula
to Excel and LibreOffice (CSV injection); names, notes and line keys come from
callers and configuration, so such text gets a leading `'`. A phone number
(`+86 139...`, `-1`) is left as it is: it runs as nothing but a number.
"""

from __future__ import annotations

import re

PHONE = re.compile(r"^[+-]?\d[\d ]*$")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_text(text: str) -> str:
    """`text`, with a leading `'` where a spreadsheet would read a formula."""
    if text[:1] in _FORMULA_START and not PHONE.match(text):
        return "'" + text
    return text
