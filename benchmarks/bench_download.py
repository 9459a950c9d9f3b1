"""Downloads from a Hub: `workbench download` against the tools people use for the same job.

All transfers go to the Hub look-alike of the tests (`tests/hubserver.py`) on 127.0.0.1, so the
figures measure the tools, not the network. Every command runs as a fresh process with a cold
Hugging Face cache, as a user would run it.

1. Download + conversion of a SmolLM2-135M-shaped Llama (random bf16 weights, 30 layers, width 576,
   49152-token vocabulary, tied embeddings: the smallest Llama in LitGPT's own table, so LitGPT's
   converter accepts it by name) against `snapshot_download(local_dir=…)` (what
   `hf download --local-dir` runs) followed by `litgpt convert_to_litgpt`. (`litgpt download` itself, which would do both, fails with
   huggingface_hub 1.x: it reads `constants.HF_HUB_ENABLE_HF_TRANSFER`, which 1.x removed.) The two
   checkpoints must hold identical tensors (checked). Ours also hashes every file and writes
   `model.safetensors` beside `lit_model.pth`. Target: ≤ 1.5× the pair's time.
2. A GGUF file kept as is (`--gguf-file`) against `hf_hub_download` of the same file (what
   `hf download REPO FILE` runs). Ours also reads the file once more to hash it (sha256, checked
   against the Hub's) and inspects it; over loopback that pass is as long as the transfer, on a
   real network it is small. Target: no more than the peer plus one sha256 pass of the file plus
   2 s of process start-up (a CLI and a worker process).
3. A transfer cut at 60 %: the share of the file sent again by the run that completes it. Target:
   the rest only, give or take the 10 MiB chunk huggingface_hub writes at a time.

    python benchmarks/bench_download.py [--gguf-mib 512] [--reps 1]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for extra in (ROOT, ROOT / "plugins"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

DEFAULTS = {"gguf_mib": 512, "reps": 1}
BIN = Path(sys.executable).parent
SMOLLM2 = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "hidden_act": "silu", "hidden_size": 576,
    "intermediate_size": 1536, "max_position_embeddings": 8192, "model_type": "llama", "num_attention_heads": 9,
    "num_hidden_layers": 30, "num_key_value_heads": 3, "rms_norm_eps": 1e-05, "rope_theta": 100000,
    "tie_word_embeddings": True, "torch_dtype": "bfloat16", "vocab_size": 49152, "bos_token_id": 0,
    "eos_token_id": 0,
}


def llama_repo(cfg: dict[str, Any], work: Path) -> dict[str, bytes]:
    """A Hugging Face repository with random weights in the shape `cfg` describes."""
    import torch
    from safetensors.torch import save

    from tests.conftest import make_tokenizer

    g = torch.Generator().manual_seed(0)
    d, layers, inter = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]
    hs = d // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hs, cfg["num_key_value_heads"] * hs

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)

    sd = {"model.embed_tokens.weight": rand(cfg["vocab_size"], d), "model.norm.weight": rand(d)}
    for i in range(layers):
        p = f"model.layers.{i}."
        sd.update({
            p + "input_layernorm.weight": rand(d), p + "post_attention_layernorm.weight": rand(d),
            p + "self_attn.q_proj.weight": rand(q, d), p + "self_attn.k_proj.weight": rand(kv, d),
            p + "self_attn.v_proj.weight": rand(kv, d), p + "self_attn.o_proj.weight": rand(d, q),
            p + "mlp.gate_proj.weight": rand(inter, d), p + "mlp.up_proj.weight": rand(inter, d),
            p + "mlp.down_proj.weight": rand(d, inter),
        })
    tok = make_tokenizer(work / "tokenizer")
    return {
        "config.json": json.dumps(cfg).encode(), "model.safetensors": save(sd),
        **{n: (tok / n).read_bytes() for n in ("tokenizer.json", "tokenizer_config.json", "generation_config.json")},
    }


def gguf_file(path: Path, mib: int) -> Path:
    """A valid GGUF holding one float32 tensor of `mib` MiB."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("bench")
    w.add_context_length(2048)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tensor("token_embd.weight", np.random.default_rng(0).standard_normal((mib * 1024, 256), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def hf_download(repo_id: str, *, filename: str | None = None, local_dir: Path | None = None) -> list[str]:
    """What `hf download` runs (its CLI needs the `cli` extra, not installed here)."""
    call = (f"hf_hub_download({repo_id!r}, {filename!r})" if filename
            else f"snapshot_download({repo_id!r}, local_dir={str(local_dir)!r})")
    return [sys.executable, "-c", f"from huggingface_hub import hf_hub_download, snapshot_download; {call}"]


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed: {(proc.stderr or proc.stdout)[-800:]}")
    return took


def environment(hub_url: str, home: Path) -> dict[str, str]:
    return {**os.environ, "HF_ENDPOINT": hub_url, "HF_HOME": str(home / "hf"), "HF_HUB_OFFLINE": "0",
            "WORKBENCH_HOME": str(home / "ws"), "HF_HUB_DISABLE_TELEMETRY": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT), os.environ.get("PYTHONPATH", "")])}


