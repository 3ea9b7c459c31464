"""Request input validated by pydantic models: query strings, path parameters, JSON bodies.

Each operation declares its inputs as models (`callhub.api.base.Operation`);
the app validates a request against them before the handler runs, and the
OpenAPI document shows the same models' JSON schemas. Whatever is wrong
becomes `BadParameter(name, why)`, which the app turns into a 400 with a
JSON body naming the parameter. Unknown query parameters and body fields are
refused too, so a typo (`?outcom=missed`) does not silently return everything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time, tzinfo
from typing import Annotated, Any, TypeVar, overload

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
)
from pydantic_core import ErrorDetails

from callhub.argtypes import YEARS, in_years

M = TypeVar("M", bound=BaseModel)


class BadParameter(ValueError):
    """A request parameter (query, path or body field) is wrong; `why` says how."""

    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"{name}: {why}")
        self.name = name
        self.why = why


class Query(BaseModel):
    """Base of query-string models: only the declared parameters, values parsed from text."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoQuery(Query):
    """An operation that takes no query parameters."""


class Path(BaseModel):
    """Base of path-parameter models."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoPath(Path):
    """An operation with no path parameters."""


class Body(BaseModel):
    """Base of JSON request bodies: a JSON object, only the declared fields, strict types
    (no "yes" for a boolean, no "9" for a number)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def text_problem(value: str) -> str | None:
    """Why no database stores `value`: NUL (PostgreSQL rejects it) or lone surrogates."""
    if "\x00" in value:
        return "must not contain a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8 text"
    return None


def check_text(name: str, value: str) -> None:
    """BadParameter when `value` is text no database stores."""
    problem = text_problem(value)
    if problem is not None:
        raise BadParameter(name, problem)


def _storable(value: str) -> str:
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def parse_datetime(name: str, raw: str, tz: tzinfo) -> datetime:
    """ISO 8601 date or date-time; without an offset it is local time in `tz`."""
    try:
        return _local_datetime(raw, tz)
    except ValueError as exc:
        raise BadParameter(name, str(exc)) from None


def _local_datetime(raw: str, tz: tzinfo) -> datetime:
    text = raw.strip()
    try:
        if len(text) == 10:
            value = datetime.combine(date.fromisoformat(text), time())
        else:
            value = datetime.fromisoformat(text)
        if value.tzinfo is None:
            value = value.replace(tzinfo=tz)
        value.astimezone(tz)  # out-of-range offsets fail here, not in a query
        if not in_years(value.year):
            raise ValueError(YEARS)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"expected an ISO 8601 date or date-time such as 2026-11-29 or "
                         f"2026-11-29T08:00:00+08:00 ({exc}); got {raw[:40]!r}") from None
    return value


def _moment(value: Any, info: ValidationInfo) -> Any:
    if isinstance(value, str):
        tz = (info.context or {}).get("tz", UTC)
        return _local_datetime(value, tz)
    return value


Text = Annotated[str, AfterValidator(_storable)]
"""Text a database can store (JSON bodies)."""

Filter = Annotated[str, Field(min_length=1, max_length=128), AfterValidator(_storable)]
"""A query-string value matched exactly against a column."""

MAX_WHO = 200
"""A name of who did something: the columns keep 256 characters, room for the name and
the token's role after it ("王芳 (supervisor)")."""
Who = Annotated[Text, Field(max_length=MAX_WHO)]

MAX_NOTE = 4000
"""A supervisor's note (on a call, a worklist entry, a follow-up)."""
Note = Annotated[Text, Field(max_length=MAX_NOTE)]

Moment = Annotated[datetime, BeforeValidator(_moment)]
"""ISO 8601 date or date-time; without an offset, local time in the configured zone."""


def names_of(model: type[BaseModel]) -> list[str]:
    """The names a model's fields take in a request (aliases where given)."""
    return [field.alias or name for name, field in model.model_fields.items()]


