"""Memory and time at real model sizes, and our converter against llama.cpp's.

A Llama-3.2-1B-shaped checkpoint (random bf16 weights in Meta's published layout: hidden 2048,
16 layers, 32 heads, 8 KV heads, intermediate 8192, tied embeddings, llama3 RoPE scaling, and the
real Llama 3 tokenizer, rebuilt from the vocabulary llama.cpp ships for its tokenizer tests) is
served by the Hub look-alike of the tests (`tests/hubserver.py`) and taken through:

1. `workbench download` (download + conversion to a LitGPT checkpoint);
2. `workbench finetune lora`, one step on a handful of short examples (adapter + merged model);
3. `workbench export --quant f16,q4_k_m` (F32 reference, F16, Q4_K_M, each verified in llama.cpp);
4. the peer: llama.cpp's own `convert_hf_to_gguf.py --outtype f16` on the same snapshot, then
   `llama_cpp.llama_model_quantize` to Q4_K_M, as our quantize does;
5. next-token logits of both F16 files in llama.cpp (F32 KV cache) against transformers on the
   same ids.

Every step is a fresh process, as a user runs it; its peak resident set is the largest of the
process tree (`/usr/bin/time`'s maximum resident set, which follows waited-for children, so the
CLI's worker counts). `--shape tiny` runs the same at a 35M-parameter shape in a minute.

The peer converter ships in llama-cpp-python's source distribution; the first run fetches it with
`pip download` into `--cache` (default ~/.cache/workbench-bench), later runs reuse it.

    python benchmarks/bench_models.py [--shape 1b|tiny] [--cache DIR] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MiB = 2**20
GiB = 2**30
DEFAULTS = {"shape": "tiny"}
REPO = "bench/Llama-3.2-1B"
# Meta's published config.json for Llama-3.2-1B; `tiny` keeps everything but the widths.
LLAMA_32_1B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu", "hidden_size": 2048,
    "initializer_range": 0.02, "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": False,
    "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_cache": True,
    "vocab_size": 128256,
}
SHAPES = {
    "1b": LLAMA_32_1B,
    # Widths that are multiples of 256, so Q4_K_M quantizes every matrix as it does at 1B.
    "tiny": {**LLAMA_32_1B, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2},
}
# A few short instructions: the finetuning step measures memory and time, not learning.
EXAMPLES = [("What is the capital of France?", "Paris."), ("Add 2 and 3.", "5"),
            ("Name a primary colour.", "Red."), ("Spell 'cat' backwards.", "tac"),
            ("Is ice cold?", "Yes."), ("Say hello.", "Hello!"), ("What is 10 / 2?", "5"),
            ("Opposite of up?", "Down.")]
# Ids for the logit comparison: plain text, so both tokenizers and templates are out of the way.
PROMPT = "The quick brown fox jumps over the lazy dog. In 1492, Columbus"


def env_paths() -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins"), os.environ.get("PYTHONPATH", "")])}


# -- the peer converter and the Llama 3 tokenizer, from llama-cpp-python's sdist ------------------


def llama_cpp_source(cache: Path) -> Path:
    """llama.cpp as vendored by the installed llama-cpp-python: converter, gguf-py, vocab files."""
    import llama_cpp

    version = llama_cpp.__version__
    dest = cache / f"llama.cpp-{version}"
    if (dest / "convert_hf_to_gguf.py").exists():
        return dest
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / f"llama_cpp_python-{version}.tar.gz"
    if not sdist.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
                        f"llama-cpp-python=={version}", "-d", str(cache)], check=True)
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "models/ggml-vocab-llama-bpe.gguf")
    tmp = Path(tempfile.mkdtemp(dir=cache))
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)
                   and m.name[len(prefix):].startswith(wanted) and (m.isfile() or m.isdir())]
        for m in members:
            m.name = m.name[len(prefix):]
        tar.extractall(tmp, members=members, filter="data")
    tmp.rename(dest)
    return dest


def llama3_tokenizer(llama_cpp_dir: Path, out: Path) -> Path:
    """Llama 3's tokenizer.json, rebuilt from llama.cpp's copy of its vocabulary and merges.

    The pre-tokenizer regex, `ignore_merges` and the BOS post-processor are Llama 3's; llama.cpp's
    converter accepts the result (it hashes the ids of a test string: "llama-bpe").
    """
    if (out / "tokenizer.json").exists():
        return out
    import gguf
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
    )

    reader = gguf.GGUFReader(str(llama_cpp_dir / "models" / "ggml-vocab-llama-bpe.gguf"))

    def strings(key: str) -> list[str]:
        field = reader.fields[key]
        return [bytes(field.parts[i]).decode("utf-8") for i in field.data]

    tokens, merges = strings("tokenizer.ggml.tokens"), strings("tokenizer.ggml.merges")
    n_regular = 128000  # then 256 special tokens, <|begin_of_text|> first
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens[:n_regular])},
                     merges=[tuple(m.split(" ", 1)) for m in merges], ignore_merges=True)
    tok = Tokenizer(bpe)
    pattern = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens[n_regular:]])
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", n_regular)])
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    tok.save(str(tmp / "tokenizer.json"))
    (tmp / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
        "eos_token": "<|end_of_text|>", "model_max_length": 131072}))
    (tmp / "generation_config.json").write_text(json.dumps({"bos_token_id": 128000, "eos_token_id": 128001}))
    tmp.rename(out)
    return out


# -- the Hugging Face repository ------------------------------------------------------------------


def make_repo(shape: str, tok_dir: Path, out: Path) -> Path:
    """A Hugging Face repository: config.json, random bf16 model.safetensors, tokenizer files.

    Weights are drawn tensor by tensor (std 0.02, norms near 1), so building the 1B shape holds
    one bf16 copy of the model, as a published checkpoint is.
    """
    import torch
    from safetensors.torch import save_file

    cfg = SHAPES[shape]
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    d, inter, hs = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hs, cfg["num_key_value_heads"] * hs

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)

    def norm() -> torch.Tensor:
        return (1 + torch.randn(d, generator=g) * 0.1).to(torch.bfloat16)

    sd = {"model.embed_tokens.weight": rand(cfg["vocab_size"], d), "model.norm.weight": norm()}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        sd.update({
            p + "input_layernorm.weight": norm(), p + "post_attention_layernorm.weight": norm(),
            p + "self_attn.q_proj.weight": rand(q, d), p + "self_attn.k_proj.weight": rand(kv, d),
            p + "self_attn.v_proj.weight": rand(kv, d), p + "self_attn.o_proj.weight": rand(d, q),
            p + "mlp.gate_proj.weight": rand(inter, d), p + "mlp.up_proj.weight": rand(inter, d),
            p + "mlp.down_proj.weight": rand(d, inter),
        })
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        (out / name).write_bytes((tok_dir / name).read_bytes())
    (out / "README.md").write_text("---\nlicense: llama3.2\n---\nRandom weights in Llama-3.2-1B's shape.\n")
    return out


# -- measuring one process --------------------------------------------------------------------------


def _tree_peaks(root: int, peaks: dict[int, int]) -> None:
    """Record VmHWM (the peak resident set so far) of `root` and every process descended from it.

    A pid once seen is followed after its parent exits: the worker of a run may outlive the CLI
    by a moment, and it is started in a session of its own.
    """
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    wanted = set(peaks) | {root}
    grew = True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in wanted} - wanted
        wanted |= more
        grew = bool(more)
    for pid in wanted:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        hwm = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
        if hwm:
            peaks[pid] = max(peaks.get(pid, 0), int(hwm.group(1)))


def measured(cmd: list[str], env: dict[str, str], what: str) -> dict[str, Any]:
    """Wall time and the peak resident set of the largest process in the command's tree.

    `/usr/bin/time` reports the peak of the command and of the children it waited for; the
    worker of a run is sampled from /proc every 0.1 s as well (its VmHWM only grows, so the
    last sample before it exits misses at most the last 0.1 s of growth).
    """
    peaks: dict[int, int] = {}
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report, \
            tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", report.name, *cmd], env=env,
                                stdout=out, stderr=err, text=True)
        while proc.poll() is None:
            _tree_peaks(proc.pid, peaks)
            time.sleep(0.1)
        seconds = time.perf_counter() - t0
        _tree_peaks(proc.pid, peaks)  # workers still finishing
        peaks[0] = int(report.read().strip().splitlines()[-1])
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}): {(stderr or stdout)[-1500:]}")
    return {"seconds": seconds, "peak_mib": max(peaks.values()) / 1024, "stdout": stdout}


def disk_bytes(path: Path) -> int:
    """Bytes on disk, each inode once (hard links count once, as `du` counts them)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        st = p.lstat()
        if p.is_file() and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "workbench.cli", *args]


