"""`workbench eval` on tiny models trained here: a model trained on the instruction set against its
untrained parent, the same model as an F32 GGUF in real llama.cpp, and constructed judges."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_tokenizer, tiny_llama_config
from workbench.testing import run_inline

SOUNDS = {"cow": "moo", "dog": "woof", "cat": "meow", "duck": "quack", "sheep": "baa", "owl": "hoot",
          "pig": "oink", "lion": "roar"}
COLORS = {"snow": "white", "grass": "green", "coal": "black", "the sky": "blue", "blood": "red", "a lemon": "yellow"}
TRAIN_PROMPTS = (["What sound does a {} make?", "What does a {} say?", "Which noise does a {} make?"],
                 ["What color is {}?", "Name the color of {}."])
# Held-out phrasings: the model must carry what it learned over to words it never saw in training.
VAL_PROMPTS = (["Tell me the sound a {} makes."], ["Which color is {}?"])
# (question, choices, answer letter): the correct letter moves, so a scorer stuck on one slot fails.
MC = [
    ("What sound does a cow make?", ["moo", "woof", "meow", "baa"], "A"),
    ("What sound does a dog make?", ["moo", "woof", "oink", "roar"], "B"),
    ("What sound does a pig make?", ["hoot", "quack", "oink", "meow"], "C"),
    ("What sound does a lion make?", ["baa", "moo", "hoot", "roar"], "D"),
    ("What color is snow?", ["white", "black", "red", "blue"], "A"),
    ("What color is coal?", ["green", "black", "white", "yellow"], "B"),
    ("What color is blood?", ["blue", "yellow", "red", "green"], "C"),
    ("What color is a lemon?", ["red", "white", "black", "yellow"], "D"),
]


def chat(prompt: str, answer: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


def instruction_rows(prompts: tuple[list[str], list[str]]) -> list[dict[str, Any]]:
    sounds, colors = prompts
    return ([chat(p.format(k), v) for p in sounds for k, v in SOUNDS.items()]
            + [chat(p.format(k), v) for p in colors for k, v in COLORS.items()])


def preference_rows() -> list[dict[str, Any]]:
    rows = []
    for row in instruction_rows(VAL_PROMPTS):
        right = row["messages"][1]["content"]
        pool = list(SOUNDS.values()) if right in SOUNDS.values() else list(COLORS.values())
        wrong = pool[(pool.index(right) + 1) % len(pool)]
        rows.append({"messages": row["messages"][:1], "chosen": right, "rejected": wrong})
    return rows


def pretrain_docs(n: int, offset: int = 0) -> list[dict[str, str]]:
    animals, things = list(SOUNDS.items()), list(COLORS.items())
    return [{"text": f"A {animals[(i + offset) % 8][0]} says {animals[(i + offset) % 8][1]}. "
                     f"The color of {things[(i + offset) % 6][0]} is {things[(i + offset) % 6][1]}."}
            for i in range(n)]


def write_dataset(path: Path, kind: str, train: list[dict], val: list[dict]) -> Path:
    path.mkdir(parents=True)
    (path / "card.json").write_text(json.dumps({"type": kind, "rows": {"train": len(train), "val": len(val)}}))
    for split, rows in (("train", train), ("val", val)):
        (path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_mc(path: Path) -> Path:
    path.write_text("".join(json.dumps({"subject": "animals" if "sound" in q else "colors", "question": q,
                                        "choices": c, "answer": a}) + "\n" for q, c, a in MC))
    return path


def train_model(src: Path, out: Path, examples: list[tuple[str, str]], steps: int, seed: int = 0) -> Path:
    """Plain next-token training of every weight, with the loss on the answers only."""
    import torch

    from workbench.ml.checkpoint import (
        load_config,
        load_model,
        load_tokenizer,
        read_meta,
        save_model_dir,
    )
    from workbench.ml.examples import IGNORE, Encoded, collate

    torch.manual_seed(seed)
    tok = load_tokenizer(src)
    model = load_model(src).train()
    encoded = []
    for prompt, answer in examples:
        p = tok.encode(prompt, bos=False).long()
        a = tok.encode(answer, bos=False).long()
        ids = torch.cat([p, a])
        labels = ids.clone()
        labels[:len(p)] = IGNORE
        encoded.append(Encoded(ids, labels, len(p)))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = collate([encoded[int(i)] for i in torch.randint(len(encoded), (16,), generator=gen)], 0)
        logits = model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y[:, 1:].reshape(-1),
                                                 ignore_index=IGNORE)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return save_model_dir(out, model.state_dict(), load_config(src), tokenizer_dir=src, meta=read_meta(src))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Files only (each test registers them in its own workspace): data, an untrained model and
    the same model trained on the instruction set and the multiple-choice questions."""
    import torch
    from litgpt import GPT
    from workbench_evaluate.mcfile import prompt_and_continuations, read_questions

    from workbench.ml.checkpoint import save_model_dir
    from workbench.prompts import get_style

    base = tmp_path_factory.mktemp("eval-world")
    style = get_style("chatml")
    train_rows, val_rows = instruction_rows(TRAIN_PROMPTS), instruction_rows(VAL_PROMPTS)
    mc_path = write_mc(base / "mc.jsonl")
    mc_examples = []
    for q in read_questions(mc_path):
        for fmt in ("letter", "cloze"):
            prompt, conts = prompt_and_continuations(q, fmt)
            mc_examples.append((prompt, conts[q.answer]))
    sft_examples = []
    for row in train_rows:
        prompt = style.render(row["messages"][:1])
        sft_examples.append((prompt, style.render(row["messages"], add_generation_prompt=False)[len(prompt):]))
    corpus = "\n".join([p + a for p, a in sft_examples + mc_examples]
                       + [style.render(r["messages"], add_generation_prompt=False) for r in val_rows]
                       + [d["text"] for d in pretrain_docs(16)])
    tok = make_tokenizer(base / "tokenizer", vocab_size=420, text=corpus)
    n_vocab = len(json.loads((tok / "tokenizer.json").read_text())["model"]["vocab"]) + 4
    config = tiny_llama_config(n_vocab)
    torch.manual_seed(0)
    meta = {"prompt_style": style.to_json(), "family": "llama", "eos_token": "<|endoftext|>"}
    parent = save_model_dir(base / "parent", GPT(config).state_dict(), config, tokenizer_dir=tok, meta=meta)
    trained = train_model(parent, base / "trained", sft_examples + mc_examples, steps=100)
    return {
        "parent": parent, "trained": trained, "mc": mc_path,
        "pretrain": write_dataset(base / "pretrain", "pretrain", pretrain_docs(40), pretrain_docs(12, offset=3)),
        "instruction": write_dataset(base / "instruction", "instruction", train_rows, val_rows),
        "preference": write_dataset(base / "preference", "preference", preference_rows(), preference_rows()),
    }


