"""Hugging Face checkpoint → LitGPT checkpoint, with LitGPT's own weight-copy functions.

LitGPT's `convert_hf_checkpoint` only knows models in its name list, so the `Config` is built
from the repository's `config.json` here; the tensors are then renamed and fused exactly as
LitGPT's converter does it (`copy_weights_hf_llama`, `copy_weights_qwen_2_5`,
`copy_weights_qwen_3`). Safetensors are read with safetensors; `.bin` files only with
`torch.load(weights_only=True)`. Code shipped in a repository is never imported.
"""

from __future__ import annotations

import fnmatch
import json
import pickle
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.errors import UserError
from workbench.prompts import PromptStyle, find_chat_template, get_style

if TYPE_CHECKING:
    import torch
    from litgpt import Config

    from workbench.context import Context
    from workbench.store import Artifact
    from workbench_download.fetch import Downloader
    from workbench_download.stage import Options

#: Hugging Face architecture → (family, LitGPT copy function in litgpt.scripts.convert_hf_checkpoint)
ARCHITECTURES = {
    "LlamaForCausalLM": ("llama", "copy_weights_hf_llama"),
    "MistralForCausalLM": ("mistral", "copy_weights_hf_llama"),
    "Qwen2ForCausalLM": ("qwen2", "copy_weights_qwen_2_5"),
    "Qwen3ForCausalLM": ("qwen3", "copy_weights_qwen_3"),
}
CONFIG_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
    "special_tokens_map.json", "chat_template.jinja", "chat_template.json",
)
DOC_PATTERNS = ("README.md", "LICENSE*", "LICENCE*", "NOTICE*", "USE_POLICY.md")
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
_BIN_WEIGHTS = re.compile(r"^pytorch_model(-\d+-of-\d+)?\.bin$")
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


# file selection -------------------------------------------------------------------------------


def default_selection(files: list[str]) -> list[str]:
    """Config, tokenizer, licence and the preferred weights (safetensors, else .bin)."""
    top = [f for f in files if "/" not in f]
    keep = [f for f in top if f in CONFIG_FILES or any(fnmatch.fnmatchcase(f, p) for p in DOC_PATTERNS)]
    # Mistral repositories also carry `consolidated.safetensors` in Mistral's own layout.
    safetensors = [f for f in top if f.endswith(".safetensors") and not f.startswith("consolidated")]
    if safetensors:
        return keep + ([SAFETENSORS_INDEX] if SAFETENSORS_INDEX in top else []) + safetensors
    bins = [f for f in top if _BIN_WEIGHTS.match(f)]
    return keep + ([BIN_INDEX] if BIN_INDEX in top else []) + bins


def is_weights(path: str) -> bool:
    return path.endswith((".safetensors", ".bin", ".pth", ".pt"))


def weight_files(local: dict[str, Path]) -> tuple[str, list[str]]:
    """(format, repository paths) of the weights to convert among the downloaded files."""
    for index, fmt in ((SAFETENSORS_INDEX, "safetensors"), (BIN_INDEX, "bin")):
        if index in local:
            shards = sorted(set(json.loads(local[index].read_text())["weight_map"].values()))
            missing = [s for s in shards if s not in local]
            if missing:
                raise UserError(f"{index} lists {', '.join(missing)}, which were not downloaded; "
                                "drop the --include/--exclude pattern that leaves them out")
            return fmt, shards
    safetensors = sorted(p for p in local if p.endswith(".safetensors") and "/" not in p
                         and not p.startswith("consolidated"))
    if safetensors:
        return "safetensors", safetensors
    bins = sorted(p for p in local if _BIN_WEIGHTS.match(p))
    return ("bin", bins) if bins else ("", [])


# config ---------------------------------------------------------------------------------------


