"""The two engines a model is measured with: LitGPT through torch, and llama.cpp.

Both answer the same two questions on the same token ids, so their figures compare directly:

- `logprobs([(ids, start), ...])`: log p(ids[t] | ids[:t]) for t = start … len(ids) - 1;
- `greedy(prompt_ids, max_new, stop_ids)`: the greedy continuation, token by token.

llama.cpp runs with an F32 KV cache (`type_k=0, type_v=0`): its default F16 cache would move
an F32 file's scores away from the checkpoint's by llama.cpp's own rounding, not the model's.
Log-softmax is taken in float64 on both sides, by the same function.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workbench.errors import UserError
from workbench.hardware import free_cores, torch_threads
from workbench.prompts import template_error

#: Longest sequence scored at once unless `--context` says otherwise.
DEFAULT_CONTEXT = 1024
#: Logit elements (batch × positions × vocabulary) held at once by the torch backend.
MAX_LOGIT_ELEMENTS = 1 << 27
#: Logit elements turned into float64 log-probabilities at once.
LOGSOFTMAX_ELEMENTS = 1 << 22
_DTYPES = {"bf16": torch.bfloat16, "16": torch.float16, "32": torch.float32, "64": torch.float64}

Item = tuple[list[int], int]


def target_logprobs(logits: torch.Tensor, targets: Sequence[int]) -> np.ndarray:
    """log p(target) for each row of `logits`, the log-softmax taken in float64.

    Both engines score through this one function, so their figures differ only by their logits.
    Rows go a few at a time: a float64 copy of a whole window's rows over a large vocabulary
    would take gigabytes.
    """
    index = torch.as_tensor(targets, dtype=torch.long, device=logits.device).unsqueeze(-1)
    rows = max(1, LOGSOFTMAX_ELEMENTS // max(1, logits.shape[-1]))
    out = [part.double().log_softmax(-1).gather(-1, pick).squeeze(-1)
           for part, pick in zip(logits.split(rows), index.split(rows), strict=True)]
    return torch.cat(out).cpu().numpy() if out else np.zeros(0)


class TorchBackend:
    """A LitGPT checkpoint, in eval mode, on the chosen device and precision."""

    name = "torch"

    def __init__(self, model_dir: Path, *, context: int | None, device: str, precision: str | None,
                 batch_size: int, threads: int | None):
        from workbench.hardware import choose_device, choose_precision
        from workbench.ml.checkpoint import load_model

        self.device = torch.device(choose_device(device))
        self.precision = precision or choose_precision(self.device.type, training=False)
        dtype = _DTYPES.get(self.precision.split("-")[0])
        if dtype is None:
            raise UserError(f"--precision {self.precision} is not one of 32-true, 16-true, bf16-true, 64-true")
        self.dtype = dtype
        self.model = load_model(model_dir, device=self.device, dtype=dtype)
        # On a CPU, the cores other processes leave free: a busy core stalls every thread at
        # each operation's barrier, and an idle second one scores a small model 1.4x faster.
        self._threads = threads or (free_cores() if self.device.type == "cpu" else None)
        self.context = min(self.model.config.block_size, context or DEFAULT_CONTEXT)
        self.model.max_seq_length = self.context
        self.vocab = self.model.config.padded_vocab_size
        self.batch_size = batch_size
        self._has_cache = False

    @torch.inference_mode()
    def logprobs(self, items: Sequence[Item]) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        with torch_threads(self._threads):
            i = 0
            while i < len(items):
                longest = len(items[i][0])
                rows = max(1, min(self.batch_size, MAX_LOGIT_ELEMENTS // max(1, longest * self.vocab)))
                batch = list(items[i:i + rows])
                width = max(len(ids) for ids, _ in batch)
                x = torch.zeros((len(batch), width), dtype=torch.long)
                for b, (ids, _) in enumerate(batch):
                    x[b, :len(ids)] = torch.tensor(ids, dtype=torch.long)
                # Right padding: a causal model never looks at it from the real positions.
                logits = self.model(x.to(self.device))
                for b, (ids, start) in enumerate(batch):
                    out.append(target_logprobs(logits[b, start - 1:len(ids) - 1], ids[start:]))
                i += len(batch)
        return out

    @torch.inference_mode()
    def greedy(self, prompt: list[int], max_new: int, stop_ids: set[int]) -> list[int]:
        with torch_threads(self._threads):
            if not self._has_cache:
                self.model.set_kv_cache(batch_size=1, device=self.device, dtype=self.dtype)
                self._has_cache = True
            # Entries left in the KV cache by the previous prompt lie past the current position
            # and are masked out, so the cache needs no reset between prompts.
            n = len(prompt)
            x = torch.tensor([prompt], dtype=torch.long, device=self.device)
            logits = self.model(x, input_pos=torch.arange(n, device=self.device), input_pos_maxp1=n)[0, -1]
            out: list[int] = []
            while True:
                token = int(torch.argmax(logits))
                if token in stop_ids:
                    break
                out.append(token)
                if len(out) >= max_new or n >= self.context:
                    break
                x = torch.tensor([[token]], dtype=torch.long, device=self.device)
                logits = self.model(x, input_pos=torch.tensor([n], device=self.device), input_pos_maxp1=n + 1)[0, -1]
                n += 1
        return out

    def close(self) -> None:
        if self._has_cache:
            self.model.clear_kv_cache()
        del self.model


def vocab_only(path: Path) -> Any:
    """llama.cpp with a GGUF's vocabulary and metadata loaded, not its weights.

    Such a model reports a training context of 0, and llama.cpp warns about that on every load
    whatever the log level; the warning is caught here, and shown only if loading fails.
    """
    from jinja2 import TemplateError
    from llama_cpp import Llama

    from workbench.weightfiles import check_gguf

    check_gguf(path)  # llama.cpp's own refusal of a short file names neither file nor cause
    caught = io.StringIO()
    try:
        with redirect_stderr(caught):
            return Llama(model_path=str(path), vocab_only=True, n_ctx=8, verbose=False)
    except ValueError as exc:
        raise UserError(f"llama.cpp cannot read {path}: {exc} {caught.getvalue().strip()}") from None
    except TemplateError as exc:  # llama-cpp-python compiles the file's chat template as it loads
        raise template_error(f"model {path.name} (tokenizer.chat_template of {path})", exc) from None


def gguf_metadata(path: Path) -> dict[str, str]:
    """A GGUF's key/value metadata (every value as text, as llama.cpp gives it)."""
    llm = vocab_only(path)
    try:
        return dict(llm.metadata)
    finally:
        llm.close()