def register(path: Path, kind: str, name: str, parents: list[str] = (), metadata: dict | None = None) -> str:
    from workbench.context import Context
    from workbench.store import Store

    ctx = Context(Store())
    staged = ctx.staging_dir(kind)
    if path.is_dir():
        shutil.copytree(path, staged, dirs_exist_ok=True)
    else:
        staged.rmdir()
        shutil.copy2(path, staged)
    return ctx.register(kind, staged, name=name, parents=list(parents), metadata=metadata or {},
                        filename=path.name if path.is_file() else None).id


@pytest.fixture
def ids(world: dict[str, Path]) -> dict[str, str]:
    """The world registered in this test's workspace, with the lineage the stages would record."""
    out = {kind: register(world[kind], "dataset", f"{kind}-set") for kind in ("pretrain", "instruction", "preference")}
    out["parent"] = register(world["parent"], "model", "parent", [out["pretrain"]])
    out["trained"] = register(world["trained"], "model", "trained", [out["parent"], out["instruction"]])
    return out


def gguf_of(model_dir: Path, out: Path) -> Path:
    from workbench_export.gguf_writer import write_gguf

    write_gguf(model_dir, out, "f32")
    return out


def test_stage_module_imports_nothing_heavy():
    import subprocess
    import sys

    code = ("import sys, workbench_evaluate.stage; "
            "print(sorted(m for m in ('torch', 'litgpt', 'llama_cpp', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_trained_model_beats_its_untrained_parent_and_a_rerun_is_identical(ids, world):
    from workbench.store import Store

    options = {"models": [ids["parent"], ids["trained"]], "preferences": ids["preference"], "mc": str(world["mc"]),
               "max_new_tokens": 12}
    run = run_inline("eval", options)
    m = run.result["metrics"]
    parent, trained = m[ids["parent"]], m[ids["trained"]]

    # Every task ran, its data found in the lineage (pretrain via the parent, instructions via the
    # trained model) or given (preferences).
    assert run.result["tables"][0]["columns"] == ["metric", "better", "parent", "trained"]
    assert trained["exact_match"] > parent["exact_match"]
    assert trained["exact_match"] >= 0.8 and parent["exact_match"] == 0.0
    assert trained["rouge_l"] > parent["rouge_l"] and trained["bleu"] > parent["bleu"]
    assert trained["preference_accuracy"] > parent["preference_accuracy"] and trained["preference_accuracy"] >= 0.9
    # The constructed multiple-choice case: the right letter in every slot A–D.
    assert trained["mc_accuracy"] == 1.0 and parent["mc_accuracy"] < 1.0
    assert trained["mc_ci_low"] == pytest.approx(0.6756, abs=1e-3) and trained["mc_ci_high"] == 1.0
    assert math.isfinite(parent["perplexity"]) and parent["perplexity"] > 1 and parent["bits_per_byte"] > 0

    store = Store()
    report = store.find_artifact(run.result["report"])
    assert report.kind == "eval-report" and sorted(report.parents) == sorted([ids["parent"], ids["trained"]])
    comparison = report.metadata["comparison"]
    assert comparison["models"] == [ids["parent"], ids["trained"]]
    assert comparison["names"] == {ids["parent"]: "parent", ids["trained"]: "trained"}
    assert comparison["metrics"]["exact_match"] == {ids["parent"]: parent["exact_match"],
                                                     ids["trained"]: trained["exact_match"]}
    saved = json.loads((report.path / "report.json").read_text())
    assert saved["metrics"] == m and saved["data"]["instruction"]["id"] == ids["instruction"]
    assert "| exact_match | ↑ |" in (report.path / "report.md").read_text()
    # Each model's figures are merged into its own artifact.
    assert store.find_artifact(ids["trained"]).metrics["exact_match"] == trained["exact_match"]

    again = run_inline("eval", options)
    assert again.result["metrics"] == m
    assert again.result["report"] != run.result["report"]


def test_cloze_scoring_picks_the_right_text_and_lineage_lists_ancestors_oldest_first(ids, world):
    run = run_inline("eval", {"models": [ids["trained"]], "lineage": True, "tasks": ["mc"],
                              "mc": str(world["mc"]), "mc_format": "cloze"})
    assert list(run.result["metrics"]) == [ids["parent"], ids["trained"]]
    assert run.result["metrics"][ids["trained"]]["mc_accuracy"] == 1.0
    report = json.loads((run.store.find_artifact(run.result["report"]).path / "report.json").read_text())
    assert report["details"][ids["trained"]]["mc"]["picked"] == "ABCDABCD"


def test_f32_gguf_matches_its_checkpoint_in_llama_cpp(ids, world, tmp_path):
    path = gguf_of(world["trained"], tmp_path / "trained-f32.gguf")
    gguf = register(path, "gguf", "trained-f32", [ids["trained"]])
    orphan = register(path, "gguf", "downloaded-f32")  # no checkpoint in its lineage, as after a download
    run = run_inline("eval", {"models": [ids["trained"], gguf, orphan], "preferences": ids["preference"],
                              "mc": str(world["mc"]), "dataset": ids["pretrain"]})
    torch_m, gguf_m = run.result["metrics"][ids["trained"]], run.result["metrics"][gguf]
    rel = abs(gguf_m["perplexity"] - torch_m["perplexity"]) / torch_m["perplexity"]
    assert rel < 5e-3, rel  # the bar; an F32 file with an F32 KV cache does far better
    assert rel < 1e-4
    assert gguf_m["exact_match"] == torch_m["exact_match"] and gguf_m["mc_accuracy"] == torch_m["mc_accuracy"]
    assert gguf_m["preference_accuracy"] == torch_m["preference_accuracy"]
    assert gguf_m["preference_margin"] == pytest.approx(torch_m["preference_margin"], rel=1e-3)
    details = json.loads((run.store.find_artifact(run.result["report"]).path / "report.json").read_text())["details"]
    assert details[gguf]["backend"] == "llama.cpp" and details[ids["trained"]]["backend"] == "torch"
    assert details[gguf]["perplexity"]["tokens_scored"] == details[ids["trained"]]["perplexity"]["tokens_scored"]
    assert [s["prediction"] for s in details[gguf]["generation"]["samples"]] == \
        [s["prediction"] for s in details[ids["trained"]]["generation"]["samples"]]

    # Without its checkpoint the file is tokenized by llama.cpp, and the run says so; for a
    # byte-level BPE llama.cpp splits text exactly as the checkpoint's tokenizer does.
    alone = run.result["metrics"][orphan]
    assert any("llama.cpp's tokenizer is used" in e.get("message", "") for e in run.events if e["type"] == "log")
    assert alone["perplexity"] == pytest.approx(gguf_m["perplexity"], rel=1e-6)
    assert alone["exact_match"] == gguf_m["exact_match"] and alone["mc_accuracy"] == gguf_m["mc_accuracy"]


def test_a_pruned_model_and_a_gguf_show_their_parameters_and_file_size_beside_the_metrics(ids, world, tmp_path):
    import llama_cpp
    from safetensors import safe_open

    from workbench.store import Store

    pruned = run_inline("prune", {"model": ids["trained"], "target": 0.75, "method": ["blocks", "channels"],
                                  "heal": "none"}).result["model"]
    path = gguf_of(world["trained"], tmp_path / "trained-f32.gguf")
    gguf = register(path, "gguf", "trained-f32", [ids["trained"]])
    run = run_inline("eval", {"models": [ids["trained"], pruned, gguf], "tasks": ["perplexity"],
                              "dataset": ids["pretrain"]})
    store = Store()
    table = run.result["tables"][0]
    rows = {r[0]: r[2:] for r in table["rows"]}
    assert [r[0] for r in table["rows"]] == ["perplexity", "bits_per_byte", "parameters", "file size"]

    def unique_numel(model_dir: Path) -> int:  # tied weights are stored once
        with safe_open(str(model_dir / "model.safetensors"), "pt") as fh:
            return sum(math.prod(fh.get_slice(k).get_shape()) for k in fh.keys())  # noqa: SIM118 (not iterable)

    source, small = unique_numel(world["trained"]), unique_numel(store.find_artifact(pruned).path)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=32, verbose=False)
    in_gguf = llama_cpp.llama_model_n_params(llm.model)
    llm.close()
    assert source == in_gguf  # the F32 file holds the very weights
    assert rows["parameters"] == [f"{source:,}", f"{small:,} ({small / source:.2f}×)", f"{in_gguf:,}"]
    sizes = [(world["trained"] / "model.safetensors").stat().st_size,
             (store.find_artifact(pruned).path / "model.safetensors").stat().st_size, path.stat().st_size]
    report = json.loads((store.find_artifact(run.result["report"]).path / "report.json").read_text())
    assert [report["footprint"][m]["size_bytes"] for m in (ids["trained"], pruned, gguf)] == sizes
    assert rows["file size"][1].endswith(f"({sizes[1] / sizes[0]:.2f}×)")
    assert "| parameters | ↓ |" in (store.find_artifact(run.result["report"]).path / "report.md").read_text()


