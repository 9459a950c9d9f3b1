"""Numbers given to options: NaN and infinities are refused wherever options come from (flags,
`--config` files, the TUI form), each with one line naming the option and exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli
from workbench.options import fields
from workbench.tui.widgets.option_field import check


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e999"])
def test_a_flag_that_is_not_a_finite_number_is_refused(value: str, workspace: Path) -> None:
    out = run_cli("pretrain", "some-dataset", "--tokenizer", "some-tokenizer", f"--learning-rate={value}")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"error: option --learning-rate must be a finite number (got {value!r})"]
    assert not (workspace / "runs").exists()


@pytest.mark.parametrize("flag", ["--temperature", "--top-p", "--repeat-penalty"])
@pytest.mark.parametrize("value", ["nan", "-inf"])
def test_chat_refuses_a_sampling_number_that_is_not_finite(flag: str, value: str) -> None:
    out = run_cli("chat", "some-model", f"{flag}={value}")
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert flag in line and f"'{value}' is not a finite number" in line


@pytest.mark.parametrize(("name", "text", "flag"), [
    ("lr.yaml", "learning_rate: .nan\n", "--learning-rate"),
    ("lr.yaml", "min_lr: -.inf\n", "--min-lr"),
    ("lr.json", '{"weight_decay": Infinity}', "--weight-decay"),
    ("lr.toml", "beta1 = nan\n", "--beta1"),
])
def test_a_config_file_value_that_is_not_a_finite_number_is_refused(name: str, text: str, flag: str,
                                                                     tmp_path: Path) -> None:
    config = tmp_path / name
    config.write_text(text)
    out = run_cli("pretrain", "some-dataset", "--tokenizer", "some-tokenizer", "--config", str(config))
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"error: option {flag} must be a finite number")


def test_the_tui_form_refuses_the_same_naming_the_field() -> None:
    from workbench_pretrain.stage import Options

    by_name = {f.name: f for f in fields(Options)}
    assert check(by_name["lr"], "nan") == "lr must be a finite number (got 'nan')"
    assert check(by_name["lr"], "0") is None  # an explicit 0 is inside min=0


@pytest.mark.parametrize("values", [{"temperature": float("inf")}, {"temperature": float("nan")},
                                    {"repeat_penalty": float("inf")}, {"top_p": float("nan")}])
def test_sampling_from_a_request_body_refuses_what_json_can_smuggle_in(values: dict) -> None:
    """Python's json reads NaN and Infinity, so a serve request or a /set can carry them."""
    from workbench_chat.engine import Sampling

    from workbench.errors import UserError

    with pytest.raises(UserError, match="must be"):
        Sampling().updated(values)