def one_json(stdout: str) -> dict[str, Any]:
    return json.loads(stdout[stdout.index("{"):])


# -- children -------------------------------------------------------------------------------------


def child_quantize(src: str, dst: str) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params)
    if rc != 0:
        raise SystemExit(f"llama_model_quantize returned {rc}")


def child_logits(snapshot: str, ggufs: str) -> None:
    """Max |logit difference| of each GGUF's next-token logits from transformers', same ids."""
    import numpy as np
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    ids = AutoTokenizer.from_pretrained(snapshot)(PROMPT)["input_ids"]
    model = LlamaForCausalLM.from_pretrained(snapshot, dtype=torch.float32)
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0, -1].numpy()
    del model
    from llama_cpp import Llama

    out = {"n_ids": len(ids), "ref_max_abs": float(np.abs(ref).max())}
    for path in ggufs.split(","):
        llm = Llama(path, n_ctx=128, logits_all=True, type_k=0, type_v=0, verbose=False, n_threads=os.cpu_count())
        llm.eval(ids)
        got = np.asarray(llm.scores[len(ids) - 1], dtype=np.float32)[: len(ref)]
        out[path] = {"max_abs": float(np.abs(got - ref).max()), "top1_same": bool(got.argmax() == ref.argmax())}
        del llm
    print(json.dumps(out))