def same_weights(ours: Path, litgpt_dir: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    a = load_file(str(ours / "model.safetensors"))
    b = torch.load(litgpt_dir / "lit_model.pth", map_location="cpu", weights_only=True)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def only_artifact(env: dict[str, str]) -> Path:
    out = subprocess.run([sys.executable, "-m", "workbench.cli", "models", "ls", "--json"], env=env,
                         capture_output=True, text=True, check=True)
    (art,) = json.loads(out.stdout)
    return Path(art["path"])


def rows(gguf_mib: int = DEFAULTS["gguf_mib"], reps: int = DEFAULTS["reps"]) -> list[dict[str, Any]]:
    from tests.hubserver import HubServer

    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-download-") as tmp, HubServer() as hub:
        work = Path(tmp)
        files = llama_repo(SMOLLM2, work)
        hub.add_repo("HuggingFaceTB/SmolLM2-135M", files)
        gguf_path = gguf_file(work / "bench.gguf", gguf_mib)
        hub.add_repo("bench/gguf", {"bench-F32.gguf": gguf_path})
        model_mb = len(files["model.safetensors"]) / 1e6

        best: dict[str, float] = {}
        identical = True
        for rep in range(reps):
            env = environment(hub.url, work / f"ours-{rep}")
            t = timed([sys.executable, "-m", "workbench.cli", "download", "HuggingFaceTB/SmolLM2-135M"], env)
            best["ours"] = min(best.get("ours", t), t)
            peer_dir = work / f"litgpt-{rep}"
            penv = environment(hub.url, peer_dir)
            checkpoint = peer_dir / "SmolLM2-135M"
            t = timed(hf_download("HuggingFaceTB/SmolLM2-135M", local_dir=checkpoint), penv)
            t += timed([str(BIN / "litgpt"), "convert_to_litgpt", str(checkpoint)], penv)
            best["peer"] = min(best.get("peer", t), t)
            identical &= same_weights(only_artifact(env), checkpoint)
        out.append({"figure": f"download+convert SmolLM2-135M shape ({model_mb:.0f} MB bf16), s; same tensors: "
                              f"{'yes' if identical else 'NO'}",
                    "ours": best["ours"], "peer": best["peer"], "ratio": best["ours"] / best["peer"],
                    "target": "≤ 1.5 (peer: snapshot_download + litgpt convert_to_litgpt)"})

        best = {}
        for rep in range(reps):
            env = environment(hub.url, work / f"gguf-ours-{rep}")
            t = timed([sys.executable, "-m", "workbench.cli", "download", "bench/gguf", "--gguf-file", "F32"], env)
            best["ours"] = min(best.get("ours", t), t)
            env = environment(hub.url, work / f"gguf-hf-{rep}")
            t = timed(hf_download("bench/gguf", filename="bench-F32.gguf"), env)
            best["peer"] = min(best.get("peer", t), t)
        t0 = time.perf_counter()
        with open(gguf_path, "rb") as fh:
            hashlib.file_digest(fh, "sha256")
        sha_s = time.perf_counter() - t0
        out.append({"figure": f"GGUF {gguf_mib} MiB kept as is, s", "ours": best["ours"], "peer": best["peer"],
                    "ratio": best["ours"] / best["peer"],
                    "target": f"≤ peer + one sha256 pass ({sha_s:.1f} s here) + 2 s (peer: hf_hub_download)"})

        size = gguf_path.stat().st_size
        env = environment(hub.url, work / "cut")
        hub.drop_once("bench/gguf", "bench-F32.gguf", int(size * 0.6))
        cut = subprocess.run([sys.executable, "-m", "workbench.cli", "download", "bench/gguf", "--gguf-file", "F32",
                              "--retries", "0"], env=env, capture_output=True, text=True)
        assert cut.returncode == 1, cut.stderr
        hub.log.clear()
        timed([sys.executable, "-m", "workbench.cli", "download", "bench/gguf", "--gguf-file", "F32"], env)
        resent = sum(e.sent for e in hub.requests_for("bench-F32.gguf"))
        out.append({"figure": "share of a file sent again after a cut at 60%", "ours": resent / size,
                    "peer": None, "ratio": None, "target": f"≤ {0.4 + (10 << 20) / size:.2f} (rest + one chunk)"})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf-mib", type=int, default=DEFAULTS["gguf_mib"])
    parser.add_argument("--reps", type=int, default=DEFAULTS["reps"])
    args = parser.parse_args()
    table = rows(args.gguf_mib, args.reps)
    print(f"{'figure':70} {'ours':>9} {'peer':>9} {'ratio':>7}  target")
    for r in table:
        peer = f"{r['peer']:9.2f}" if r["peer"] is not None else f"{'-':>9}"
        ratio = f"{r['ratio']:7.2f}" if r["ratio"] is not None else f"{'-':>7}"
        print(f"{r['figure']:70} {r['ours']:9.2f} {peer} {ratio}  {r['target']}")


if __name__ == "__main__":
    main()
