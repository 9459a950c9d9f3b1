"""Device and precision choice, memory preflight, and the facts `workbench doctor` reports.

torch is imported inside the functions, never at module load.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata as md
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench import locations
from workbench.errors import UserError

GiB = 1024**3
CORE_PACKAGES = (
    "torch", "litgpt", "lightning", "textual", "llama-cpp-python", "gguf", "tokenizers",
    "safetensors", "huggingface-hub", "platformdirs",
)


def choose_device(preference: str = "auto") -> str:
    import torch

    if preference != "auto":
        if preference == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda was asked for, but torch sees no CUDA GPU")
        if preference == "mps" and not torch.backends.mps.is_available():
            raise UserError("--device mps was asked for, but MPS is not available")
        return preference
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def choose_precision(device: str, training: bool = True) -> str:
    """Lightning precision strings: bf16 where the hardware does it natively, fp32 on CPU."""
    import torch

    if device == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16-mixed" if training else "bf16-true"
        return "16-mixed" if training else "16-true"
    if device == "mps":
        return "16-mixed" if training else "16-true"
    # CPUs without AMX run bf16 matmuls slower than fp32; fp32 is also the exact reference.
    return "32-true"


def available_memory(device: str) -> int:
    """Bytes the run can use on `device`."""
    if device == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info()
        return int(free)
    if device == "mps":
        import torch

        return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
    return host_available_memory()


def host_available_memory() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * GiB


@functools.cache
def physical_cores() -> int:
    """Physical cores this process may run on. Hyperthread siblings count once: two threads on one
    core share its vector units, and llama.cpp and torch both default to physical cores."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        try:
            cores.add(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


class CpuWatch:
    """How much CPU other processes used on this process's CPUs between two looks (Linux).

    It reads the kernel's per-CPU counters (/proc/stat) and takes away this process's own CPU
    time, so what is left is other work: a training run, a build, a browser. Time the hypervisor
    stole is not counted; nothing here can give it back.
    """

    #: A shorter window is too few clock ticks (10 ms each) to tell one busy core from none.
    MIN_WINDOW_S = 0.25

    def __init__(self) -> None:
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
        self.cpus = {f"cpu{i}" for i in cpus}
        self.tick_s = 1 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01
        self._last = self._sample()
        self.works = self._last is not None

    def _sample(self) -> tuple[float, float, float] | None:
        """(monotonic time, busy CPU-seconds of our CPUs, this process's CPU-seconds)."""
        try:
            lines = Path("/proc/stat").read_text().splitlines()
        except OSError:
            return None
        busy = 0
        for line in lines:
            name, _, rest = line.partition(" ")
            if name in self.cpus:
                # user nice system idle iowait irq softirq steal ...
                user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in rest.split()[:7])
                busy += user + nice + system + irq + softirq
        return time.monotonic(), busy * self.tick_s, time.process_time()

    def others_busy(self) -> float | None:
        """Cores' worth of other work since the last answer; None if unknown or too soon to tell
        (the window then runs on to the next call)."""
        now, last = self._sample(), self._last
        if now is None or last is None or now[0] - last[0] < self.MIN_WINDOW_S:
            return None
        self._last = now
        return max(0.0, ((now[1] - last[1]) - (now[2] - last[2])) / (now[0] - last[0]))

    def free_cores(self) -> int | None:
        """Physical cores other processes left idle since the last answer (at least one); None
        if unknown or too soon to tell."""
        busy = self.others_busy()
        return None if busy is None else max(1, physical_cores() - round(busy))


class FreeCores:
    """The physical cores other processes left idle since the last look, at most `ceiling`
    (default: every core).

    Worker threads of llama.cpp and torch wait for each other after every operation, so one that
    shares its core with another busy process stalls them all (on 2 cores beside one busy
    process, 2 threads decoded 6-10x slower than 1): a core someone else uses is best left alone.

    The first look covers the time since the instance was made; each later one the time since
    the one before. A look too soon to tell keeps the last answer (at first the ceiling, or, with
    `settle`, it waits out the window). Where nothing can be seen (not Linux): the ceiling.
    """

    def __init__(self, ceiling: int | None = None, *, settle: bool = False):
        self.watch = CpuWatch()
        self._ceiling = ceiling
        self.settle = settle
        self.last: int | None = None

    @property
    def ceiling(self) -> int:
        return self._ceiling or physical_cores()

    def __call__(self) -> int:
        free = self.watch.free_cores()
        if free is None and self.last is None and self.settle and self.watch.works:
            time.sleep(CpuWatch.MIN_WINDOW_S)
            free = self.watch.free_cores()
        if free is not None:
            self.last = min(self.ceiling, free)
        return self.last or self.ceiling


