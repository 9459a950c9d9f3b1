"""Stage options, declared once as a dataclass and used three ways.

A stage's `Options` is a dataclass whose fields are made with `option()` (or `artifact()` for a
reference to something in the workspace). From that one declaration come:

- CLI flags with help and defaults (`add_arguments`),
- a JSON schema (`json_schema`),
- the field list the TUI draws a form from (`fields`, `parse_value`),

and `parse_options` turns a mapping (CLI, config file, TUI form, JSON) into a validated
instance: an unknown key is an error listing the valid ones, a wrong type names the option and
the expected type, and a number outside the declared `min`/`max`, or not finite (NaN, ±inf), is
refused naming the option.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any, Literal, Union

from workbench.errors import UserError

_META = "workbench"


def option(
    default: Any = None,
    *,
    help: str,
    choices: Iterable[Any] | None = None,
    required: bool | None = None,
    positional: bool = False,
    min: float | None = None,
    max: float | None = None,
    group: str | None = None,
    advanced: bool = False,
) -> Any:
    """A stage option. `help` is shown in CLI help, the JSON schema and the TUI form."""
    meta = {
        "help": help,
        "choices": list(choices) if choices is not None else None,
        # A positional without a default is required unless the declaration says otherwise.
        "required": required if required is not None else (positional and default is None),
        "positional": positional,
        "min": min,
        "max": max,
        "artifact": None,
        "group": group,
        "advanced": advanced,
    }
    if isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata={_META: meta})
    return dataclasses.field(default=default, metadata={_META: meta})


def artifact(
    kind: str | tuple[str, ...],
    *,
    help: str,
    required: bool = True,
    positional: bool = False,
    default: str | None = None,
) -> Any:
    """A reference to an artifact in the workspace (id, name or unique id prefix)."""
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    field = option(default, help=help, required=required, positional=positional)
    field.metadata[_META]["artifact"] = kinds
    return field


@dataclass(frozen=True)
class Field:
    """One option as the faces see it."""

    name: str
    type: Any
    type_name: str
    default: Any
    help: str
    choices: list[Any] | None
    required: bool
    positional: bool
    min: float | None
    max: float | None
    artifact: tuple[str, ...] | None
    group: str | None
    advanced: bool

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def is_bool(self) -> bool:
        return _base(self.type)[0] is bool

    @property
    def is_list(self) -> bool:
        return _base(self.type)[0] is list


def _base(tp: Any) -> tuple[Any, bool, Any]:
    """(base type, optional?, inner) with Optional/Literal/list unwrapped."""
    optional = False
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        tp = args[0] if len(args) == 1 else str
        origin = typing.get_origin(tp)
    if origin is Literal:
        values = typing.get_args(tp)
        return type(values[0]), optional, values
    if origin in (list, tuple) or tp in (list, tuple):
        inner = (typing.get_args(tp) or (str,))[0]
        return list, optional, inner
    return tp, optional, None


_TYPE_NAMES = {str: "text", int: "integer", float: "number", bool: "true/false", Path: "path"}


def _type_name(tp: Any) -> str:
    base, optional, inner = _base(tp)
    if base is list:
        name = f"list of {_TYPE_NAMES.get(inner, 'text')}"
    else:
        name = _TYPE_NAMES.get(base, getattr(base, "__name__", str(base)))
    return name + (" (optional)" if optional else "")


def fields(options_cls: type) -> list[Field]:
    hints = typing.get_type_hints(options_cls)
    out = []
    for f in dataclasses.fields(options_cls):
        meta = f.metadata.get(_META, {})
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = None
        tp = hints[f.name]
        choices = meta.get("choices")
        if choices is None and typing.get_origin(_strip_optional(tp)) is Literal:
            choices = list(typing.get_args(_strip_optional(tp)))
        out.append(
            Field(
                name=f.name,
                type=tp,
                type_name=_type_name(tp),
                default=default,
                help=meta.get("help", ""),
                choices=choices,
                required=bool(meta.get("required")) or (f.default is MISSING and f.default_factory is MISSING),
                positional=bool(meta.get("positional")),
                min=meta.get("min"),
                max=meta.get("max"),
                artifact=meta.get("artifact"),
                group=meta.get("group"),
                advanced=bool(meta.get("advanced")),
            )
        )
    return out


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


_TRUE = {"1", "true", "yes", "on", "y"}
_FALSE = {"0", "false", "no", "off", "n"}


def finite_float(text: str) -> float:
    """argparse `type` for the number flags of plain commands (chat, serve): NaN and infinities
    are refused there as `parse_value` refuses them for stage options."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"'{text}' is not a finite number")
    return value


def parse_value(field: Field, value: Any) -> Any:
    """Coerce one value (text from a flag or form, or a config/JSON value) or raise UserError."""
    base, optional, inner = _base(field.type)
    where = f"option {field.flag}"
    if value is None or (isinstance(value, str) and value.strip() == "" and optional):
        if optional or not field.required:
            return None
        raise UserError(f"{where} is required ({field.help})")
    try:
        if base is list:
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, (list, tuple)):
                raise TypeError
            # "a,b" and ["a", "b"] mean the same, from a flag, a positional list or a config file.
            items = [p for v in value for p in (v.split(",") if isinstance(v, str) else [v])]
            result: Any = [_scalar(inner, v) for v in items if not (isinstance(v, str) and not v.strip())]
        else:
            result = _scalar(base, value)
    except (TypeError, ValueError):
        raise UserError(
            f"{where} expects {field.type_name.replace(' (optional)', '')}, got {value!r}"
        ) from None
    if field.choices is not None:
        # Choices match case-insensitively (Q4_K_M or q4_k_m), and the declared spelling is kept.
        canon = {str(c).lower(): c for c in field.choices}
        if base is list:
            result = [canon.get(str(v).lower(), v) for v in result]
        else:
            result = canon.get(str(result).lower(), result)
        bad = [v for v in (result if base is list else [result]) if v not in field.choices]
        if bad:
            valid = ", ".join(str(c) for c in field.choices)
            raise UserError(f"{where} must be one of: {valid} (got {bad[0]!r})")
    for number in result if base is list else [result]:
        # NaN passes every comparison with min and max, so it is refused on its own.
        if isinstance(number, float) and not math.isfinite(number):
            raise UserError(f"{where} must be a finite number (got {value!r})")
    if isinstance(result, (int, float)) and not isinstance(result, bool):
        if field.min is not None and result < field.min:
            raise UserError(f"{where} must be at least {field.min:g} (got {result})")
        if field.max is not None and result > field.max:
            raise UserError(f"{where} must be at most {field.max:g} (got {result})")
    return result


