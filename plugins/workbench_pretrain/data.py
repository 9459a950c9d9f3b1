"""Training sequences cut from the tokenized cache, in an order fixed by (seed, position).

A split is one long array of token ids (documents joined by the end-of-text id, see
`workbench_data.tokencache`). Training reads windows of `seq_len + 1` tokens from it: sequence
number `p` of the run is window `perm[p % n]` of epoch `p // n`, where the permutation and a
random start offset of each epoch come from a generator seeded with (seed, epoch), the order
every training stage shares (`workbench.ml.training.SeededOrder`). The data
position is therefore a single integer, and a resumed run sees exactly the sequences an
uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from litgpt.data import DataModule
from torch.utils.data import DataLoader, Dataset

from workbench.errors import UserError
from workbench.ml.training import SeededOrder


class TokenWindows(SeededOrder):
    """Training windows in the shared seeded order (`workbench.ml.training.SeededOrder`); each
    epoch also starts its windows at a random offset within the split's slack."""

    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int, *, what: str = "training data"):
        if len(tokens) < seq_len + 1:
            raise UserError(
                f"{what} holds {len(tokens):,} tokens, fewer than one sequence of {seq_len + 1}; "
                "lower --max-seq-length or add data"
            )
        self.tokens, self.seq_len = tokens, seq_len
        self.n_windows = (len(tokens) - 1) // seq_len
        self._slack = (len(tokens) - 1) - self.n_windows * seq_len
        self._offset = 0
        super().__init__(self.n_windows, seed)

    def shuffle(self, rng: np.random.Generator) -> np.ndarray:
        self._offset = int(rng.integers(0, self._slack + 1))
        return rng.permutation(self.n_windows)

    def sequence(self, position: int) -> np.ndarray:
        start = self.index(position) * self.seq_len  # sets this epoch's offset first
        return self.tokens[self._offset + start : self._offset + start + self.seq_len + 1]

    def batch(self, start: int, size: int) -> torch.Tensor:
        """Sequences `start .. start + size - 1` as a (size, seq_len + 1) int64 tensor."""
        rows = np.stack([self.sequence(p) for p in range(start, start + size)]).astype(np.int64)
        return torch.from_numpy(rows)


def validation_windows(tokens: np.ndarray, seq_len: int, count: int) -> torch.Tensor:
    """The first `count` consecutive windows of the validation split (the same every time).

    A split shorter than one sequence gives one shorter window; an empty one gives none.
    """
    if len(tokens) < 2:
        return torch.empty(0, seq_len + 1, dtype=torch.int64)
    length = min(seq_len, len(tokens) - 1)
    n = min(count, (len(tokens) - 1) // length)
    rows = np.stack([tokens[i * length : i * length + length + 1] for i in range(n)]).astype(np.int64)
    return torch.from_numpy(rows)


# LitGPT's own `litgpt pretrain` reads the very same sequences through this data module, so the
# benchmark compares the two training loops on identical data.


class _WindowDataset(Dataset):
    def __init__(self, windows: TokenWindows):
        self.windows = windows

    def __len__(self) -> int:
        return self.windows.n_windows

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(self.windows.sequence(index).astype(np.int64))


@dataclass
class TokenCacheData(DataModule):
    """A pretrain dataset artifact read through the workbench token cache."""

    dataset_dir: Path
    tokenizer_dir: Path
    seed: int = 42
    val_windows: int = 64
    batch_size: int = field(default=1, init=False, repr=False)
    seq_len: int = field(default=2048, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__init__()

    def connect(self, tokenizer: Any = None, batch_size: int = 1, max_seq_length: int | None = None, **kwargs: Any) -> None:
        self.batch_size = batch_size
        self.seq_len = max_seq_length or self.seq_len

    def setup(self, stage: str = "") -> None:
        from workbench_data.tokencache import token_array

        self._train = token_array(Path(self.dataset_dir), Path(self.tokenizer_dir), "train")
        self._val = token_array(Path(self.dataset_dir), Path(self.tokenizer_dir), "val")

    def train_dataloader(self) -> DataLoader:
        windows = TokenWindows(self._train, self.seq_len, self.seed)
        return DataLoader(_WindowDataset(windows), batch_size=self.batch_size, shuffle=False, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        rows = validation_windows(self._val, self.seq_len, self.val_windows)
        return DataLoader(list(rows), batch_size=self.batch_size, shuffle=False)
