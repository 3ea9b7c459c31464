"""The answer's AGI commands: every variable in one `EXEC MSet`, so one round trip.

Asterisk reads AGI commands one line per wake-up (res_agi.c `run_agi`: `poll` on the
socket, then one `fgets` from a stdio stream on it), so commands sent at once would stay
in stdio's buffer, unseen, until more bytes arrive; one command per reply is the only
safe order. Eight `SET VARIABLE`s thus cost eight round trips; one `EXEC MSet` costs one.

Two parsers read the line, escaped here in reverse order:

- AGI's `parse_args` splits the line at spaces outside double quotes and drops a
  backslash before any character: the MSet data goes in one quoted argument with `\\`
  and `"` escaped (`quote`).
- MSet splits its data at commas with `__ast_app_separate_args` (main/app.c), which
  counts `(` `)` `[` `]`, toggles and drops `"`, and drops a backslash, keeping the
  character after it as it is; each pair then splits at its first `=` and the value
  after it is taken untouched. So every `\\ " , ( ) [ ]` in a value gets a backslash.

res_agi.c reads a command into a 2,048-byte buffer (`AGI_BUF_LEN`): a longer line is cut
and its rest read as a second command. Variables that do not fit in one line go in
several MSets, `CALLHUB_ROUTE_RESULT` always in the last (one variable longer than a line
cannot be set through AGI at all: it goes alone, and is cut).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

MAX_LINE = 2047  # fgets into char buf[AGI_BUF_LEN = 2048]: 2,047 bytes with the newline
_MSET_SPECIAL = re.compile(r'([\\",()\[\]])')


def quote(value: str) -> str:
    """An AGI argument in double quotes (backslash and quote escaped)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def mset_value(value: str) -> str:
    """`value` as MSet's argument parser gives it back: its special characters escaped."""
    return _MSET_SPECIAL.sub(r"\\\1", value)


def mset_commands(variables: Sequence[tuple[str, str]]) -> list[bytes]:
    """`EXEC MSet` lines setting `variables` in order, as few as fit in MAX_LINE each."""
    commands: list[bytes] = []
    pairs: list[str] = []
    for name, value in variables:
        pair = f"{name}={mset_value(value)}"
        if pairs and len(_line([*pairs, pair])) > MAX_LINE:
            commands.append(_line(pairs))
            pairs = []
        pairs.append(pair)
    if pairs:
        commands.append(_line(pairs))
    return commands


def _line(pairs: list[str]) -> bytes:
    return f"EXEC MSet {quote(','.join(pairs))}\n".encode()