def config_kwargs(hf: dict[str, Any], repo_id: str) -> tuple[dict[str, Any], str, str]:
    """(LitGPT Config fields, family, architecture) from a Hugging Face `config.json`.

    Plain Python, so an unsupported model is refused before torch and LitGPT are even imported.
    """
    arch = (hf.get("architectures") or [hf.get("model_type", "unknown")])[0]
    if arch not in ARCHITECTURES:
        supported = ", ".join(ARCHITECTURES)
        raise UserError(
            f"{repo_id} is a {arch} model, which workbench cannot convert to a LitGPT checkpoint "
            f"(supported: {supported}); code in the repository is never run. For chat, look for a GGUF "
            "version of the model and download it with --gguf-file"
        )
    family = ARCHITECTURES[arch][0]
    if hf.get("hidden_act", "silu") != "silu":
        raise UserError(f"{repo_id}: hidden_act '{hf['hidden_act']}' is not the SiLU a {arch} needs in LitGPT")
    if family in ("llama", "mistral", "qwen3") and (hf.get("attention_bias") or hf.get("mlp_bias")):
        raise UserError(f"{repo_id}: {arch} with attention or MLP biases has no LitGPT conversion")
    missing = [k for k in ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size",
                           "intermediate_size") if k not in hf]
    if missing:
        raise UserError(f"config.json of {repo_id} lacks {', '.join(missing)}, which a {arch} needs")
    n_embd, n_head = hf["hidden_size"], hf["num_attention_heads"]
    vocab = hf["vocab_size"]
    owner, _, name = repo_id.rpartition("/")
    kwargs: dict[str, Any] = dict(
        # LitGPT switches RMSNorm to Gemma's unit offset when "Gemma" is in the name.
        name=name.replace("Gemma", "gemma"),
        hf_config={"org": owner, "name": name},
        block_size=hf.get("max_position_embeddings", 4096),
        n_layer=hf["num_hidden_layers"],
        n_embd=n_embd,
        n_head=n_head,
        n_query_groups=hf.get("num_key_value_heads") or n_head,
        head_size=hf.get("head_dim") or n_embd // n_head,
        vocab_size=vocab,
        padded_vocab_size=vocab,  # the embedding's rows, which is what HF's vocab_size counts
        intermediate_size=hf["intermediate_size"],
        rotary_percentage=1.0,
        parallel_residual=False,
        bias=False,
        attn_bias=family == "qwen2",
        norm_qk=family == "qwen3",
        norm_class_name="RMSNorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        mlp_class_name="LLaMAMLP",
        rope_base=_number(hf.get("rope_theta", 10000)),
    )
    window = hf.get("sliding_window")
    if window and (family == "mistral" or hf.get("use_sliding_window")):
        if family != "mistral":
            raise UserError(f"{repo_id}: sliding-window attention on some layers only has no LitGPT conversion")
        kwargs["sliding_window_size"] = window
    kwargs.update(_rope_scaling(hf.get("rope_scaling"), repo_id))
    return kwargs, family, arch


def litgpt_config(hf: dict[str, Any], repo_id: str) -> tuple[Config, str, str]:
    """(LitGPT Config, family, architecture) from a Hugging Face `config.json`."""
    from litgpt import Config

    kwargs, family, arch = config_kwargs(hf, repo_id)
    try:
        return Config(**kwargs), family, arch
    except (AssertionError, ValueError, TypeError) as exc:
        raise UserError(f"config.json of {repo_id} describes no valid {arch}: {exc or type(exc).__name__}") from None


def _rope_scaling(scaling: dict[str, Any] | None, repo_id: str) -> dict[str, Any]:
    if not scaling:
        return {}
    kind = scaling.get("rope_type") or scaling.get("type") or "default"
    original = scaling.get("original_max_position_embeddings")
    if kind == "default":
        return {}
    if kind == "llama3":
        return {"rope_adjustments": {
            "factor": scaling["factor"], "low_freq_factor": scaling["low_freq_factor"],
            "high_freq_factor": scaling["high_freq_factor"], "original_max_seq_len": original}}
    if kind == "yarn":
        adj = {"factor": scaling["factor"], "beta_fast": scaling.get("beta_fast", 32.0),
               "beta_slow": scaling.get("beta_slow", 1.0), "original_max_seq_len": original}
        adj.update({k: scaling[k] for k in ("mscale", "mscale_all_dim") if k in scaling})
        return {"rope_adjustments": adj}
    if kind == "linear" and float(scaling["factor"]).is_integer():
        return {"rope_condense_ratio": int(scaling["factor"])}
    raise UserError(f"{repo_id}: rope scaling '{kind}' {scaling} has no LitGPT equivalent")


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