class LlamaBackend:
    """A GGUF file in llama-cpp-python, fed through llama.cpp's batch API.

    Each window goes to llama.cpp in one `llama_decode` call (flash attention on) that asks for
    logits only at the positions being scored: llama.cpp then skips the output layer everywhere
    else, and the logits are read straight from its buffer rather than copied row by row into
    `Llama.scores`. The KV cache keeps the longest prefix a call shares with the previous one, so
    multiple-choice options after one question and greedy decoding re-read only what is new.
    """

    name = "llama.cpp"

    def __init__(self, path: Path, *, context: int | None, device: str, threads: int | None,
                 n_ctx: int | None = None):
        import llama_cpp
        from llama_cpp import Llama

        meta = gguf_metadata(path)
        arch = meta.get("general.architecture", "llama")
        trained = int(meta.get(f"{arch}.context_length", DEFAULT_CONTEXT))
        self.metadata = meta
        self.context = min(trained, context or DEFAULT_CONTEXT)
        n_ctx = min(n_ctx or self.context, trained)
        threads = threads or free_cores()
        self._threads = threads
        gpu_layers = -1 if device in ("cuda", "mps") else 0
        try:
            # Flash attention fuses the window's attention into one pass over the cache: on a CPU
            # it scores 1.2-1.4x faster, and with the F32 cache it moves a perplexity by ~1e-6.
            self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                             type_k=0, type_v=0, flash_attn=True, n_gpu_layers=gpu_layers, n_threads=threads,
                             n_threads_batch=threads, seed=0, verbose=False)
        except ValueError as exc:  # llama.cpp refuses a broken file with a bare ValueError
            raise UserError(f"llama.cpp cannot load {path}: {exc}") from None
        self.context = min(self.context, self.llm.n_ctx())
        self._lib = llama_cpp
        self._ctx = self.llm.ctx
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._vocab = self.llm.n_vocab()
        self._n_batch = self.llm.n_batch
        self._batch = llama_cpp.llama_batch_init(self._n_batch, 0, 1)
        size = (self._n_batch,)
        self._tok = np.ctypeslib.as_array(self._batch.token, shape=size)
        self._pos = np.ctypeslib.as_array(self._batch.pos, shape=size)
        self._want = np.ctypeslib.as_array(self._batch.logits, shape=size)
        np.ctypeslib.as_array(self._batch.n_seq_id, shape=size)[:] = 1
        for i in range(self._n_batch):  # every token belongs to sequence 0
            self._batch.seq_id[i][0] = 0
        self._cached = np.zeros(0, dtype=np.int64)  # the tokens whose keys and values are in the cache

    def _decode(self, ids: Sequence[int], lo: int, hi: int) -> np.ndarray:
        """The logits after each of ids[lo:hi] (float32, one row each), given all of `ids`."""
        tokens = np.asarray(ids, dtype=np.int64)
        # Reuse the cached prefix, but recompute from `lo` on: logits are kept only for the
        # positions that asked for them.
        limit = min(len(self._cached), lo)
        differ = np.flatnonzero(self._cached[:limit] != tokens[:limit])
        common = int(differ[0]) if len(differ) else limit
        self._lib.llama_memory_seq_rm(self._memory, 0, common, -1)
        self._cached = self._cached[:common]
        rows = []
        for first in range(common, len(tokens), self._n_batch):
            n = min(self._n_batch, len(tokens) - first)
            positions = np.arange(first, first + n)
            self._tok[:n] = tokens[first:first + n]
            self._pos[:n] = positions
            want = (positions >= lo) & (positions < hi)
            self._want[:n] = want
            self._batch.n_tokens = n
            code = self._lib.llama_decode(self._ctx, self._batch)
            if code != 0:
                self._cached = self._cached[:0]
                self._lib.llama_memory_clear(self._memory, True)
                raise RuntimeError(f"llama_decode failed with code {code} at position {first}")
            self._cached = tokens[:first + n]
            n_out = int(want.sum())
            if n_out:
                out = np.ctypeslib.as_array(self._lib.llama_get_logits(self._ctx), shape=(n_out * self._vocab,))
                rows.append(out.reshape(n_out, self._vocab).copy())
        if not rows:
            return np.zeros((0, self._vocab), dtype=np.float32)
        return np.concatenate(rows) if len(rows) > 1 else rows[0]

    def logprobs(self, items: Sequence[Item]) -> list[np.ndarray]:
        with torch_threads(self._threads):  # torch takes the log-softmax, on llama.cpp's threads
            return [target_logprobs(torch.from_numpy(self._decode(ids, start - 1, len(ids) - 1)), ids[start:])
                    for ids, start in items]

    def next_logits(self, ids: list[int]) -> np.ndarray:
        """The logits that follow `ids`."""
        return self._decode(ids, len(ids) - 1, len(ids))[0]

    def greedy(self, prompt: list[int], max_new: int, stop_ids: set[int]) -> list[int]:
        ids = list(prompt)
        out: list[int] = []
        while True:
            token = int(np.argmax(self.next_logits(ids)))
            if token in stop_ids:
                break
            out.append(token)
            if len(out) >= max_new or len(ids) >= self.context:
                break
            ids.append(token)
        return out

    def close(self) -> None:
        if self._batch is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None
        self.llm.close()


class LlamaTokenizer:
    """llama.cpp's own tokenizer behind LitGPT's `Tokenizer` interface, for a GGUF that came
    without its checkpoint (a download): its token ids are then llama.cpp's."""

    def __init__(self, path: Path, metadata: dict[str, str]):
        self.llm = vocab_only(path)
        self.eos_id: int | None = self.llm.token_eos()
        self.bos_id: int | None = self.llm.token_bos()
        self.use_bos = metadata.get("tokenizer.ggml.add_bos_token", "false") == "true"

    def encode(self, text: str, device: Any = None, bos: bool | None = None, eos: bool = False) -> torch.Tensor:
        ids = self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        if (bos or (bos is None and self.use_bos)) and self.bos_id is not None and ids[:1] != [self.bos_id]:
            ids = [self.bos_id, *ids]
        if eos and self.eos_id is not None:
            ids = [*ids, self.eos_id]
        return torch.tensor(ids, dtype=torch.int)

    def decode(self, tensor: torch.Tensor) -> str:
        ids = [int(tensor)] if tensor.ndim == 0 else [int(i) for i in tensor.tolist()]
        return self.llm.detokenize(ids).decode("utf-8", errors="replace")

    def close(self) -> None:
        self.llm.close()
