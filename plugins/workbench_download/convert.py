"""Hugging Face checkpoint → LitGPT checkpoint, with LitGPT's own weight-copy functions.

LitGPT's `convert_hf_checkpoint` only knows models in its name list, so the `Config` is built
from the repository's `config.json` by the model's family module (`workbench.families`), which
also names the LitGPT function that renames and fuses the tensors. Safetensors are read with
safetensors; `.bin` files only with `torch.load(weights_only=True)`. Code shipped in a repository
is never imported. `convert_repository` works on a download; `workbench models import` hands a local
folder to `convert_local`.
"""

from __future__ import annotations

import fnmatch
import functools
import inspect
import json
import pickle
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.errors import UserError
from workbench.families import HFConfig, by_name, for_architecture
from workbench.prompts import PromptStyle, find_chat_template, get_style

if TYPE_CHECKING:
    import torch
    from litgpt import Config

    from workbench.context import Context
    from workbench.store import Artifact
    from workbench_download.fetch import Downloader
    from workbench_download.stage import Options

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

    The family module maps the fields; any field that changes the math and was not read is
    refused by name. Plain Python, so an unsupported model is refused before torch and LitGPT
    are even imported.
    """
    cfg = HFConfig(hf, repo_id)
    family = for_architecture(cfg.architecture, repo_id)
    fields = family.litgpt_fields(cfg)
    cfg.get("tie_word_embeddings", family.tie_default)  # applied to the weights in convert_weights
    unread = cfg.unread_math()
    if unread:
        raise cfg.refuse(f"config.json sets {', '.join(unread)}, which the {family.name} family does not read")
    owner, _, name = repo_id.rpartition("/")
    # LitGPT switches RMSNorm to Gemma's unit offset when "Gemma" is in the name: exactly when
    # the family stores its norms that way (its name_prefix says so).
    lit_name = family.name_prefix + name.replace("Gemma", "gemma")
    kwargs = {"name": lit_name, "hf_config": {"org": owner, "name": name}, **fields}
    return kwargs, family.name, cfg.architecture


def tied_embeddings(hf: dict[str, Any], family: str) -> bool:
    """Whether the output layer is the embedding (transformers' default for the family when unset)."""
    value = hf.get("tie_word_embeddings")
    return by_name(family).tie_default if value is None else bool(value)


def litgpt_config(hf: dict[str, Any], repo_id: str) -> tuple[Config, str, str]:
    """(LitGPT Config, family, architecture) from a Hugging Face `config.json`."""
    from litgpt import Config

    kwargs, family, arch = config_kwargs(hf, repo_id)
    try:
        return Config(**kwargs), family, arch
    except (AssertionError, ValueError, TypeError) as exc:
        raise UserError(f"config.json of {repo_id} describes no valid {arch}: {exc or type(exc).__name__}") from None


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
                    ctx: Context, *, tied: bool = False) -> dict[str, torch.Tensor]:
    """Rename and fuse every tensor with LitGPT's copy function for this family.

    `tied`: the output layer is the embedding, as transformers ties it, whatever the files hold.
    """
    from litgpt.scripts import convert_hf_checkpoint as lit

    copy = getattr(lit, by_name(family).copy_weights)
    params = list(inspect.signature(copy).parameters)
    if params[0] == "config":
        copy = functools.partial(copy, config)
    elif "config" in params:  # Gemma 3's copy takes it last, by keyword; Gemma 2's not at all
        copy = functools.partial(copy, config=config)
    qkv: dict[int, Any] = {}
    sd: dict[str, torch.Tensor] = {}
    has_head = False
    for i, path in enumerate(files):
        ctx.check_cancelled()
        hf_weights = load_weights(path)
        has_head = has_head or "lm_head.weight" in hf_weights
        try:
            copy(qkv, sd, hf_weights, dtype=dtype)
        except KeyError as exc:
            raise UserError(f"tensor {exc.args[0]} in {path.name} has no place in a LitGPT {family} model; "
                            "the checkpoint does not match its config.json") from None
        ctx.progress(i + 1, len(files), unit="file", desc=f"converting {path.name}")
    # copy_weights_phi also files a fused qkv_proj here (its name contains "v_proj"), after placing it.
    split = {"q_proj", "k_proj", "v_proj"}
    leftover = [f"layer {layer}" for layer, parts in qkv.items() if any(split & set(p) for p in parts.values())]
    if leftover:
        raise UserError(f"query/key/value weights are incomplete for {', '.join(leftover[:3])}; "
                        "a weights shard is missing")
    if tied and "transformer.wte.weight" in sd:
        sd["lm_head.weight"] = sd["transformer.wte.weight"]
    elif not tied and not has_head:
        # LitGPT's copy functions would tie silently; transformers would start from random weights.
        raise UserError("config.json says tie_word_embeddings=false but the weights have no lm_head.weight")
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
    prompt_style(dl.local, ctx, dl.repo_id)  # a hostile chat template is refused before the weights move

    weights = [f for f in wanted if is_weights(f)]
    stored = str(hf.get("torch_dtype") or hf.get("dtype") or "float32")
    ratio = _DTYPE_BYTES.get(options.dtype or stored, 4) / _DTYPE_BYTES.get(stored, 4)
    weight_bytes = sum(dl.listing.files[f].size or 0 for f in weights)
    # model.safetensors + lit_model.pth: the weights twice, in the dtype kept.
    dl.preflight(small + weights, int(2 * weight_bytes * ratio), "conversion")
    dl.fetch(weights)
    if not weight_files(dl.local)[1]:
        raise UserError(f"no weights to convert among the downloaded files of {dl.repo_id}")
    files = dl.verify(sorted(dl.local))
    return convert_local(
        dl.local, ctx, source=dl.repo_id, tokenizer_dir=dl.snapshot_dir, name=options.name or dl.repo_id,
        dtype=options.dtype, metadata=dl.source_metadata(files),
        meta={"hf_repo_id": dl.repo_id, "hf_revision": dl.listing.commit},
        note=f"{dl.repo_id}@{dl.listing.commit[:12]}",
    )


