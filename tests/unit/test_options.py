"""Options declared once give flags, a JSON schema and validated values."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import ClassVar

import pytest

from workbench import options
from workbench.errors import UserError
from workbench.options import (
    Retired,
    TrainingOptions,
    add_arguments,
    artifact,
    fields,
    json_schema,
    load_config,
    option,
    parse_options,
    parse_value,
    redefault,
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


# ---------------------------------------------------------------------------------------------
# renamed and retired options


def _double_accum(accum: int, given: dict) -> str:
    given["batch_size"] = given.get("batch_size", 8) * accum
    return f"--grad-accum {accum} now reads --batch-size {given['batch_size']}"


@dataclass
class Renamed:
    lr: float = option(3e-4, help="Learning rate", min=0, aliases=("learning_rate",))
    batch_size: int = option(8, help="Samples per step", min=1)
    retired: ClassVar[dict[str, Retired]] = {"grad_accum": Retired(int, "Micro-batches per step", _double_accum, min=1)}


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(options, "_warned", set())


def test_an_old_name_is_read_as_the_new_one_with_one_warning_line(capsys, fresh_warnings):
    for spelling in ("learning_rate", "learning-rate"):
        assert parse_options(Renamed, {spelling: "0.01"}).lr == 0.01
    assert capsys.readouterr().err.splitlines() == [
        "warning: --learning-rate is now --lr; the old name will be refused in the next release"]


def test_old_and_new_names_that_disagree_are_refused_and_agreeing_ones_read():
    with pytest.raises(UserError, match=r"--learning-rate and --lr name the same option with different values; "
                                        r"give only --lr"):
        parse_options(Renamed, {"learning_rate": 0.1, "lr": 0.2})
    assert parse_options(Renamed, {"learning_rate": 0.1, "lr": "0.1"}).lr == 0.1


def test_a_bad_value_under_an_old_name_is_named_as_given():
    with pytest.raises(UserError, match=r"option --learning-rate must be a finite number"):
        parse_options(Renamed, {"learning_rate": "nan"})


def test_a_retired_option_is_translated_checked_and_warned_about(capsys, fresh_warnings):
    assert parse_options(Renamed, {"batch_size": "4", "grad_accum": "2"}).batch_size == 8
    assert capsys.readouterr().err.strip() == "warning: --grad-accum 2 now reads --batch-size 8"
    with pytest.raises(UserError, match=r"option --grad-accum must be at least 1"):
        parse_options(Renamed, {"grad_accum": 0})


def test_old_flags_parse_but_stay_out_of_the_help_and_the_form():
    parser = argparse.ArgumentParser()
    add_arguments(parser, Renamed)
    args = vars(parser.parse_args(["--learning-rate", "0.5", "--grad-accum", "3"]))
    assert parse_options(Renamed, args) == Renamed(lr=0.5, batch_size=24)
    help_text = parser.format_help()
    assert "--learning-rate" not in help_text and "--grad-accum" not in help_text
    assert [f.name for f in fields(Renamed)] == ["lr", "batch_size"]


@dataclass
class Stage(TrainingOptions):
    model: str | None = artifact("model", help="Model", positional=True)
    lr: float | None = redefault(TrainingOptions, "lr", 2e-4)


def test_shared_training_options_keep_their_declaration_and_come_after_the_stages_own():
    by_name = {f.name: f for f in fields(Stage)}
    assert next(iter(by_name)) == "model"
    assert by_name["lr"].default == 2e-4 and by_name["lr"].min == 0 and by_name["lr"].aliases == ("learning_rate",)
    assert by_name["lr"].help == {f.name: f for f in fields(TrainingOptions)}["lr"].help
    assert parse_options(Stage, {"model": "m", "max_norm": "0.5", "eval_interval": 7}).grad_clip == 0.5


@pytest.mark.parametrize("stage", ["pretrain", "finetune.lora", "finetune.classify", "dpo", "distill", "prune"])
def test_every_training_stage_takes_the_shared_options_with_their_old_names(stage, capsys, fresh_warnings):
    from workbench.stages import get_stage

    options_cls = get_stage(stage).Options
    shared = {f.name: f for f in fields(TrainingOptions)}
    ours = {f.name: f for f in fields(options_cls)}
    for name, f in shared.items():
        assert (ours[name].min, ours[name].choices, ours[name].group, ours[name].aliases[:len(f.aliases)]) == \
               (f.min, f.choices, f.group, f.aliases), name
    required = {name: "x" for name, f in ours.items() if f.required}
    parsed = parse_options(options_cls, {**required, "learning_rate": "0.01", "max_norm": "0.5"})
    assert (parsed.lr, parsed.grad_clip) == (0.01, 0.5)
    assert "warning: --learning-rate is now --lr" in capsys.readouterr().err


def test_prune_healing_steps_keep_their_old_name_for_a_release(capsys, fresh_warnings):
    from workbench.stages import get_stage

    parsed = parse_options(get_stage("prune").Options, {"model": "m", "heal_steps": "30"})
    assert parsed.max_steps == 30
    assert "warning: --heal-steps is now --max-steps" in capsys.readouterr().err
