"""`workbench arena`: real subprocesses with scripted stdin, two tiny random models (a GGUF in
llama.cpp and a LitGPT checkpoint in torch, or two GGUFs), votes in the workspace's SQLite."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from workbench_arena.match import pick_pair

from tests.conftest import make_tiny_model

FAST = ("--threads", "1", "--temperature", "0", "--max-tokens", "8")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two different random tiny Llamas: `alpha` as a GGUF file, `beta` as a GGUF and as a
    checkpoint directory."""
    from workbench_export.gguf_writer import write_gguf

    root = tmp_path_factory.mktemp("arena-models")
    alpha, beta = make_tiny_model(root / "alpha", seed=0), make_tiny_model(root / "beta-ckpt", seed=1)
    write_gguf(alpha, root / "alpha.gguf", "f16")
    write_gguf(beta, root / "beta.gguf", "f16")
    return {"alpha": root / "alpha.gguf", "beta": root / "beta.gguf", "beta-ckpt": beta}


def votes(cli: Any) -> list[dict[str, Any]]:
    r = cli("arena", "votes", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def rounds(stdout: str) -> list[str]:
    return re.split(r"─+ round \d+ ─+", stdout)[1:]


def chat_reply(cli: Any, model: Path, prompt: str, seed: int) -> str:
    """What `workbench chat` answers with the arena's sampling, for the reference."""
    r = cli("chat", str(model), "--jsonl", "--no-save", *FAST, input=json.dumps(
        {"type": "user", "content": prompt, "seed": seed}) + "\n")
    assert r.returncode == 0, r.stderr
    return "".join(e["text"] for e in map(json.loads, r.stdout.splitlines()) if e["type"] == "token")


def test_scripted_votes_hide_the_models_until_the_vote_and_are_stored(cli, models, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Say hello."}\n\n"Name a colour."\n{"prompt": "Count to three."}\n')
    names = {str(models["alpha"]): "alpha.gguf", str(models["beta-ckpt"]): "beta-ckpt"}
    r = cli("arena", str(models["alpha"]), str(models["beta-ckpt"]), "--prompts", str(prompts),
            "--seed", "11", *FAST, input="1\nmaybe\nright\nb\n")
    assert r.returncode == 0, r.stderr
    assert "arena seed 11" in r.stdout and "3 votes stored" in r.stdout
    assert "say 1 or left" in r.stdout  # "maybe" is no vote: asked again

    stored = votes(cli)  # a new process reads them back: the store survives
    assert [v["vote"] for v in stored] == ["left", "right", "both_bad"]
    assert [v["prompt"] for v in stored] == ["Say hello.", "Name a colour.", "Count to three."]
    for text, vote in zip(rounds(r.stdout), stored, strict=True):
        before, after = text.split("vote [1] A better", 1)
        assert not any(name in before for name in names.values()), f"a model was named before the vote:\n{before}"
        left, right = names[vote["model_left"]], names[vote["model_right"]]
        assert f"A was {left} · B was {right}" in after
        assert f"[A]\n{vote['answer_left']}\n[B]\n{vote['answer_right']}\n" in before
        assert vote["voter"] == "human" and vote["details"]["session_seed"] == 11
        # the recorded seed alone gives the pair and the sides again
        pair = pick_pair(list(names), vote["seed"])
        assert (pair.left, pair.right) == (vote["model_left"], vote["model_right"])
    assert {v["model_left"] for v in stored} == set(names), "with seed 11 both models sat on the left"

    # Each answer is the engine's own: what `workbench chat` replies with the same seed.
    first = stored[0]
    assert first["answer_left"] == chat_reply(cli, Path(first["model_left"]), first["prompt"], first["seed"])
    assert first["answer_right"] == chat_reply(cli, Path(first["model_right"]), first["prompt"], first["seed"])
    assert first["answer_left"] != first["answer_right"]

    board = json.loads(cli("arena", "ratings", "--json", "--bootstrap", "100").stdout)
    assert board["votes"] == 3 and {row["name"] for row in board["ratings"]} == set(names.values())
    assert sum(row["rating"] for row in board["ratings"]) == pytest.approx(2000.0, abs=0.2)
    assert sorted((row["wins"], row["ties"], row["losses"]) for row in board["ratings"]) == [(1, 1, 1), (1, 1, 1)]


def test_typed_prompts_and_end_of_input(cli, models):
    r = cli("arena", str(models["alpha"]), str(models["beta"]), *FAST, input="Hi there\n2\nAnother one\n")
    assert r.returncode == 0, r.stderr
    assert "1 vote stored" in r.stdout  # stdin ended before the second vote: nothing half-stored
    [vote] = votes(cli)
    assert vote["prompt"] == "Hi there" and vote["vote"] == "right"


@pytest.mark.parametrize("content, where, what", [
    ('{"prompt": "fine"}\n{"prompt": 3}\n', "prompts.jsonl:2", 'needs a "prompt" string'),
    ('"fine"\n{"prompt": "ok"\n', "prompts.jsonl:2", "not JSON"),
    ("fine\n\xff\n", "prompts.txt:2", "not UTF-8"),
    ("\n\n", "prompts.txt", "holds no prompts"),
])
def test_a_bad_prompts_file_is_one_line_exit_2_and_writes_no_votes(cli, models, tmp_path, workspace,
                                                                    content, where, what):
    path = tmp_path / where.split(":")[0]
    path.write_bytes(content.encode("latin-1") if "\xff" in content else content.encode())
    r = cli("arena", str(models["alpha"]), str(models["beta"]), "--prompts", str(path), *FAST, input="1\n1\n")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and where in r.stderr and what in r.stderr, r.stderr
    assert not (workspace / "workbench.db").exists() and votes(cli) == []


def test_bad_model_lists_are_one_line_errors(cli, models, workspace):
    same = cli("arena", str(models["alpha"]), str(models["alpha"]))
    assert same.returncode == 2 and "at least two different models" in same.stderr
    missing = cli("arena", str(models["alpha"]), "no-such-model")
    assert missing.returncode == 2 and "no model 'no-such-model'" in missing.stderr
    assert cli("arena", "judge").returncode == 2
    empty = cli("arena", "ratings")
    assert empty.returncode == 0 and "no human votes yet" in empty.stdout
    assert not (workspace / "workbench.db").exists()


def test_arena_help_imports_no_engine():
    code = ("import sys\nfrom workbench.cli import main\ntry:\n    main(['arena', '--help'])\n"
            "except SystemExit:\n    pass\n"
            "print([m for m in ('torch', 'litgpt', 'llama_cpp', 'numpy') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("[]")


def test_judge_asks_both_orders_counts_inconsistency_and_reports_agreement(cli, models, tmp_path):
    from tests.stages.test_eval import always_first_slot_judge

    judge = always_first_slot_judge(models["beta-ckpt"], tmp_path / "judge")  # says "A" whatever it is asked
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Say hello.\nName a colour.\nCount to three.\n")
    humans = cli("arena", str(models["alpha"]), str(models["beta"]), "--prompts", str(prompts), "--seed", "3",
                 *FAST, input="1\nt\n2\n")
    assert humans.returncode == 0, humans.stderr

    r = cli("arena", "judge", str(judge), "--json", "--threads", "1")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    # Slot A both times is answer left, then answer right: never the same answer, so every vote is an
    # inconsistent tie. It agrees with the one human tie: 1 of 3, and a constant voter's kappa is 0.
    assert report["judged"] == report["asked"] == report["inconsistent"] == 3
    assert report["votes"] == {"left": 0, "right": 0, "tie": 3}
    agree = report["agreement"]
    assert (agree["n"], agree["agree"], agree["kappa"]) == (3, 1, 0.0)
    assert agree["ci_low"] == pytest.approx(0.0615, abs=1e-3) and agree["ci_high"] == pytest.approx(0.7923, abs=1e-3)

    stored = votes(cli)
    judged = [v for v in stored if v["voter"] == "judge"]
    humans_by_id = {v["id"]: v for v in stored if v["voter"] == "human"}
    assert sorted(v["of_vote"] for v in judged) == sorted(humans_by_id)
    assert all(v["details"]["orders"] == [1.0, 0.0] for v in judged)

    again = json.loads(cli("arena", "judge", str(judge), "--json", "--threads", "1").stdout)
    assert again["asked"] == 0 and again["agreement"] == agree  # nothing is asked twice
    assert len(votes(cli)) == 6
    ratings = json.loads(cli("arena", "ratings", "--voter", "judge", "--json", "--bootstrap", "0").stdout)
    assert [row["ties"] for row in ratings["ratings"]] == [3, 3]

    fresh = cli("arena", "judge", str(judge), "--models", str(models["alpha"]), str(models["beta"]),
                "--prompts", str(prompts), "--json", *FAST)
    assert fresh.returncode == 0, fresh.stderr
    assert json.loads(fresh.stdout)["judged"] == 3 and len(votes(cli)) == 9

    refused = cli("arena", "judge", str(models["beta-ckpt"]))
    assert refused.returncode == 2 and "must be a GGUF" in refused.stderr
