"""A newcomer's whole path in a real terminal, from the keyboard alone: their own text becomes a
dataset, a tokenizer and a tiny pretrained model; their instructions a LoRA finetune; that an
F16 GGUF; and the GGUF answers in Chat. Every step after the first is opened with `n` from the
monitor of the run before, which fills in what that run made. Real workers, real LitGPT, real
llama.cpp: a few minutes on two busy cores. CI needs tmux installed."""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import pytest

from tests.tui.test_e2e_tmux import Terminal, terminal, workbench_command  # noqa: F401  (fixture)
from workbench import runs
from workbench.store import Store

pytestmark = [
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (CI: apt-get install -y tmux)"),
    pytest.mark.slow,
]

TEXT = ("the cat sat on a warm mat while the dog slept by the door and birds sang in the old tree "
        "rain fell on the hills as the river ran down to the sea past the mill and the bridge")


#: A long form takes a moment to draw on a busy machine; its first option takes the cursor then.
FORM_READY_S = 3.0


def write_data(folder: Path) -> tuple[Path, Path]:
    """A small text corpus and a small instruction set, as a user would bring them."""
    rng, words = random.Random(0), TEXT.split()
    corpus = folder / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": " ".join(rng.choice(words) for _ in range(60))}) + "\n"
                              for _ in range(300)))
    instructions = folder / "instructions.jsonl"
    instructions.write_text("".join(json.dumps({"instruction": f"Say something about the {w}, number {i}.",
                                                "output": f"The {w} number {i} is by the river."}) + "\n"
                                    for i, w in enumerate(words * 2)))
    return corpus, instructions


def run_and_wait(term: Terminal, next_label: str, timeout: float = 300) -> None:
    """Ctrl+R on the form, then the monitor until the run is done and names the next stage."""
    term.keys("C-r")
    term.wait_for("· done", f"next: {next_label}", timeout=timeout)


def set_field(term: Terminal, tabs: int, text: str, name: str, required: bool = False) -> None:
    """Tab to an option and type its value; a required one is emptied first."""
    for _ in range(tabs):
        term.keys("Tab")
        time.sleep(0.3)
    if required:
        term.keys("End", "C-u")
        term.wait_for(f"{name} expects")  # emptied: the cursor is in the field
    time.sleep(0.5)
    term.type(text)
    term.wait_for_field(name, text)


def test_a_newcomer_goes_from_data_to_chat_with_the_keyboard_alone(tmp_path: Path, terminal: Terminal) -> None:  # noqa: F811
    corpus, instructions = write_data(tmp_path)
    terminal.start(workbench_command())
    terminal.wait_for("1 Pipeline", "Data", "· ready", "blocked")

    # Data: the first option (sources) has the cursor; the type is told from the rows.
    terminal.keys("Down", "Enter")
    terminal.wait_for("Data (data.prepare)")
    time.sleep(FORM_READY_S)
    terminal.type(str(corpus))
    terminal.wait_for("corpus.jsonl")  # every key has arrived
    run_and_wait(terminal, "Tokenizer")

    # Tokenizer: the dataset is filled in; a small vocabulary for a small corpus.
    terminal.keys("n")
    terminal.wait_for("Tokenizer (tokenizer.train)")
    time.sleep(FORM_READY_S)
    set_field(terminal, 1, "320", "vocab_size", required=True)
    run_and_wait(terminal, "Pretrain")

    # Pretrain: dataset and tokenizer are filled in; max_steps is among the essentials.
    terminal.keys("n")
    terminal.wait_for("Pretrain (pretrain)")
    time.sleep(FORM_READY_S)
    set_field(terminal, 6, "3", "max_steps")
    run_and_wait(terminal, "Finetune LoRA")

    # LoRA needs an instruction dataset: back to Data with the instructions.
    terminal.keys("1")
    terminal.wait_for("Finetune LoRA", "Stage")
    terminal.keys(*["Up"] * 12, "Down", "Enter")  # to the top, then Data
    terminal.wait_for("Data (data.prepare)")
    time.sleep(FORM_READY_S)
    terminal.type(str(instructions))
    terminal.wait_for("instructions.jsonl")
    run_and_wait(terminal, "Finetune LoRA")

    # LoRA: the only model and the new dataset are filled in.
    terminal.keys("n")
    terminal.wait_for("Finetune LoRA (finetune.lora)")
    time.sleep(FORM_READY_S)
    set_field(terminal, 3, "2", "max_steps")
    run_and_wait(terminal, "Export")

    # Export: the LoRA result is filled in; F16 by default.
    terminal.keys("n")
    terminal.wait_for("Export (export)")
    time.sleep(FORM_READY_S)
    run_and_wait(terminal, "Chat")

    # Chat with the GGUF the export made.
    terminal.keys("n")
    terminal.wait_for("ready ·", timeout=120)
    terminal.type("hello")
    terminal.keys("Enter")
    terminal.wait_for("tok/s", timeout=120)
    terminal.keys("Escape")  # out of the prompt; a pause, or the terminal reads Alt+2
    time.sleep(1.0)
    terminal.keys("2")
    terminal.wait_for("export · done")  # the Runs view, on the monitor it was left on
    terminal.keys("C-q")

    store = Store()
    done = [r.stage for r in reversed(runs.list_runs(store)) if r.status == "done"]
    assert done == ["data.prepare", "tokenizer.train", "pretrain", "data.prepare", "finetune.lora", "export"]
    assert store.list_artifacts("gguf")