# -- the run ----------------------------------------------------------------------------------------


def measure(shape: str, cache: Path, work: Path, download_only: bool = False) -> dict[str, Any]:
    sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]
    from tests.hubserver import HubServer

    lcpp = llama_cpp_source(cache)
    tok = llama3_tokenizer(lcpp, cache / "llama3-tokenizer")
    t0 = time.perf_counter()
    repo = make_repo(shape, tok, work / "repo")
    m: dict[str, Any] = {"shape": shape, "make_repo_s": time.perf_counter() - t0,
                         "hf_bytes": (repo / "model.safetensors").stat().st_size}
    home = work / "home"
    env = {**os.environ, **env_paths(), "HF_HOME": str(home / "hf"), "WORKBENCH_HOME": str(home / "ws"),
           "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1"}
    with HubServer() as hub:
        hub.add_repo(REPO, {p.name: p for p in repo.iterdir()})
        env["HF_ENDPOINT"] = hub.url
        m["download"] = measured(cli("download", REPO, "--name", "base", "--json"), env, "workbench download")
    model_dir = Path(one_json(m["download"].pop("stdout"))["artifacts"][0]["path"])
    m["model_dir_bytes"] = disk_bytes(model_dir)
    m["model_files"] = {p.name: p.stat().st_size for p in model_dir.iterdir() if p.stat().st_size > MiB}
    m["hf_cache_bytes"] = disk_bytes(home / "hf")
    if download_only:
        return m

    rows = work / "instructions.jsonl"
    rows.write_text("".join(json.dumps({"instruction": q, "output": a}) + "\n" for q, a in EXAMPLES))
    subprocess.run(cli("data", "prepare", str(rows), "--type", "instruction", "--name", "tiny-sft",
                       "--val-fraction", "0.25", "--json"), env=env, check=True, capture_output=True)
    m["finetune"] = measured(cli("finetune", "lora", "base", "tiny-sft", "--max-steps", "1", "--batch-size", "2",
                                 "--max-seq-length", "64", "--eval-batches", "1", "--device", "cpu", "--json"),
                             env, "workbench finetune lora")
    m["finetune"].pop("stdout")

    m["export"] = measured(cli("export", "base", "--quant", "f16,q4_k_m", "--ppl-tokens", "256", "--json"),
                           env, "workbench export")
    m["export"].pop("stdout")
    exported = {re.search(r"-(f16|q4_k_m)\.gguf$", p.name).group(1): p  # type: ignore[union-attr]
                for p in (home / "ws").rglob("*.gguf") if re.search(r"-(f16|q4_k_m)\.gguf$", p.name)}
    m["ours_bytes"] = {k: p.stat().st_size for k, p in exported.items()}

    snapshot = next((home / "hf").rglob("config.json")).parent
    peer_f16, peer_q4 = work / "peer-f16.gguf", work / "peer-q4_k_m.gguf"
    peer_env = {**env, "PYTHONPATH": str(lcpp / "gguf-py")}  # the gguf-py it vendors, not ours
    m["peer_convert"] = measured([sys.executable, str(lcpp / "convert_hf_to_gguf.py"), str(snapshot),
                                  "--outtype", "f16", "--outfile", str(peer_f16)], peer_env, "convert_hf_to_gguf.py")
    m["peer_convert"].pop("stdout")
    m["peer_quantize"] = measured([sys.executable, __file__, "--child", "quantize", str(peer_f16), str(peer_q4)],
                                  env, "llama_model_quantize")
    m["peer_quantize"].pop("stdout")
    m["peer_bytes"] = {"f16": peer_f16.stat().st_size, "q4_k_m": peer_q4.stat().st_size}

    logits = measured([sys.executable, __file__, "--child", "logits", str(snapshot),
                       f"{exported['f16']},{peer_f16}"], env, "logit comparison")
    result = one_json(logits["stdout"])
    m["logits"] = {"n_ids": result["n_ids"], "ref_max_abs": result["ref_max_abs"],
                   "ours": result[str(exported["f16"])], "peer": result[str(peer_f16)]}
    return m


