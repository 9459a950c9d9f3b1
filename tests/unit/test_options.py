"""Options declared once give flags, a JSON schema and validated values."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from workbench.errors import UserError
from workbench.options import (
    add_arguments,
    artifact,
    fields,
    json_schema,
    load_config,
    option,
    parse_options,
    parse_value,
)


@dataclass
class Opts:
    model: str | None = artifact("model", help="Model to train", positional=True)
    steps: int = option(100, help="Optimizer steps", min=1)
    lr: float = option(3e-4, help="Learning rate")
    style: str = option("chatml", help="Prompt style", choices=["chatml", "alpaca"])
    targets: list[str] = option(["query", "value"], help="LoRA targets", choices=["query", "key", "value"])
    compile: bool = option(False, help="Use torch.compile")
    note: str | None = option(None, help="Free text")


def test_values_are_coerced_from_text():
    o = parse_options(Opts, {"model": "m1", "steps": "20", "lr": "1e-3", "targets": "query,key", "compile": "yes"})
    assert (o.steps, o.lr, o.targets, o.compile) == (20, 1e-3, ["query", "key"], True)
    assert o.style == "chatml"  # default kept


def test_unknown_option_lists_valid_ones():
    with pytest.raises(UserError, match=r"unknown option 'stpes'.*valid options: compile, lr, model, note, steps, style, targets"):
        parse_options(Opts, {"model": "m", "stpes": 3}, stage="x")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"steps": "ten"}, r"--steps expects integer, got 'ten'"),
        ({"steps": 2.5}, r"--steps expects integer"),
        ({"steps": 0}, r"--steps must be at least 1"),
        ({"lr": "fast"}, r"--lr expects number"),
        ({"style": "llama"}, r"--style must be one of: chatml, alpaca"),
        ({"targets": ["query", "mlp"]}, r"--targets must be one of"),
        ({"compile": "maybe"}, r"--compile expects true/false"),
    ],
)
def test_wrong_types_name_the_option_and_the_type(values, message):
    with pytest.raises(UserError, match=message):
        parse_options(Opts, {"model": "m", **values})


def test_required_positional_is_enforced():
    with pytest.raises(UserError, match="MODEL is required"):
        parse_options(Opts, {})


def test_json_schema_describes_every_field():
    schema = json_schema(Opts)
    assert schema["additionalProperties"] is False
    assert schema["properties"]["steps"] == {"type": "integer", "description": "Optimizer steps", "default": 100, "minimum": 1}
    assert schema["properties"]["targets"]["items"]["enum"] == ["query", "key", "value"]
    assert schema["properties"]["model"]["x-artifact-kinds"] == ["model"]
    assert schema["required"] == ["model"]


def test_cli_flags_come_from_the_same_declaration():
    parser = argparse.ArgumentParser()
    add_arguments(parser, Opts)
    args = vars(parser.parse_args(["m1", "--steps", "5", "--no-compile", "--targets", "key"]))
    assert args == {"model": "m1", "steps": "5", "compile": False, "targets": "key"}
    help_text = parser.format_help()
    assert "Optimizer steps (default: 100)" in help_text and "--compile, --no-compile" in help_text


def test_form_fields_validate_as_you_type():
    by_name = {f.name: f for f in fields(Opts)}
    assert by_name["model"].artifact == ("model",) and by_name["model"].required
    assert parse_value(by_name["lr"], "0.01") == 0.01
    with pytest.raises(UserError):
        parse_value(by_name["lr"], "0.0.1")


def test_config_files_yaml_toml_json(tmp_path):
    (tmp_path / "a.yaml").write_text("steps: 7\nstyle: alpaca\n")
    (tmp_path / "a.toml").write_text('steps = 8\ntargets = ["key"]\n')
    (tmp_path / "a.json").write_text('{"lr": 0.5}')
    assert load_config(tmp_path / "a.yaml") == {"steps": 7, "style": "alpaca"}
    assert load_config(tmp_path / "a.toml") == {"steps": 8, "targets": ["key"]}
    assert load_config(tmp_path / "a.json") == {"lr": 0.5}
    (tmp_path / "bad.yaml").write_text("steps: [1,\n")
    with pytest.raises(UserError, match="could not be parsed"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(UserError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")


@dataclass
class Many:
    sources: list[str] = option([], help="Files", positional=True)


@dataclass
class OptionalBase:
    base: str | None = artifact("model", help="Optional model", positional=True, required=False)


def test_positional_lists_take_several_words_and_optional_positionals_stay_optional():
    parser = argparse.ArgumentParser()
    add_arguments(parser, Many)
    args = vars(parser.parse_args(["a.txt", "b.txt,c.txt"]))
    assert parse_options(Many, args).sources == ["a.txt", "b.txt", "c.txt"]
    parser = argparse.ArgumentParser()
    add_arguments(parser, OptionalBase)
    assert vars(parser.parse_args([])) == {}
    assert parse_options(OptionalBase, {}).base is None