def _where(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _shown(value: Any) -> str:
    return repr(value[:40]) if isinstance(value, str) else repr(value)[:40]


def why(error: ErrorDetails, known: Sequence[str] = ()) -> str:
    """A short sentence for one pydantic error, in the API's words."""
    kind, ctx, given = error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return f"unknown field (known: {', '.join(known)})" if known else "unknown field"
    if kind in ("literal_error", "enum"):
        expected = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        return f"must be one of {expected}; got {_shown(given)}"
    if kind in ("greater_than_equal", "greater_than"):
        return f"must be {'>=' if kind.endswith('equal') else '>'} " \
               f"{ctx.get('ge', ctx.get('gt'))}; got {_shown(given)}"
    if kind in ("less_than_equal", "less_than"):
        return f"must be {'<=' if kind.endswith('equal') else '<'} " \
               f"{ctx.get('le', ctx.get('lt'))}; got {_shown(given)}"
    if kind.startswith("int_"):
        return f"must be an integer; got {_shown(given)}"
    if kind == "finite_number":
        return "must be a finite number"
    if kind.startswith("float_"):
        return f"must be a number; got {_shown(given)}"
    if kind == "string_too_short":
        return "must not be empty" if ctx.get("min_length") == 1 else \
            f"shorter than {ctx.get('min_length')} characters"
    if kind == "string_too_long":
        return f"longer than {ctx.get('max_length')} characters"
    if kind == "string_type":
        return "expected a string"
    if kind.startswith("bool_"):
        return "expected a boolean"
    if kind == "list_type":
        return "expected a list"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return "expected a JSON object"
    # A length limit over a text type with its own validator is reported as a list's.
    text = isinstance(error.get("input"), str)
    if kind == "too_short":
        if text:
            return "must not be empty" if ctx.get("min_length") == 1 else \
                f"shorter than {ctx.get('min_length')} characters"
        return f"give at least {ctx.get('min_length')} item(s)"
    if kind == "too_long":
        if text:
            return f"longer than {ctx.get('max_length')} characters"
        return f"give at most {ctx.get('max_length')} items"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return error["msg"]


def _bad(exc: ValidationError, model: type[BaseModel], whole: str) -> BadParameter:
    """The first error of `exc` as a BadParameter naming its field (`whole` for the input
    itself); the other errors, if any, follow in the message."""
    errors = exc.errors(include_url=False)
    known = names_of(model)
    first = errors[0]
    name = _where(first["loc"]) or whole
    if first["type"] == "json_invalid":
        return BadParameter(whole, f"not valid JSON: {first['msg'].removeprefix('Invalid JSON: ')}")
    if first["type"] == "string_unicode" and not first["loc"]:
        return BadParameter(whole, "not valid UTF-8 text")
    if first["type"] == "model_type" and not first["loc"]:
        return BadParameter(whole, "must be a JSON object")
    text = why(first, known if len(first["loc"]) == 1 else ())
    more = [f"{_where(e['loc']) or whole}: {why(e, known if len(e['loc']) == 1 else ())}"
            for e in errors[1:4]]
    return BadParameter(name, "; ".join([text, *more]))


@overload
def parse_query(query: Mapping[str, str], model: type[M], tz: tzinfo) -> M: ...


@overload
def parse_query(query: Mapping[str, str], model: tuple[()], tz: tzinfo) -> NoQuery: ...


def parse_query(query: Mapping[str, str], model: type[BaseModel] | tuple[()],
                tz: tzinfo) -> BaseModel:
    """A request's query string as `model` (`()`: no parameters at all); BadParameter
    naming every unknown parameter, a repeated one, or the first bad value."""
    kind: type[BaseModel] = model if isinstance(model, type) else NoQuery
    known = names_of(kind)
    keys = [k for k, _ in query.items()]  # a MultiDict lists a repeated key per value
    unknown = [k for k in dict.fromkeys(keys) if k not in known]
    if unknown:
        listed = f"known: {', '.join(sorted(known))}" if known else "this endpoint takes none"
        noun = "unknown parameter" if len(unknown) == 1 else \
            f"unknown parameters {', '.join(repr(k[:40]) for k in unknown)}"
        raise BadParameter(unknown[0], f"{noun} ({listed})")
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            raise BadParameter(key, "given more than once")
        seen.add(key)
    try:
        return kind.model_validate({k: query[k] for k in keys}, context={"tz": tz})
    except ValidationError as exc:
        raise _bad(exc, kind, "query") from None


def parse_path(values: Mapping[str, str], model: type[M]) -> M:
    """The path parameters as `model`; BadParameter naming a bad one."""
    try:
        return model.model_validate(dict(values))
    except ValidationError as exc:
        raise _bad(exc, model, "path") from None


def parse_body(raw: bytes, model: type[M], tz: tzinfo = UTC) -> M:
    """A JSON object body as `model` (no body: `{}`); BadParameter naming a bad field, or
    `body` when it is not JSON (nesting deeper than the parser allows included)."""
    try:
        return model.model_validate_json(raw if raw.strip() else b"{}", context={"tz": tz})
    except ValidationError as exc:
        raise _bad(exc, model, "body") from None
