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
several MSets, `CALLHUB_ROUTE_RESULT` always in the last. One variable longer than a line
cannot be set through AGI at all (`fits` says which): the target list is cut to the agents
that fit before it is sent (callhub/routing/fastagi.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

MAX_LINE = 2047  # fgets into char buf[AGI_BUF_LEN = 2048]: 2,047 bytes with the newline
_MSET_SPECIAL = re.compile(r'([\\",()\[\]])')
_MSET_SPECIALS = frozenset('\\",()[]')


def quote(value: str) -> str:
    """An AGI argument in double quotes (backslash and quote escaped)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def mset_value(value: str) -> str:
    """`value` as MSet's argument parser gives it back: its special characters escaped."""
    if _MSET_SPECIALS.isdisjoint(value):  # most values: 0.1 us instead of 1
        return value
    return _MSET_SPECIAL.sub(r"\\\1", value)


def mset_commands(variables: Sequence[tuple[str, str]]) -> list[bytes]:
    """`EXEC MSet` lines setting `variables` in order, as few as fit in MAX_LINE each."""
    pairs = [f"{name}={mset_value(value)}" for name, value in variables]
    line = _line(pairs)
    if len(line) <= MAX_LINE:  # the usual answer: a few hundred bytes
        return [line]
    commands: list[bytes] = []
    taken: list[str] = []
    for pair in pairs:
        if taken and len(_line([*taken, pair])) > MAX_LINE:
            commands.append(_line(taken))
            taken = []
        taken.append(pair)
    commands.append(_line(taken))
    return commands


def fits(name: str, value: str) -> bool:
    """Whether `name=value` can be set at all: alone in one MSet line of MAX_LINE."""
    return len(_line([f"{name}={mset_value(value)}"])) <= MAX_LINE


def _line(pairs: list[str]) -> bytes:
    return f"EXEC MSet {quote(','.join(pairs))}\n".encode()