#: For jobs that pick their threads once: one watch per process from import, so a job's first
#: look covers its own start-up (imports, loading) with no wait.
free_cores = FreeCores(settle=True)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Torch on `n` CPU threads inside the block (unchanged for None), as before after it."""
    import torch

    previous = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class MemoryEstimate:
    weights: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    def table(self) -> list[tuple[str, str]]:
        return [(k, fmt_bytes(getattr(self, k))) for k in ("weights", "gradients", "optimizer", "activations")] + [
            ("total", fmt_bytes(self.total))
        ]


def mlp_shape(config: Any) -> dict[str, Any]:
    """What `estimate_training_memory` needs to know of a LitGPT config's MLP."""
    return {"intermediate_size": getattr(config, "intermediate_size", None),
            "gated_mlp": getattr(config, "mlp_class_name", "") in ("LLaMAMLP", "GemmaMLP", "LLaMAMoE")}


def _bytes_per_param(precision: str) -> int:
    if precision.startswith(("bf16-true", "16-true")):
        return 2
    if precision.startswith("nf4") or precision == "4bit":
        return 1  # 4-bit weights plus quantization constants, rounded up
    return 4


def estimate_training_memory(
    *,
    n_params: int,
    trainable_params: int,
    batch_size: int,
    seq_len: int,
    n_layer: int,
    n_embd: int,
    n_head: int,
    vocab_size: int,
    precision: str,
    quantized_base: bool = False,
    activation_checkpointing: bool = False,
    intermediate_size: int | None = None,
    gated_mlp: bool = False,
) -> MemoryEstimate:
    """Weights + gradients + AdamW state + activations.

    Activations follow the per-layer count of Korthikanti et al. (2022): about
    (34·d + 5·s) bytes per token per layer at 16 bits, doubled for fp32; plus logits and their
    gradient. Attention through SDPA keeps the s² term small, so it is counted once, not per head.
    A gated MLP (Llama's SwiGLU) keeps four tensors of the intermediate width and LitGPT's RMSNorm
    keeps its input in fp32, so there the count is 25·d + 8·i + 5·s (fitted to the peaks measured
    on a GPU in bf16-mixed, tests/cuda). In mixed precision the parameters stay fp32 and autocast
    keeps a 16-bit copy of each weight for the backward pass.
    """
    mixed = "mixed" in precision
    w_bytes = 1 if quantized_base else _bytes_per_param(precision)
    autocast_copies = n_params * 2 if mixed and not quantized_base else 0
    weights = n_params * w_bytes + autocast_copies
    gradients = trainable_params * (4 if mixed or w_bytes == 4 else w_bytes)
    optimizer = trainable_params * 8
    act_scale = 1.0 if ("16" in precision) else 2.0
    tokens = batch_size * seq_len
    if gated_mlp and intermediate_size:
        per_token = 25 * n_embd + 8 * intermediate_size + 5 * seq_len
    else:
        per_token = 34 * n_embd + 5 * seq_len
    per_layer = tokens * per_token * act_scale
    layers = 2 if activation_checkpointing else n_layer
    logits = tokens * vocab_size * 4 * 2
    return MemoryEstimate(weights, gradients, optimizer, int(per_layer * layers + logits))


def preflight(estimate: MemoryEstimate, device: str, *, force: bool = False, what: str = "this run") -> dict[str, Any]:
    """Refuse a run that cannot fit, before it starts. Returns the figures for the run's log."""
    available = available_memory(device)
    need = int(estimate.total * 1.1)  # allocator fragmentation and framework overhead
    figures = {"estimate_bytes": estimate.total, "available_bytes": available, "device": device}
    if need > available and not force:
        parts = ", ".join(f"{k} {v}" for k, v in estimate.table()[:-1])
        raise UserError(
            f"{what} needs about {fmt_bytes(need)} on {device} ({parts}) but only "
            f"{fmt_bytes(available)} is available; lower --batch-size or --max-seq-length, pick a "
            "smaller model, or pass --force to try anyway"
        )
    return figures


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def package_versions() -> dict[str, str]:
    out = {}
    for name in CORE_PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def doctor() -> dict[str, Any]:
    """Everything a user (or a bug report) needs to know about this machine's setup."""
    report: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "workspace": str(locations.home()),
        "packages": package_versions(),
    }
    try:
        import torch

        device = choose_device()
        info: dict[str, Any] = {"torch": torch.__version__, "device": device,
                                "precision": choose_precision(device), "cpu_cores": os.cpu_count(),
                                "physical_cores": physical_cores(),
                                "threads": torch.get_num_threads()}
        if device == "cuda":
            props = torch.cuda.get_device_properties(0)
            info.update(gpu=props.name, gpu_count=torch.cuda.device_count(),
                        gpu_memory=fmt_bytes(props.total_memory), cuda=torch.version.cuda)
        elif device == "mps":
            info.update(gpu="Apple MPS", gpu_memory=fmt_bytes(torch.mps.recommended_max_memory()))
        info["host_memory_available"] = fmt_bytes(host_available_memory())
        report["torch"] = info
    except Exception as exc:
        report["torch"] = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        import llama_cpp

        features = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
        report["llama_cpp"] = {"version": llama_cpp.__version__, "system_info": features}
    except Exception as exc:
        report["llama_cpp"] = {"error": f"{type(exc).__name__}: {exc}"}
    home = locations.home()
    probe = home if home.exists() else home.parent
    while not probe.exists():
        probe = probe.parent
    report["disk_free"] = fmt_bytes(shutil.disk_usage(probe).free)
    return report
