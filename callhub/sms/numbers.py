"""Which caller numbers may receive an SMS: the one rule, in one place.

A number is sendable when, after dropping spaces, dashes, dots and
parentheses, it is an optional leading '+' followed by ASCII digits only,
at least `min_digits` (default 7) and at most 15 (E.164) of them.
Everything else is refused, with a reason:

- `withheld`: no number, or what PBXs and trunks put in its place
  ("anonymous", "unknown", "<unknown>", "restricted", "private",
  "unavailable", "withheld", "blocked", any case);
- `not_a_number`: anything that does not start with a digit or '+', or has a
  non-digit after it (`PJSIP/1001`, `s`, `*99`, `#31#...`), or is longer
  than 15 digits;
- `internal`: fewer than `min_digits` digits, i.e. an extension or a short
  service code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

NumberRefusal = Literal["withheld", "not_a_number", "internal"]
WITHHELD = frozenset({
    "", "anonymous", "unknown", "<unknown>", "restricted", "private", "unavailable",
    "withheld", "blocked",
})
MAX_DIGITS = 15
_SEPARATORS = re.compile(r"[\s\-.()]")
_NUMBER = re.compile(r"\+?[0-9]+")


@dataclass(frozen=True, slots=True)
class NumberCheck:
    """`number` (normalised) when sendable, else `refusal` says why not."""

    number: str | None
    refusal: NumberRefusal | None


def check_number(raw: str | None, min_digits: int = 7) -> NumberCheck:
    """Normalise a caller number and say whether an SMS may go to it."""
    text = (raw or "").strip()
    if text.lower() in WITHHELD:
        return NumberCheck(None, "withheld")
    compact = _SEPARATORS.sub("", text)
    if not _NUMBER.fullmatch(compact):
        return NumberCheck(None, "not_a_number")
    digits = len(compact.lstrip("+"))
    if digits > MAX_DIGITS:
        return NumberCheck(None, "not_a_number")
    if digits < min_digits:
        return NumberCheck(None, "internal")
    return NumberCheck(compact, None)