def _scalar(tp: Any, value: Any) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError
    if tp is int:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError
            return int(value)
        if isinstance(value, str):
            text = value.strip().replace("_", "")
            # Allow 1e3-style integers, common in step counts.
            return int(float(text)) if "e" in text.lower() and float(text).is_integer() else int(text)
        return int(value)
    if tp is float:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    if tp is Path:
        return str(Path(str(value)).expanduser())
    if tp is str:
        if isinstance(value, (dict, list)):
            raise TypeError
        return str(value)
    return value


def parse_options(options_cls: type, values: Mapping[str, Any], *, stage: str = "") -> Any:
    """Validate `values` against `options_cls` and return an instance."""
    by_name = {f.name: f for f in fields(options_cls)}
    aliases = {name.replace("_", "-"): name for name in by_name}
    clean: dict[str, Any] = {}
    for key, value in values.items():
        name = aliases.get(key, key)
        if name not in by_name:
            valid = ", ".join(sorted(f.replace("_", "-") for f in by_name))
            label = f" for stage '{stage}'" if stage else ""
            raise UserError(f"unknown option '{key}'{label}; valid options: {valid}")
        clean[name] = parse_value(by_name[name], value)
    for f in by_name.values():
        if f.required and clean.get(f.name, f.default) is None:
            label = f.name.upper() if f.positional else f.flag
            raise UserError(f"{label} is required: {f.help}")
    return options_cls(**clean)


def to_dict(options: Any) -> dict[str, Any]:
    return dataclasses.asdict(options)


def json_schema(options_cls: type, *, title: str = "") -> dict[str, Any]:
    props: dict[str, Any] = {}
    required = []
    for f in fields(options_cls):
        base, optional, inner = _base(f.type)
        json_type = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "string"}
        if base is list:
            prop: dict[str, Any] = {"type": "array", "items": {"type": json_type.get(inner, "string")}}
        else:
            prop = {"type": json_type.get(base, "string")}
        if optional:
            prop["type"] = [prop["type"], "null"]
        prop["description"] = f.help
        if f.default is not None:
            prop["default"] = f.default
        if f.choices is not None:
            (prop["items"] if base is list else prop)["enum"] = f.choices
        if f.min is not None:
            prop["minimum"] = f.min
        if f.max is not None:
            prop["maximum"] = f.max
        if f.artifact:
            prop["x-artifact-kinds"] = list(f.artifact)
        if f.required:
            required.append(f.name)
        props[f.name] = prop
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": False,
    }
    if title:
        schema["title"] = title
    return schema


class _JoinedList(argparse.Action):
    """A positional list given as several words: stored as one comma-separated value."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if values:
            setattr(namespace, self.dest, ",".join(values))


def add_arguments(parser: argparse.ArgumentParser, options_cls: type) -> None:
    """Add one flag per field. Values stay unparsed text; `parse_options` validates them."""
    for f in fields(options_cls):
        help_text = f.help
        if f.choices is not None:
            help_text += f" [choices: {', '.join(str(c) for c in f.choices)}]"
        if f.artifact:
            help_text += f" [{' or '.join(f.artifact)} id or name]"
        if f.default not in (None, [], "") and not f.is_bool:
            default = ",".join(map(str, f.default)) if isinstance(f.default, list) else f.default
            help_text += f" (default: {default})"
        help_text = help_text.replace("%", "%%")
        if f.positional and f.is_list:
            # `workbench eval A B C`: several words, joined so "A,B" and "A B" read the same.
            parser.add_argument(
                f.name, nargs="*", action=_JoinedList, default=argparse.SUPPRESS,
                metavar=f.name.upper(), help=help_text,
            )
        elif f.positional:
            parser.add_argument(
                f.name, nargs=None if f.required else "?", default=argparse.SUPPRESS,
                metavar=f.name.upper(), help=help_text,
            )
        elif f.is_bool:
            parser.add_argument(
                f.flag, dest=f.name, action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS, help=help_text + f" (default: {'on' if f.default else 'off'})",
            )
        else:
            metavar = "|".join(map(str, f.choices)) if f.choices and len(f.choices) <= 6 else f.name.upper()
            parser.add_argument(
                f.flag, dest=f.name, default=argparse.SUPPRESS, metavar=metavar, help=help_text
            )


def load_config(path: str | Path) -> dict[str, Any]:
    """Options from a YAML, TOML or JSON file (a flat mapping of option name to value)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read config file {p}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UserError(f"config file {p} is not UTF-8 text") from None
    try:
        if p.suffix.lower() == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:
                import tomli as tomllib
            data = tomllib.loads(text)
        elif p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as exc:  # every parser has its own error type
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f"{p}:{line + 1}" if line is not None else str(p)
        raise UserError(f"config file {where} could not be parsed: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {p} must hold a mapping of option names to values")
    return data