def always_first_slot_judge(model_dir: Path, out: Path) -> Path:
    """A model that answers "A" after its assistant prompt whatever it is asked: every block is
    switched off (zero output projections), so the last position's logits depend on the last
    token alone, and the output row of "A" points along that token's normalised embedding."""
    import torch

    from workbench.ml.checkpoint import (
        load_config,
        load_state_dict,
        load_tokenizer,
        read_meta,
        save_model_dir,
    )

    sd = {k: v.clone() for k, v in load_state_dict(model_dir).items()}
    for key in sd:
        if key.endswith(("attn.proj.weight", "mlp.proj.weight")):
            sd[key].zero_()
    tok = load_tokenizer(model_dir)
    newline, letter_a = tok.encode("\n", bos=False).tolist()[-1], tok.encode("A", bos=False).tolist()[0]
    x = sd["transformer.wte.weight"][newline]
    h = x / torch.sqrt((x * x).mean() + 1e-5) * sd["transformer.ln_f.weight"]
    sd["lm_head.weight"][letter_a] = 10 * h / h.norm()
    save_model_dir(out, sd, load_config(model_dir), tokenizer_dir=model_dir, meta=read_meta(model_dir))
    return gguf_of(out, out.parent / "first-slot-judge-f32.gguf")


def test_judge_asks_both_orders_so_a_judge_stuck_on_one_slot_scores_every_pair_a_tie(ids, world, tmp_path):
    judge = register(always_first_slot_judge(world["parent"], tmp_path / "judge"), "gguf", "first-slot-judge")
    run = run_inline("eval", {"models": [ids["parent"], ids["trained"]], "judge": judge,
                              "tasks": ["generation", "judge"], "max_new_tokens": 12})
    report = json.loads((run.store.find_artifact(run.result["report"]).path / "report.json").read_text())
    verdicts = report["judge"]["results"][ids["trained"]]
    n = len(instruction_rows(VAL_PROMPTS))
    # The answers differ on every prompt, the judge names slot A both times: one win, one loss.
    assert verdicts["identical"] == 0 and verdicts["ties"] == n and verdicts["consistent_orders"] == 0
    assert run.result["metrics"][ids["trained"]]["judge_win_rate"] == 0.5
    assert "judge_win_rate" not in run.result["metrics"][ids["parent"]]  # the baseline
    assert run.result["tables"][-1]["columns"][:2] == ["model", "win rate"]


def test_judge_win_rate_is_deterministic_and_identical_answers_are_ties(ids, world, tmp_path):
    judge = register(gguf_of(world["trained"], tmp_path / "judge-f32.gguf"), "gguf", "trained-judge")
    twin = register(world["trained"], "model", "trained-twin", [ids["instruction"]])
    options = {"models": [ids["parent"], ids["trained"], twin], "judge": judge, "tasks": ["judge"], "limit": 6,
               "max_new_tokens": 12}
    first, second = run_inline("eval", options), run_inline("eval", options)
    assert first.result["metrics"] == second.result["metrics"]
    win = first.result["metrics"][ids["trained"]]["judge_win_rate"]
    assert 0.0 <= win <= 1.0 and first.result["metrics"][twin]["judge_win_rate"] == win
    report = json.loads((first.store.find_artifact(first.result["report"]).path / "report.json").read_text())
    assert report["judge"]["baseline"] == ids["parent"]

    own = run_inline("eval", {**options, "models": [ids["trained"], twin]})
    verdicts = json.loads((own.store.find_artifact(own.result["report"]).path / "report.json").read_text())
    assert verdicts["judge"]["results"][twin]["identical"] == 6
    assert own.result["metrics"][twin]["judge_win_rate"] == 0.5