def convert_local(local: dict[str, Path], ctx: Context, *, source: str, tokenizer_dir: Path, name: str,
                  dtype: str | None = None, metadata: dict[str, Any] | None = None,
                  meta: dict[str, Any] | None = None, note: str | None = None) -> Artifact:
    """Convert files already on disk (repository path → local path) and register a `model` artifact.

    `source` names the model in messages; `metadata` goes to the artifact, `meta` to the
    checkpoint's workbench.json.
    """
    fmt, shards = weight_files(local)
    if not shards:
        raise UserError(f"no weights to convert among the files of {source}")
    hf = json.loads(local["config.json"].read_text())
    stored = str(hf.get("torch_dtype") or hf.get("dtype") or "float32")

    import torch

    config, family, arch = litgpt_config(hf, source)
    ctx.log(f"converting {len(shards)} {fmt} file(s) of a {arch} to a LitGPT checkpoint")
    torch_dtype = getattr(torch, dtype) if dtype else None
    sd = convert_weights(config, family, arch, [local[s] for s in shards], torch_dtype, ctx,
                         tied=tied_embeddings(hf, family))
    n_params = check_fits(config, sd, source)

    from workbench.ml.checkpoint import save_model_dir

    style, eos = prompt_style(local, ctx, source)
    staged = ctx.staging_dir("model")
    ckpt_meta = {"prompt_style": style.to_json(), "family": family, "eos_token": eos, **(meta or {}),
                 "architecture": arch}
    # The tokenizer files are copied out of the cache (symlinks followed): the checkpoint must
    # outlive a cleared Hugging Face cache.
    try:
        save_model_dir(staged, sd, config, tokenizer_dir=tokenizer_dir, meta=ckpt_meta)
        del sd
        _check_tokenizer(staged, source)
        for path, file in local.items():
            if "/" not in path and any(fnmatch.fnmatchcase(path, p) for p in DOC_PATTERNS):
                shutil.copyfile(file, staged / path)  # the licence travels with the weights
        art = ctx.register(
            "model", staged, name=name,
            metadata={**(metadata or {}), "family": family, "architecture": arch,
                      "weights_format": fmt, "dtype": dtype or stored, "params": n_params,
                      "prompt_style": style.name},
            metrics={"params": n_params},
        )
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)  # never leave half a checkpoint behind
        raise
    ctx.log(f"registered model {art.id} ({n_params:,} parameters) from {note or source}")
    return art


def _check_tokenizer(model_dir: Path, repo_id: str) -> None:
    """LitGPT must be able to load the tokenizer, or every later stage fails."""
    from litgpt import Tokenizer

    try:
        Tokenizer(model_dir)
    except Exception as exc:  # LitGPT raises several kinds for unusable tokenizers
        raise UserError(f"the tokenizer of {repo_id} cannot be loaded by LitGPT: {type(exc).__name__}: {exc}") from None