# weights --------------------------------------------------------------------------------------


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of one weights file; pickled files only through torch's weights-only loader."""
    import torch

    from workbench.weightfiles import check_pth

    if path.suffix == ".safetensors":
        from workbench.ml.checkpoint import load_safetensors

        return load_safetensors(path, path.name)
    check_pth(path, path.name)
    try:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            sd = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as exc:
        # torch names the refused callable on a line with "GLOBAL"; other failures are damage.
        detail = next((ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln), None)
        if detail is None:
            raise UserError(f"{path.name} is not a readable PyTorch checkpoint (the weights-only unpickler "
                            "stopped at data it does not know)") from None
        raise UserError(
            f"{path.name} holds pickled Python objects besides tensors, and workbench loads .bin weights only "
            f"with torch.load(weights_only=True), never unpickling code ({detail[:160]}); use a repository "
            "that publishes safetensors"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise UserError(f"{path.name} is not a readable PyTorch checkpoint ({type(exc).__name__}: "
                        f"{str(exc)[:160]})") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{path.name} is not a plain state dict of tensors")
    return sd


def convert_weights(config: Config, family: str, arch: str, files: list[Path], dtype: torch.dtype | None,
                    ctx: Context) -> dict[str, torch.Tensor]:
    """Rename and fuse every tensor with LitGPT's copy function for this architecture."""
    from litgpt.scripts import convert_hf_checkpoint as lit

    copy = getattr(lit, ARCHITECTURES[arch][1])
    qkv: dict[int, Any] = {}
    sd: dict[str, torch.Tensor] = {}
    for i, path in enumerate(files):
        ctx.check_cancelled()
        hf_weights = load_weights(path)
        try:
            copy(config, qkv, sd, hf_weights, dtype=dtype)
        except KeyError as exc:
            raise UserError(f"tensor {exc.args[0]} in {path.name} has no place in a LitGPT {family} model; "
                            "the checkpoint does not match its config.json") from None
        ctx.progress(i + 1, len(files), unit="file", desc=f"converting {path.name}")
    leftover = [f"layer {layer}" for layer, parts in qkv.items() if any(parts.values())]
    if leftover:
        raise UserError(f"query/key/value weights are incomplete for {', '.join(leftover[:3])}; "
                        "a weights shard is missing")
    return sd


def check_fits(config: Config, sd: dict[str, torch.Tensor], repo_id: str) -> int:
    """The tensors must fill a LitGPT GPT of this config exactly; returns the parameter count."""
    import torch
    from litgpt import GPT

    with torch.device("meta"):
        model = GPT(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in sd.items()}
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    if missing or extra or wrong:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}" if extra
                  else f"{wrong[0]} is {got[wrong[0]]}, config says {expected[wrong[0]]}")
        raise UserError(f"the weights of {repo_id} do not match its config.json: {detail}")
    # Tied embeddings are one tensor under two names: count it once, as model cards do.
    return sum(t.numel() for t in {id(t): t for t in sd.values()}.values())


# tokenizer and prompt style ---------------------------------------------------------------------


def prompt_style(local: dict[str, Path], ctx: Context, repo_id: str = "the repository") -> tuple[PromptStyle, str]:
    """The tokenizer's own chat template when it has one, else ChatML (the house default).

    The template is checked in the sandbox first: one that reaches outside it is refused.
    """
    tc = json.loads(local["tokenizer_config.json"].read_text()) if "tokenizer_config.json" in local else {}
    eos = tc.get("eos_token")
    eos = (eos.get("content") if isinstance(eos, dict) else eos) or ""
    found = find_chat_template(local)
    if found is not None:
        template, source = found
        origin = f"model {repo_id} ({source} of {repo_id})"
        return PromptStyle("base", template, eos_token=eos, origin=origin).check(), eos
    ctx.log("the tokenizer has no chat template; using ChatML, the prompt style finetuning teaches")
    return get_style("chatml", eos_token=eos or "<|endoftext|>"), eos


# the whole path -------------------------------------------------------------------------------


