"""Pydantic's verdicts in the platform's words.

A model validates a nested dict of settings; the first thing it refuses becomes a
:class:`~forecasting.errors.ConfigError` naming the dotted key, the value as written
and what the key allows. What it allows is read off the field itself: its type and
bounds (``Field(ge=1)`` -> "an integer >= 1"), or the ``allowed`` text a field or a
validator states where the type alone would say too little.
"""

from __future__ import annotations

import types
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from forecasting.errors import ConfigError

M = TypeVar("M", bound=BaseModel)
MISSING = object()
_MAPPING_ERRORS = {"model_type", "model_attributes_type", "dict_type"}


class Section(BaseModel):
    """A group of settings: unknown keys, wrong types (``true`` for an integer, ``"3"``
    for a number) and changes after validation are refused; a section left empty in
    the YAML (``backtest:``) keeps its defaults."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_section_keeps_defaults(cls, data: Any) -> Any:
        return {} if data is None else data


def setting(
    default: Any = ...,
    description: str | None = None,
    *,
    allowed: str | None = None,
    heading: str | None = None,
    **kw: Any,
) -> Any:
    """``Field`` with the comment rendered beside the key in conf/default.yaml (and a
    ``heading`` paragraph above it), and optionally the ``allowed`` text that error
    messages use instead of the one derived from the type and bounds."""
    extra = {k: v for k, v in (("allowed", allowed), ("heading", heading)) if v}
    return Field(default, description=description, json_schema_extra=extra or None, **kw)


def refuse(allowed: str, value: Any) -> PydanticCustomError:
    """The error a validator raises: ``value`` (e.g. one bad item of a list) is not
    ``allowed``."""
    return PydanticCustomError("mmf_config", "expected {allowed}", {"allowed": allowed, "value": value})


def validated(cls: type[M], data: Any) -> M:
    """``cls`` built from ``data``, or the first refusal as a ConfigError."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise config_error(cls, exc.errors(include_url=False)[0], data) from None


def config_error(root: type[BaseModel], err: dict[str, Any], data: Any) -> ConfigError:
    """One pydantic error as a ConfigError (key, value as written, what is allowed)."""
    path, model, field = locate(root, err["loc"])
    key = ".".join(path) or "<root>"
    ctx = err.get("ctx") or {}
    written = lookup(data, path)
    value = ctx.get("value", err["input"] if written is MISSING else written)
    if err["type"] == "extra_forbidden":
        return ConfigError(key, err["input"], f"a known setting ({', '.join(model.model_fields)})")
    if err["type"] in _MAPPING_ERRORS and (field is None or _section(field.annotation)):
        return ConfigError(key, value, "a mapping of settings")
    if "allowed" in ctx:
        return ConfigError(key, value, ctx["allowed"])
    return ConfigError(key, value, allowed_text(field) if field is not None else err["msg"])


def locate(
    root: type[BaseModel], loc: tuple[Any, ...]
) -> tuple[list[str], type[BaseModel], FieldInfo | None]:
    """The setting an error location points at: its dotted path, the model holding it
    and its field (``None`` for a key the model does not know). Union members and list
    indexes below a setting are dropped: ``levels.0`` is reported as ``levels``."""
    path: list[str] = []
    model: type[BaseModel] | None = root
    holder, field = root, None
    for part in loc:
        if model is None or not isinstance(part, str):
            break
        path.append(part)
        holder, field = model, model.model_fields.get(part)
        if field is None:
            break
        model = _section(field.annotation)
    return path, holder, field


def lookup(data: Any, path: list[str]) -> Any:
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return MISSING
        data = data[part]
    return data


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """``data[a][b] = value`` for ``key = "a.b"``, making sections that are absent or
    left empty; a section that is not a mapping is refused."""
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        if node.get(part) is None:
            node[part] = {}
        elif not isinstance(node[part], dict):
            raise ConfigError(".".join(parts[: i + 1]), node[part], "a mapping of settings")
        node = node[part]
    node[parts[-1]] = value


# -- what a field allows, in words ------------------------------------------------------
def allowed_text(field: FieldInfo) -> str:
    stated = (field.json_schema_extra or {}) if isinstance(field.json_schema_extra, dict) else {}
    if stated.get("allowed"):
        return str(stated["allowed"])
    return describe(field.annotation, field.metadata)


def describe(annotation: Any, metadata: list[Any] = ()) -> str:
    """``int`` + ``Ge(1)`` -> "an integer >= 1"; ``float | None`` -> "null or a number"..."""
    args = get_args(annotation)
    if _is_union(annotation) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        inner = rest[0] if len(rest) == 1 else Union[tuple(rest)]  # noqa: UP007 - built at runtime
        return "null or " + describe(inner, metadata)
    if _is_union(annotation) and set(args) == {int, float}:
        return "a number" + _bounds(metadata)
    if _is_union(annotation) or get_origin(annotation) is Literal or annotation is bool:
        return _choices(_options(annotation))
    if annotation is int:
        return "an integer" + _bounds(metadata)
    if annotation is float:
        return "a number" + _bounds(metadata)
    if annotation is str:
        return "a non-empty string" if _has(metadata, "pattern") else "a string"
    if get_origin(annotation) is list:
        return "a list of " + describe(get_args(annotation)[0]).split(" ", 1)[1] + "s"
    if get_origin(annotation) is dict:
        return "a mapping"
    if _section(annotation):
        return "a mapping of settings"
    return getattr(annotation, "__name__", str(annotation))


def _options(annotation: Any) -> list[Any]:
    if annotation is bool:
        return [True, False]
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    return [o for a in get_args(annotation) for o in _options(a)]


def _choices(options: list[Any]) -> str:
    words = ["true" if o is True else "false" if o is False else str(o) for o in options]
    if len(words) <= 3:
        return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]
    return "one of " + ", ".join(words)


def _bounds(metadata: list[Any]) -> str:
    b = {name: getattr(m, name) for m in metadata for name in ("ge", "gt", "le", "lt") if hasattr(m, name)}
    low = (">=", b["ge"]) if "ge" in b else (">", b["gt"]) if "gt" in b else None
    high = ("<=", b["le"]) if "le" in b else ("<", b["lt"]) if "lt" in b else None
    if low and high and (low[0], high[0]) == (">=", "<="):
        return f" between {low[1]} and {high[1]}"
    parts = [f"{op} {v}" for op, v in (p for p in (low, high) if p)]
    return " " + " and ".join(parts) if parts else ""


def _has(metadata: list[Any], name: str) -> bool:
    return any(getattr(m, name, None) is not None for m in metadata)


def _is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType)


def _section(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
