"""How Asterisk reads the AGI commands callhub sends, ported from its C so that the
simulator, the tests and the bench see a value exactly as the dialplan would.

- `parse_args`: res_agi.c's split of a command line into words (spaces outside double
  quotes end a word, quotes are dropped, a backslash is dropped and the character after
  it kept as it is).
- `separate_args`: main/app.c's `__ast_app_separate_args` with `remove_chars` set, as
  `AST_STANDARD_APP_ARGS` (delimiter `,`) and `AST_NONSTANDARD_APP_ARGS` call it: the
  delimiter splits only outside `"..."`, `(...)` and `[...]`; quotes and backslashes are
  dropped, a backslash keeping the character after it; past `arraylen - 1` arguments the
  rest is the last one, untouched.
- `agi_variables`: the variables one `SET VARIABLE` or `EXEC MSet` command sets.
"""

from __future__ import annotations

MSET_PAIRS = 99  # pbx_builtin_setvar_multiple: AST_APP_ARG(pair)[99]


def parse_args(line: str) -> list[str]:
    """res_agi.c parse_args."""
    words: list[str] = []
    current: list[str] | None = None
    quoted = escaped = False
    for char in line:
        if char == '"' and not escaped:
            quoted = not quoted
            if quoted and current is None:  # an opening quote starts a word
                current = []
            continue
        if char in " \t" and not quoted and not escaped:
            if current is not None:
                words.append("".join(current))
                current = None
            continue
        if char == "\\" and not escaped:
            escaped = True
            continue
        if current is None:
            current = []
        current.append(char)
        escaped = False
    if current is not None:
        words.append("".join(current))
    return words


def separate_args(buf: str, delim: str, arraylen: int) -> list[str]:
    """main/app.c __ast_app_separate_args(buf, delim, remove_chars=1, array, arraylen)."""
    args: list[str] = []
    paren = bracket = 0
    quote = False
    i = 0
    wasdelim = -1
    while i < len(buf) and len(args) < arraylen - 1:
        out: list[str] = []
        while i < len(buf):
            char = buf[i]
            if char == "(":
                paren += 1
            elif char == ")":
                paren = max(paren - 1, 0)
            elif char == "[":
                bracket += 1
            elif char == "]":
                bracket = max(bracket - 1, 0)
            elif char == '"' and delim != '"':
                quote = not quote
                i += 1
                continue
            elif char == "\\":
                out.append(buf[i + 1:i + 2])
                i += 2
                continue
            elif char == delim and not paren and not quote and not bracket:
                wasdelim = i
                i += 1
                break
            out.append(char)
            i += 1
        args.append("".join(out))
    if i < len(buf) or (i > 0 and i - 1 == wasdelim):
        args.append(buf[i:])
    return args


def agi_variables(command: str) -> list[tuple[str, str]]:
    """The (name, value) pairs `SET VARIABLE` or `EXEC MSet` sets; [] for other commands."""
    words = parse_args(command)
    if len(words) >= 4 and [w.upper() for w in words[:2]] == ["SET", "VARIABLE"]:
        return [(words[2], words[3])]
    if len(words) >= 3 and words[0].upper() == "EXEC" and words[1].upper() == "MSET":
        pairs = [separate_args(pair, "=", 2) for pair in separate_args(words[2], ",",
                                                                        MSET_PAIRS)]
        return [(p[0], p[1]) for p in pairs if len(p) == 2]
    return []
