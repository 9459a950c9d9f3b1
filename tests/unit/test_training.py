"""The shared training skeleton: LitGPT's schedule, a data order that a step number resumes, and
checkpoints that carry the AMP loss scaler."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from litgpt.pretrain import get_lr

from workbench.ml.training import (
    Batches,
    SeededOrder,
    checkpoint_path,
    lr_factor,
    prune_checkpoints,
    restore_optim,
    save_checkpoint,
    warmup_cosine,
)
from workbench.ml.trainstate import load_train_state


@pytest.mark.parametrize(("warmup", "total", "floor"), [(0, 10, 0.1), (3, 20, 0.1), (5, 7, 0.0), (10, 10, 0.25)])
def test_the_schedule_is_litgpts_counted_in_steps_done(warmup: int, total: int, floor: float) -> None:
    for step in range(total):
        done = step + 1
        if warmup == total and done == total:  # LitGPT divides by zero there; the last step is the floor
            expected = floor
        else:
            expected = get_lr(1.0, done, warmup, total, floor)
        assert lr_factor(step, warmup=warmup, total=total, floor=floor) == pytest.approx(expected, abs=1e-12), step
    assert lr_factor(total - 1, warmup=warmup, total=total, floor=floor) == pytest.approx(floor)


def test_the_scheduler_gives_each_step_its_rate() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = warmup_cosine(opt, warmup=2, total=5, floor=0.1)
    rates = []
    for _ in range(5):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates == pytest.approx([2.0 * lr_factor(s, warmup=2, total=5, floor=0.1) for s in range(5)])
    assert rates[0] == pytest.approx(1.0) and rates[1] == pytest.approx(2.0) and rates[-1] == pytest.approx(0.2)


def test_the_order_is_a_function_of_seed_and_position() -> None:
    order = SeededOrder(10, seed=3)
    run = order.take(0, 35)
    assert sorted(run[:10]) == list(range(10)) and sorted(run[10:20]) == list(range(10))  # each epoch once
    assert run[:10] != run[10:20]  # and each epoch shuffled anew
    assert SeededOrder(10, seed=3).take(17, 18) == run[17:]  # a fresh order resumes mid-epoch
    assert SeededOrder(10, seed=4).take(0, 10) != run[:10]


def test_batches_are_at_most_the_data_and_epochs_round_up() -> None:
    assert Batches.plan(10, 4, 2, epochs=3, max_steps=None) == Batches(4, 2, 8)
    assert Batches.plan(3, 8, None, epochs=1, max_steps=None) == Batches(3, 3, 1)
    assert Batches.plan(10, 4, 3, epochs=3, max_steps=5) == Batches(4, 3, 5)
    assert Batches(4, 3, 5).describe("pairs") == "5 steps of 4 pairs (2 micro-batches of 3)"
    assert Batches(4, 4, 1).describe("texts") == "1 step of 4 texts (1 micro-batch of 4)"


class Recorder:
    def __init__(self) -> None:
        self.saved: list[tuple[Path, int]] = []

    def checkpoint(self, path: Path, step: int) -> None:
        self.saved.append((path, step))


def test_the_loss_scaler_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    """16-mixed runs need CUDA; the scaler itself runs on a CPU, so its state is checked here."""
    weight = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([weight], lr=0.1)
    sched = warmup_cosine(opt, warmup=1, total=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
    for value in (1.0, float("inf"), 1.0):  # grows, backs off after an overflow, grows again
        opt.zero_grad()
        scaler.scale((weight * value).sum()).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
    assert scaler.get_scale() != 2.0**10

    reporter = Recorder()
    path = save_checkpoint(reporter, tmp_path, 3, model_state={"w": weight.detach()}, optimizer=opt,
                           scheduler=sched, scaler=scaler, position=12, seed=1)
    assert path == checkpoint_path(tmp_path, 3) and reporter.saved == [(path, 3)]

    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))], lr=0.1)
    sched2 = warmup_cosine(opt2, warmup=1, total=10)
    scaler2 = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
    state = load_train_state(path)  # weights_only=True
    restore_optim(state, opt2, sched2, scaler2)
    assert scaler2.state_dict() == scaler.state_dict()
    assert sched2.state_dict()["last_epoch"] == 3 and opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert state["data"] == {"position": 12, "seed": 1}


def test_older_checkpoints_go_by_step_whatever_their_digits(tmp_path: Path) -> None:
    for name in ("step-0000090.pt", "step-000100.pt", "step-000110.pt", "step-0000095.pt"):
        (tmp_path / name).write_bytes(b"")
    prune_checkpoints(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000100.pt", "step-000110.pt"]


def test_a_checkpoint_resumes_only_the_run_that_wrote_it(tmp_path: Path) -> None:
    from workbench.errors import UserError
    from workbench.ml.training import check_fingerprint

    mine = {"batch_size": 8, "seed": 1, "steps": 10, "examples": 64}
    check_fingerprint({"extra": {"fingerprint": mine}}, mine, tmp_path / "step-000002.pt")
    check_fingerprint({"extra": {}}, mine, tmp_path / "step-000002.pt")  # written before fingerprints
    older = {"batch_size": 8, "seed": 1, "steps": 10}  # a release that recorded fewer inputs
    check_fingerprint({"extra": {"fingerprint": older}}, mine, tmp_path / "step-000002.pt")
    with pytest.raises(UserError, match=r"written by a run with another"):
        check_fingerprint({"extra": {"fingerprint": {**older, "steps": 11}}}, mine, tmp_path / "step-000002.pt")
    with pytest.raises(UserError, match=r"checkpoint .*step-000002.pt was written by a run with another"):
        check_fingerprint({"extra": {"fingerprint": {**mine, "seed": 2}}}, mine, tmp_path / "step-000002.pt")