def rows(shape: str = DEFAULTS["shape"], cache: str | None = None, keep: str | None = None) -> list[dict[str, Any]]:
    cache_dir = Path(cache) if cache else Path.home() / ".cache" / "workbench-bench"
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        return to_rows(measure(shape, cache_dir, Path(keep)))
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        return to_rows(measure(shape, cache_dir, Path(tmp)))


def to_rows(m: dict[str, Any]) -> list[dict[str, Any]]:
    label = f"Llama-3.2-1B shape{'' if m['shape'] == '1b' else ', tiny widths'}"
    hf_mib = m["hf_bytes"] / MiB

    def row(figure: str, ours: float | None, peer: float | None = None, target: str | None = None) -> dict[str, Any]:
        ratio = ours / peer if ours is not None and peer else None
        return {"figure": figure, "ours": ours, "peer": peer, "ratio": ratio, "target": target}

    d = m["download"]
    out = [
        row(f"download+convert s ({label}, {hf_mib:,.0f} MiB bf16)", d["seconds"]),
        row("download+convert peak RSS MiB / HF weights MiB", d["peak_mib"], hf_mib),
        row("model directory on disk MiB / HF weights MiB", m["model_dir_bytes"] / MiB, hf_mib),
    ]
    if "finetune" not in m:
        return out
    f, e = m["finetune"], m["export"]
    pc, pq = m["peer_convert"], m["peer_quantize"]
    out += [
        row("finetune lora, 1 step + adapter + merged model: s", f["seconds"]),
        row("finetune lora peak RSS MiB / HF weights MiB", f["peak_mib"], hf_mib),
        row("export F32 ref + F16 + Q4_K_M, verified: s / peer F16+Q4_K_M s", e["seconds"],
            pc["seconds"] + pq["seconds"]),
        row("export peak RSS MiB / peer convert peak MiB", e["peak_mib"], pc["peak_mib"]),
        row("HF snapshot → LitGPT checkpoint s (ours) / → F16 GGUF s (peer)", d["seconds"], pc["seconds"]),
        row("quantize Q4_K_M peak RSS MiB (peer, llama_model_quantize)", pq["peak_mib"]),
        row("F16 GGUF MiB, ours / peer", m["ours_bytes"]["f16"] / MiB, m["peer_bytes"]["f16"] / MiB, "≈ 1"),
        row("Q4_K_M GGUF MiB, ours / peer", m["ours_bytes"]["q4_k_m"] / MiB, m["peer_bytes"]["q4_k_m"] / MiB, "≈ 1"),
        row(f"F16 next-token logits max |Δ| vs transformers ({m['logits']['n_ids']} ids, "
            f"max |logit| {m['logits']['ref_max_abs']:.2f}); top-1 same: "
            f"{m['logits']['ours']['top1_same']}/{m['logits']['peer']['top1_same']}",
            m["logits"]["ours"]["max_abs"], m["logits"]["peer"]["max_abs"], "≤ peer"),
    ]
    return out


def num(value: float | None) -> str:
    if value is None:
        return f"{'-':>10}"
    return f"{value:10.2e}" if 0 < abs(value) < 0.01 else f"{value:10.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default=DEFAULTS["shape"])
    parser.add_argument("--cache", help="where llama-cpp-python's sdist and the tokenizer are kept")
    parser.add_argument("--keep", help="work in this directory and leave it (default: a temporary one)")
    parser.add_argument("--download-only", action="store_true", help="measure the download step alone")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "quantize":
        child_quantize(*args.args)
        return
    if args.child == "logits":
        child_logits(*args.args)
        return
    cache = Path(args.cache) if args.cache else Path.home() / ".cache" / "workbench-bench"
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        m = measure(args.shape, cache, work, args.download_only)
    print(json.dumps({k: v for k, v in m.items()}, indent=1, default=str), file=sys.stderr)
    print(f"{'figure':86} {'ours':>10} {'peer':>10} {'ratio':>7}  target")
    for r in to_rows(m):
        ratio = f"{r['ratio']:7.3f}" if r["ratio"] is not None else f"{'-':>7}"
        print(f"{r['figure']:86} {num(r['ours'])} {num(r['peer'])} {ratio}  {r['target'] or ''}")


if __name__ == "__main__":
    main()
