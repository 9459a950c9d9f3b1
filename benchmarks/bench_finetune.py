"""LoRA finetuning, side by side.

- trainable parameters and peak training memory of LoRA against full finetuning of the same model
  (same batch, same tokens, AdamW, fp32 on CPU or the GPU's own precision);
- step time of `workbench finetune lora` against LitGPT's own `litgpt finetune_lora` on the same
  model, data (the demo instruction set, Alpaca prompt), LoRA config, batch and step count, each
  run as a real subprocess.

    python benchmarks/bench_finetune.py [--steps 30] [--batch 4] [--width 256] [--layers 4]

Memory is measured in child processes: on CPU the peak resident set while training, sampled
every few milliseconds, minus the resident set after the imports (glibc is told to hand large
frees back to the OS, so what the model loader freed is not counted twice); on CUDA the peak
allocated by torch.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from itertools import islice
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "assets" / "data"
LORA = {"r": 8, "alpha": 16, "dropout": 0.05, "targets": ("query", "value")}


def demo_chats(split: str, n: int) -> list[list[dict[str, str]]]:
    with open(DEMO / f"instruction.{split}.jsonl", encoding="utf-8") as fh:
        return [json.loads(line)["messages"] for line in islice(fh, n)]


def make_model(out_dir: Path, width: int, layers: int) -> Path:
    """A Llama-style model with a byte-level BPE tokenizer trained on the demo instructions."""
    import torch
    from litgpt import GPT, Config
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from workbench.ml.checkpoint import save_model_dir
    from workbench.prompts import get_style

    tok_dir = out_dir.parent / "tokenizer"
    tok_dir.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = [m["content"] for chat in demo_chats("train", 2000) for m in chat]
    tok.train_from_iterator([*texts, get_style("alpaca").default_system], trainer=trainer)
    tok.save(str(tok_dir / "tokenizer.json"))
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|pad|>", "add_bos_token": False}))
    eos = tok.token_to_id("<|endoftext|>")
    (tok_dir / "generation_config.json").write_text(json.dumps({"bos_token_id": eos, "eos_token_id": eos}))
    vocab = tok.get_vocab_size()
    config = Config(name="bench-llama", block_size=256, n_layer=layers, n_embd=width, n_head=width // 64,
                    n_query_groups=width // 64, vocab_size=vocab, padded_vocab_size=(vocab + 255) // 256 * 256,
                    rotary_percentage=1.0, parallel_residual=False, bias=False, norm_class_name="RMSNorm",
                    mlp_class_name="LLaMAMLP", intermediate_size=width * 3, norm_eps=1e-5)
    torch.manual_seed(0)
    save_model_dir(out_dir, GPT(config).state_dict(), config, tokenizer_dir=tok_dir,
                   meta={"prompt_style": get_style("alpaca").to_json(), "family": "llama",
                         "eos_token": "<|endoftext|>"})
    return out_dir


# ----------------------------------------------------------------------------------------------
# memory: one child process per mode


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_child(mode: str, model_dir: Path, batch: int, seq: int, steps: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from workbench.ml.checkpoint import load_model
    from workbench.ml.lora import LoRASettings, count_parameters, load_lora_model

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    baseline = torch.cuda.memory_allocated() if cuda else _rss()
    if mode == "lora":
        model = load_lora_model(model_dir, LoRASettings(**LORA), device=device)
    else:
        model = load_model(model_dir, device=device)
    model.train()
    total, trainable = count_parameters(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.randint(0, model.config.vocab_size, (batch, seq + 1), generator=torch.Generator().manual_seed(0)).to(device)

    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        sampler.start()
    t0 = time.perf_counter()
    for _ in range(steps):
        logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    elapsed = (time.perf_counter() - t0) / steps
    stop.set()
    if cuda:
        used = torch.cuda.max_memory_allocated() - baseline
    else:
        sampler.join()
        used = max(peak[0], _rss()) - baseline
    return {"mode": mode, "peak_bytes": used, "total_params": total, "trainable_params": trainable,
            "step_s": elapsed, "device": device}


def run_memory(mode: str, model_dir: Path, batch: int, seq: int, steps: int) -> dict[str, Any]:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}  # large frees go back to the OS at once
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--model-dir", str(model_dir), "--batch", str(batch),
         "--seq", str(seq), "--steps", str(steps)],
        capture_output=True, text=True, check=True, env=env, cwd=ROOT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------
# step time: our stage and LitGPT's script, each as a subprocess


def ours_step_times(model_dir: Path, work: Path, n_train: int, steps: int, batch: int) -> list[float]:
    from workbench.context import Context
    from workbench.store import Store

    env = {**os.environ, "WORKBENCH_HOME": str(work / "workspace")}
    previous = os.environ.get("WORKBENCH_HOME")
    os.environ["WORKBENCH_HOME"] = env["WORKBENCH_HOME"]  # the store and staging dirs follow it
    try:
        ctx = Context(Store())
        staged = ctx.staging_dir("model")
        staged.rmdir()
        shutil.copytree(model_dir, staged)
        model = ctx.register("model", staged, name="bench-base").id
        staged = ctx.staging_dir("dataset")
        (staged / "card.json").write_text(json.dumps({"type": "instruction"}))
        for split, n in (("train", n_train), ("val", 32)):
            with open(staged / f"{split}.jsonl", "w", encoding="utf-8") as fh:
                fh.writelines(json.dumps({"messages": m}) + "\n" for m in demo_chats(split, n))
        data = ctx.register("dataset", staged, name="bench-instructions").id
    finally:
        if previous is None:
            os.environ.pop("WORKBENCH_HOME", None)
        else:
            os.environ["WORKBENCH_HOME"] = previous
    cmd = [sys.executable, "-m", "workbench.cli", "finetune", "lora", model, data, "--json",
           "--rank", str(LORA["r"]), "--alpha", str(LORA["alpha"]), "--dropout", str(LORA["dropout"]),
           "--targets", ",".join(LORA["targets"]), "--prompt-style", "alpaca", "--batch-size", str(batch),
           "--max-steps", str(steps), "--warmup-steps", "2", "--eval-every", str(steps * 10),
           "--checkpoint-every", str(steps * 10), "--precision", "32-true", "--max-seq-length", "256"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"workbench finetune lora failed: {out.stderr[-2000:]}")
    run_id = json.loads(out.stdout)["run_id"]
    events = work / "workspace" / "runs" / run_id / "events.jsonl"
    return [e["values"]["step_time"] for e in map(json.loads, events.read_text().splitlines())
            if e["type"] == "metric" and "step_time" in e["values"]]


def litgpt_step_times(model_dir: Path, work: Path, n_train: int, steps: int, batch: int) -> list[float]:
    data_dir = work / "litgpt-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", 32)):
        rows = [{"instruction": m[0]["content"], "input": "", "output": m[-1]["content"]} for m in demo_chats(split, n)]
        (data_dir / f"{split}.json").write_text(json.dumps(rows))
    out_dir = work / "litgpt-out"
    t = {"query": "true", "value": "true"}
    cmd = [
        str(Path(sys.executable).with_name("litgpt")), "finetune_lora", str(model_dir), "--out_dir", str(out_dir),
        "--precision", "32-true", "--devices", "1", "--lora_r", str(LORA["r"]), "--lora_alpha", str(LORA["alpha"]),
        "--lora_dropout", str(LORA["dropout"]),
        *[a for name in ("query", "key", "value", "projection", "mlp", "head")
          for a in (f"--lora_{name}", t.get(name, "false"))],
        "--data", "JSON", "--data.json_path", str(data_dir), "--data.mask_prompt", "true",
        "--data.prompt_style", "alpaca", "--data.num_workers", "0",
        "--train.micro_batch_size", str(batch), "--train.global_batch_size", str(batch),
        "--train.max_steps", str(steps), "--train.epochs", "1000", "--train.lr_warmup_steps", "2",
        "--train.save_interval", str(steps * 10), "--train.log_interval", "1", "--train.max_seq_length", "256",
        "--eval.interval", str(steps * 10), "--eval.initial_validation", "false",
        "--eval.final_validation", "false", "--eval.max_iters", "1", "--logger_name", "csv", "--seed", "42",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
    if out.returncode != 0:
        raise RuntimeError(f"litgpt finetune_lora failed: {out.stderr[-2000:]}")
    metrics = next(out_dir.rglob("metrics.csv"))
    with open(metrics, newline="") as fh:
        return [float(r["iter_time"]) for r in csv.DictReader(fh) if r.get("iter_time")]


# ----------------------------------------------------------------------------------------------


def rows(steps: int = 30, batch: int = 4, width: int = 256, layers: int = 4) -> list[dict[str, Any]]:
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        work = Path(tmp)
        model_dir = make_model(work / "model", width, layers)
        lora = run_memory("lora", model_dir, batch, 128, 3)
        full = run_memory("full", model_dir, batch, 128, 3)
        ours = ours_step_times(model_dir, work, 256, steps, batch)
        peer = litgpt_step_times(model_dir, work, 256, steps, batch)
    skip = min(3, steps // 3)  # the first steps pay for allocation and warm caches
    ours_ms = statistics.median(ours[skip:]) * 1000
    peer_ms = statistics.median(peer[skip:]) * 1000
    mib = 1024 * 1024
    label = f"{lora['total_params'] / 1e6:.1f}M-param Llama, r={LORA['r']} on q,v, batch {batch}"
    return [
        {"figure": f"trainable parameters, LoRA vs full ({label})", "ours": lora["trainable_params"],
         "peer": full["trainable_params"], "ratio": lora["trainable_params"] / full["trainable_params"],
         "target": "< 0.05"},
        {"figure": f"peak training memory MiB, LoRA vs full, seq 128 ({lora['device']})",
         "ours": lora["peak_bytes"] / mib, "peer": full["peak_bytes"] / mib,
         "ratio": lora["peak_bytes"] / full["peak_bytes"], "target": "< 1"},
        {"figure": "LoRA step ms, workbench vs litgpt finetune_lora (median)", "ours": ours_ms, "peer": peer_ms,
         "ratio": ours_ms / peer_ms, "target": "<= 1.1"},
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--child", choices=["lora", "full"], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--seq", type=int, default=128, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, str(ROOT))
        print(json.dumps(memory_child(args.child, args.model_dir, args.batch, args.seq, args.steps)))
        return 0
    table = rows(args.steps, args.batch, args.width, args.layers)
    print(f"{'figure':<72} {'ours':>12} {'peer':>12} {'ratio':>8}  target")
    for r in table:
        ours, peer = (f"{v:>12,}" if isinstance(v, int) else f"{v:>12,.1f}" for v in (r["ours"], r["peer"]))
        print(f"{r['figure']:<72} {ours} {peer} {r['ratio']:>8.3f}  {r['target']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
