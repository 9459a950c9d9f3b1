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

An option that was renamed keeps its old spelling for one release (`option(..., aliases=...)`):
flags, config files and the options of runs recorded before the rename still read, with one
warning line on stderr naming old → new. An option that is gone with no plain new name is
declared `Retired` on the Options class, which says how its value maps onto the new options.
The training stages share their common options through `TrainingOptions` below.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping
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
    aliases: Iterable[str] = (),
) -> Any:
    """A stage option. `help` is shown in CLI help, the JSON schema and the TUI form; `aliases` are
    its old names, still accepted with a warning."""
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
        "aliases": tuple(aliases),
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
    advanced: bool = False,
) -> Any:
    """A reference to an artifact in the workspace (id, name or unique id prefix)."""
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    field = option(default, help=help, required=required, positional=positional, advanced=advanced)
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
    aliases: tuple[str, ...] = ()

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
    """The options in the stage's order: its own first, then those it shares with other stages
    (a dataclass puts inherited fields first)."""
    hints = typing.get_type_hints(options_cls)
    shared = {f.name for base in options_cls.__mro__[1:] if dataclasses.is_dataclass(base)
              for f in dataclasses.fields(base)}
    ordered = sorted(dataclasses.fields(options_cls), key=lambda f: f.name in shared)
    out = []
    for f in ordered:
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
                aliases=tuple(meta.get("aliases", ())),
            )
        )
    return out


def redefault(options_cls: type, name: str, default: Any, *, help: str | None = None,
              aliases: tuple[str, ...] = ()) -> Any:
    """Option `name` of a shared options class with this stage's default (and, where the stage
    must say more, its own help, or an old spelling of its own); type bounds, group and the shared
    aliases stay declared once."""
    base = next(f for f in dataclasses.fields(options_cls) if f.name == name)
    meta = dict(base.metadata[_META])
    if help is not None:
        meta["help"] = help
    if aliases:
        meta["aliases"] = (*meta.get("aliases", ()), *aliases)
    if isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata={_META: meta})
    return dataclasses.field(default=default, metadata={_META: meta})


@dataclass(frozen=True)
class Retired:
    """An option that is gone, accepted for one release. `upgrade(value, options)` gets its parsed
    value and the other options given (parsed, by name), sets what it now means, and returns the
    warning shown to the user."""

    type: Any
    help: str
    upgrade: Callable[[Any, dict[str, Any]], str]
    min: float | None = None


_warned: set[str] = set()


