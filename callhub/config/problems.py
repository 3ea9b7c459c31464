"""Validation errors as one line naming the key (`pbx[main].port: must be 1-65535, got 0`).

The models raise pydantic's `ValidationError`; `ConfigError` is what the CLI
prints. `problem()` is how a validator says what is wrong in our words, and
`keyed()` when the problem belongs to a key below the one being validated.
Values of secret keys are never echoed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

# Keys whose values are never shown in an error.
SECRET_KEYS = frozenset({"secret", "tokens", "metrics_token", "database_url",
                         "read_database_url",
                         "cel_database_url", "password",
                         "CALLHUB_API_TOKENS", "CALLHUB_METRICS_TOKEN",
                         "CALLHUB_DATABASE_URL", "CALLHUB_REPORT_SMTP_PASSWORD"})

_TYPE_NAMES = {"int_type": "int", "float_type": "float", "bool_type": "bool",
               "string_type": "str", "list_type": "list", "dict_type": "dict",
               "tuple_type": "list", "date_type": "date", "time_type": "time"}


class ConfigError(ValueError):
    """A setting is missing or wrong; the message names the key."""


def problem(text: str) -> PydanticCustomError:
    """A validator's complaint, shown as written (after the key)."""
    return PydanticCustomError("callhub", "{problem}", {"problem": text})


def keyed(key: str, text: str) -> PydanticCustomError:
    """A complaint about `key` below the value being validated (e.g. one entry of a table)."""
    return PydanticCustomError("callhub_keyed", "{problem}", {"key": key, "problem": text})


def describe(error: ErrorDetails, unknown: str = "unknown setting") -> str:
    """What is wrong, in the house's words (no key)."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    secret = bool(error["loc"]) and str(error["loc"][-1]) in SECRET_KEYS
    got = "" if secret else f", got {value!r}"
    if kind in ("callhub", "callhub_keyed"):
        return str(ctx["problem"])
    if kind == "missing":
        return "required"
    if kind == "string_too_short":
        return "must not be empty"
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        return unknown
    if kind in _TYPE_NAMES:
        return f"expected {_TYPE_NAMES[kind]}{got}"
    if kind in ("model_type", "model_attributes_type", "dataclass_type", "dataclass_args_type"):
        return f"expected a table{got}"
    if kind in ("int_parsing", "float_parsing"):
        return f"expected a number{got}"
    bounds = {"greater_than": (">", "gt"), "greater_than_equal": (">=", "ge"),
              "less_than": ("<", "lt"), "less_than_equal": ("<=", "le")}
    if kind in bounds:
        op, name = bounds[kind]
        shown = "" if secret else f", got {_number(value)}"
        return f"must be {op} {_number(ctx[name])}{shown}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return error["msg"]


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, int | float) and not isinstance(value, bool) \
        else repr(value)


def first_error(exc: ValidationError) -> tuple[ErrorDetails, tuple[int | str, ...]]:
    """The first error and its location, with a keyed problem's own key appended."""
    error = exc.errors(include_url=False)[0]
    loc = tuple(error["loc"])
    if error["type"] == "callhub_keyed":
        loc = (*loc, *str((error.get("ctx") or {})["key"]).split("."))
    return error, loc


def dotted(loc: Sequence[int | str],
           index_name: Callable[[Sequence[int | str], int], str] | None = None) -> str:
    """('pbx', 0, 'port') -> 'pbx[0].port'; `index_name` may name a list entry instead."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            shown = index_name(loc[:i], part) if index_name else str(part)
            out += f"[{shown}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def config_error(exc: ValidationError,
                 index_name: Callable[[Sequence[int | str], int], str] | None = None,
                 rename: Callable[[str], str] | None = None) -> ConfigError:
    """The first problem of `exc` as `key: what is wrong`."""
    error, loc = first_error(exc)
    key = dotted(loc, index_name)
    if rename:
        key = rename(key)
    text = describe(error)
    return ConfigError(f"{key}: {text}" if key else text)
