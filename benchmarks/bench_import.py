"""Imports from disk: `workbench models import` against the tools people use for the same job.

1. A Hugging Face directory of SmolLM2-135M shape (random bf16 weights; LitGPT's converter
   accepts it by name) against `litgpt convert_to_litgpt` on the same directory. The two
   checkpoints must hold identical tensors (checked). Ours also hashes every source file, scans
   and checks them before the run, and writes `model.safetensors` beside `lit_model.pth`, into
   the workspace rather than the source folder. Target: ≤ 1.5× the peer's time.
2. A GGUF file, hard-linked into the workspace after its header is read and the file hashed,
   against `cp` of the same file. Target: no more than `cp` plus one sha256 pass of the file plus
   2 s of process start-up (a CLI and a worker process).

Every command runs as a fresh process, as a user would run it.

    python benchmarks/bench_import.py [--gguf-mib 512]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for extra in (ROOT, ROOT / "plugins", HERE):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from bench_download import BIN, SMOLLM2, gguf_file, llama_repo, only_artifact, same_weights, timed  # noqa: E402

DEFAULTS = {"gguf_mib": 512}


def environment(home: Path) -> dict[str, str]:
    return {**os.environ, "WORKBENCH_HOME": str(home), "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT), os.environ.get("PYTHONPATH", "")])}


def sha256_seconds(path: Path) -> float:
    t0 = time.perf_counter()
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 << 20):
            digest.update(chunk)
    return time.perf_counter() - t0


def rows(gguf_mib: int = DEFAULTS["gguf_mib"]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        work = Path(tmp)
        src = work / "SmolLM2-135M"  # the name LitGPT's converter looks the architecture up by
        src.mkdir()
        for name, data in llama_repo(SMOLLM2, work).items():
            (src / name).write_bytes(data)
        model_mb = (src / "model.safetensors").stat().st_size / 1e6
        env = environment(work / "ws-hf")
        ours = timed([sys.executable, "-m", "workbench.cli", "models", "import", str(src)], env)
        peer_dir = work / "peer" / "SmolLM2-135M"
        shutil.copytree(src, peer_dir)
        peer = timed([str(BIN / "litgpt"), "convert_to_litgpt", str(peer_dir)], env)
        identical = same_weights(only_artifact(env), peer_dir)
        out.append({"figure": f"import HF dir, SmolLM2-135M shape ({model_mb:.0f} MB bf16), s; same tensors: "
                              f"{'yes' if identical else 'NO'}",
                    "ours": ours, "peer": peer, "ratio": ours / peer,
                    "target": "≤ 1.5 (peer: litgpt convert_to_litgpt)"})

        gguf = gguf_file(work / "bench.gguf", gguf_mib)
        env = environment(work / "ws-gguf")
        ours = timed([sys.executable, "-m", "workbench.cli", "models", "import", str(gguf)], env)
        peer = timed(["cp", str(gguf), str(work / "copy.gguf")], env)
        budget = peer + sha256_seconds(gguf) + 2.0
        out.append({"figure": f"import GGUF ({gguf_mib} MiB, hard link + sha256), s", "ours": ours, "peer": peer,
                    "ratio": ours / peer, "target": f"≤ cp + sha256 + 2 s = {budget:.2f} s "
                                                    f"({'met' if ours <= budget else 'MISSED'})"})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf-mib", type=int, default=DEFAULTS["gguf_mib"])
    args = ap.parse_args()
    print(f"{'figure':<78} {'ours':>8} {'peer':>8} {'ratio':>6}  target")
    for r in rows(args.gguf_mib):
        print(f"{r['figure']:<78} {r['ours']:>8.2f} {r['peer']:>8.2f} {r['ratio']:>6.2f}  {r['target']}")


if __name__ == "__main__":
    main()