def warn(message: str) -> None:
    """One line on stderr, once per process (the CLI validates a run's options more than once)."""
    if message not in _warned:
        _warned.add(message)
        print(f"warning: {message}", file=sys.stderr)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _key(name: str) -> str:
    return name.replace("-", "_")


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
    renamed = {old: f.name for f in by_name.values() for old in f.aliases}
    retired: Mapping[str, Retired] = getattr(options_cls, "retired", {})
    clean: dict[str, Any] = {}
    spelled: dict[str, str] = {}  # option name -> the key it was given as
    gone: dict[str, Any] = {}
    for key, value in values.items():
        name = _key(key)
        if name in retired:
            gone[name] = value
            continue
        if name not in by_name and name in renamed:
            name = renamed[name]
        if name not in by_name:
            valid = ", ".join(sorted(f.replace("_", "-") for f in by_name))
            label = f" for stage '{stage}'" if stage else ""
            raise UserError(f"unknown option '{key}'{label}; valid options: {valid}")
        # A bad value is reported under the name it was given as.
        parsed = parse_value(dataclasses.replace(by_name[name], name=_key(key)), value)
        if _key(key) != name:
            warn(f"{_flag(key)} is now {_flag(name)}; the old name will be refused in the next release")
        # An old and a new name that disagree are an error; otherwise the later value wins
        # (a flag over the same option in a --config file).
        renaming = _key(key) != name or _key(spelled.get(name, name)) != name
        if name in clean and clean[name] != parsed and renaming:
            raise UserError(f"{_flag(spelled[name])} and {_flag(key)} name the same option with different "
                            f"values; give only {by_name[name].flag}")
        clean[name], spelled[name] = parsed, key
    for name, value in gone.items():
        old = retired[name]
        field = Field(name=name, type=old.type, type_name=_type_name(old.type), default=None, help=old.help,
                      choices=None, required=False, positional=False, min=old.min, max=None, artifact=None,
                      group=None, advanced=False)
        parsed = parse_value(field, value)
        if parsed is not None:
            warn(old.upgrade(parsed, clean))
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
        # Old spellings stay out of the help; `parse_options` maps them (with a warning).
        for old in f.aliases:
            action = argparse.BooleanOptionalAction if f.is_bool else "store"
            parser.add_argument(_flag(old), dest=old, action=action, default=argparse.SUPPRESS,
                                help=argparse.SUPPRESS)
    for name in getattr(options_cls, "retired", {}):
        parser.add_argument(_flag(name), dest=name, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


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


# ---------------------------------------------------------------------------------------------
# options every training stage shares: one name, one help text, one set of bounds

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")


@dataclass
class TrainingOptions:
    """What every training stage takes. A stage inherits it and changes a default with
    `redefault(TrainingOptions, name, value)`."""

    lr: float | None = option(None, help="Peak learning rate (AdamW)", min=0, group="training",
                              aliases=("learning_rate",))
    batch_size: int | None = option(
        None, help="Samples per optimizer step (gradients accumulate over micro-batches)", min=1, group="training",
    )
    micro_batch_size: int | None = option(
        None, help="Samples per forward pass; default: --batch-size (all at once)", min=1, group="training",
    )
    max_steps: int | None = option(None, help="Stop after this many optimizer steps", min=1, group="training")
    warmup_steps: int | None = option(
        None, help="Linear warmup steps before the cosine decay", min=0, group="training", advanced=True,
    )
    weight_decay: float = option(0.0, help="AdamW weight decay", min=0, group="training", advanced=True)
    grad_clip: float | None = option(
        None, help="Clip the gradient norm to this (0 or empty: no clipping)", min=0, group="training",
        aliases=("max_norm",),
    )
    eval_every: int = option(50, help="Optimizer steps between validation passes (also before the first and "
                             "after the last)", min=1, group="training", aliases=("eval_interval",))
    checkpoint_every: int = option(100, help="Optimizer steps between resumable checkpoints (a cancel also "
                                   "writes one)", min=1, group="training", aliases=("checkpoint_interval",))
    seed: int = option(42, help="Seed for the initial weights, the data order and dropout", group="training")
    device: str = option("auto", help="Where to train", choices=["auto", "cpu", "cuda", "mps"], group="hardware")
    precision: str | None = option(
        None, help="Lightning precision; default: what `workbench doctor` picks", choices=PRECISIONS,
        group="hardware",
    )
    force: bool = option(False, help="Start even if the memory estimate says the run will not fit",
                         group="hardware", advanced=True)


@dataclass
class EpochOptions(TrainingOptions):
    """Training stages that pass over a dataset a number of times (finetuning, DPO)."""

    epochs: int = option(1, help="Passes over the training split (unless --max-steps is set)", min=1,
                         group="training")


@dataclass
class ReplayOptions:
    """Finetuning stages that can mix pretraining text into their batches against forgetting
    (`workbench.ml.replay`)."""

    replay: str | None = artifact(
        "dataset", required=False, advanced=True,
        help="Pretrain dataset whose text is mixed into every batch (its language-model loss is added), "
             "so the model keeps its general language while it learns the task",
    )
    replay_windows: int = option(4, help="Windows of --replay text per micro-batch", min=1, group="training",
                                 advanced=True)
    replay_length: int = option(128, help="Tokens per --replay window", min=8, group="training", advanced=True)


def check_batches(options: TrainingOptions) -> None:
    """A micro-batch is part of an optimizer step's batch, so it cannot be larger."""
    if (options.batch_size is not None and options.micro_batch_size is not None
            and options.micro_batch_size > options.batch_size):
        raise UserError(f"--micro-batch-size {options.micro_batch_size} is larger than --batch-size "
                        f"{options.batch_size}; a micro-batch is part of an optimizer step's batch")