def convert_repository(dl: Downloader, options: Options, ctx: Context) -> Artifact:
    """Fetch what a LitGPT checkpoint needs, convert it, and register a `model` artifact."""
    all_files = dl.candidates()
    wanted = dl.wanted(default_selection(all_files))
    if not any(is_weights(f) for f in wanted):
        ggufs = sorted(f for f in all_files if f.endswith(".gguf"))
        if ggufs:
            shown = ", ".join(ggufs[:6]) + (", …" if len(ggufs) > 6 else "")
            raise UserError(f"{dl.repo_id} holds GGUF files only; keep one with --gguf-file PATTERN, for "
                            f"example --gguf-file Q4_K_M (files: {shown})")
        raise UserError(f"{dl.repo_id} at {dl.listing.commit[:12]} has no weights workbench can use "
                        "(safetensors, pytorch_model*.bin or, with --gguf-file, GGUF)")
    if "config.json" not in wanted:
        hint = " (it is a PEFT adapter: download its base model)" if "adapter_config.json" in all_files else ""
        raise UserError(f"{dl.repo_id} has no config.json{hint}, so its architecture is unknown")

    # Small files first: an unsupported architecture is refused before gigabytes move.
    small = [f for f in wanted if not is_weights(f)]
    dl.fetch(small)
    hf = json.loads(dl.local["config.json"].read_text())
    config_kwargs(hf, dl.repo_id)  # refuse what cannot be converted before importing torch
    if not any(t in dl.local for t in ("tokenizer.json", "tokenizer.model")):
        raise UserError(f"{dl.repo_id} has no tokenizer.json or tokenizer.model; LitGPT needs one of them")
    style, eos = prompt_style(dl.local, ctx, dl.repo_id)  # a hostile chat template is refused here

    weights = [f for f in wanted if is_weights(f)]
    stored = str(hf.get("torch_dtype") or hf.get("dtype") or "float32")
    ratio = _DTYPE_BYTES.get(options.dtype or stored, 4) / _DTYPE_BYTES.get(stored, 4)
    weight_bytes = sum(dl.listing.files[f].size or 0 for f in weights)
    # model.safetensors + lit_model.pth: the weights twice, in the dtype kept.
    dl.preflight(small + weights, int(2 * weight_bytes * ratio), "conversion")
    dl.fetch(weights)
    fmt, shards = weight_files(dl.local)
    if not shards:
        raise UserError(f"no weights to convert among the downloaded files of {dl.repo_id}")
    files = dl.verify(sorted(dl.local))

    import torch

    config, family, arch = litgpt_config(hf, dl.repo_id)
    ctx.log(f"converting {len(shards)} {fmt} file(s) of a {arch} to a LitGPT checkpoint")
    dtype = getattr(torch, options.dtype) if options.dtype else None
    sd = convert_weights(config, family, arch, [dl.local[s] for s in shards], dtype, ctx)
    n_params = check_fits(config, sd, dl.repo_id)

    from workbench.ml.checkpoint import save_model_dir

    staged = ctx.staging_dir("model")
    meta = {"prompt_style": style.to_json(), "family": family, "eos_token": eos,
            "hf_repo_id": dl.repo_id, "hf_revision": dl.listing.commit, "architecture": arch}
    # The tokenizer files are copied out of the cache (symlinks followed): the checkpoint must
    # outlive a cleared Hugging Face cache.
    try:
        save_model_dir(staged, sd, config, tokenizer_dir=dl.snapshot_dir, meta=meta)
        del sd
        _check_tokenizer(staged, dl.repo_id)
        for path, local in dl.local.items():
            if "/" not in path and any(fnmatch.fnmatchcase(path, p) for p in DOC_PATTERNS):
                shutil.copyfile(local, staged / path)  # the licence travels with the weights
        art = ctx.register(
            "model", staged, name=options.name or dl.repo_id,
            metadata={**dl.source_metadata(files), "family": family, "architecture": arch,
                      "weights_format": fmt, "dtype": options.dtype or stored, "params": n_params,
                      "prompt_style": style.name},
            metrics={"params": n_params},
        )
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)  # never leave half a checkpoint behind
        raise
    ctx.log(f"registered model {art.id} ({n_params:,} parameters) from {dl.repo_id}@{dl.listing.commit[:12]}")
    return art


def _check_tokenizer(model_dir: Path, repo_id: str) -> None:
    """LitGPT must be able to load the tokenizer, or every later stage fails."""
    from litgpt import Tokenizer

    try:
        Tokenizer(model_dir)
    except Exception as exc:  # LitGPT raises several kinds for unusable tokenizers
        raise UserError(f"the tokenizer of {repo_id} cannot be loaded by LitGPT: {type(exc).__name__}: {exc}") from None
