"""An option given explicitly is the user's value, 0 included: it is never swapped for a preset's
default (only a missing option is)."""

from __future__ import annotations

import json

from tests.conftest import run_cli
from tests.stages.test_pretrain import (  # noqa: F401 - fixtures
    cli_flags,
    demo_corpus,
    inputs,
    metric_events,
    micro_options,
    one_thread,
)
from workbench.store import Store


def test_a_learning_rate_of_zero_trains_at_zero(inputs: dict[str, str]) -> None:  # noqa: F811
    options = micro_options(inputs, max_steps=3, lr=0, warmup_steps=0, eval_every=100)
    out = run_cli("pretrain", *cli_flags(options), "--json")
    assert out.returncode == 0, out.stderr
    run = Store().get_run(json.loads(out.stdout)["run_id"])
    assert run.options["lr"] == 0
    lrs = [v for _, v in metric_events(run.run_dir, "lr")]
    assert lrs == [0.0, 0.0, 0.0]


def test_a_zero_below_the_declared_minimum_is_refused(inputs: dict[str, str]) -> None:  # noqa: F811
    out = run_cli("pretrain", *cli_flags(micro_options(inputs, max_steps=0)))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["error: option --max-steps must be at least 1 (got 0)"]
