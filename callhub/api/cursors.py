"""One cursor encoding for every paged list: URL-safe base64 of a JSON array of whole numbers.

A cursor is `[kind, n1, n2, ...]`: the list's kind ("c" calls, "w" worklist,
"f" follow-ups) keeps lists' cursors apart, the numbers say where the last
page ended (times as POSIX microseconds). A cursor is checked against its
kind's declared numbers and their bounds before it reaches a query, so a
forged one (an id past 2^31, a time in year 1 or 99999) is a 400 naming
`cursor`, never a database overflow or a 500.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, ValidationError

from callhub.api.params import BadParameter

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)


def micros(at: datetime) -> int:
    """An aware datetime as POSIX microseconds."""
    return (at - _EPOCH) // _MICRO


def moment(value: int) -> datetime:
    """POSIX microseconds as an aware UTC datetime."""
    return _EPOCH + timedelta(microseconds=value)


Micros = Annotated[int, Field(ge=micros(datetime(1900, 1, 1, tzinfo=UTC)),
                              le=micros(datetime(9999, 1, 1, tzinfo=UTC)) - 1)]
RowId = Annotated[int, Field(ge=1, le=2**31 - 1)]  # ids are 32-bit on PostgreSQL
Rank = Literal[0, 1]


@dataclass(frozen=True)
class CursorKind:
    """The cursors of one list: its tag and the numbers they carry, in order."""

    tag: str
    numbers: tuple[Any, ...]
    _adapter: TypeAdapter[Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        shape: Any = tuple.__class_getitem__((Literal[self.tag], *self.numbers))
        object.__setattr__(self, "_adapter", TypeAdapter(shape))

    def encode(self, *values: int) -> str:
        raw = json.dumps([self.tag, *values], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def decode(self, text: str) -> tuple[int, ...]:
        """The numbers of a cursor this API made for this list; BadParameter otherwise."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            _tag, *values = self._adapter.validate_json(raw, strict=True)
        except (ValueError, binascii.Error, ValidationError):
            raise BadParameter("cursor", "not a cursor this API returned (pass next_cursor "
                                         "as given)") from None
        return tuple(values)


CALLS = CursorKind("c", (Micros, RowId))  # the last call's (arrived_at, id)
WORKLIST = CursorKind("w", (Rank, Micros, RowId))  # (pending-first rank, first miss, id)
FOLLOWUPS = CursorKind("f", (Rank, Micros, RowId))  # (open-first rank, due time, id)
SMS = CursorKind("s", (Micros, RowId))  # the last message's (created_at, id)
