"""Pair schemes shared by every dataset: which (fixed, moving) subjects are registered.

* :func:`consecutive_pairs` — (k, k+1) in the given order, fixed = k (OASIS val/test style);
* :func:`all_pairs` — every ordered pair (the Klein sets);
* :class:`RandomPairSampler` — random training pairs per epoch, seeded by ``(seed, epoch)``.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler

__all__ = ["consecutive_pairs", "all_pairs", "RandomPairSampler"]


def consecutive_pairs(subject_ids: Sequence[int]) -> list[tuple[int, int]]:
    """``[(s0, s1), (s1, s2), ...]``: fixed ``k``, moving ``k+1`` (the OASIS validation scheme)."""
    ids = list(subject_ids)
    return [(ids[i], ids[i + 1]) for i in range(len(ids) - 1)]


def all_pairs(subject_ids: Sequence[int]) -> list[tuple[int, int]]:
    """All ordered pairs ``(a, b)`` with ``a != b`` (the Klein-set scheme), row-major order."""
    ids = list(subject_ids)
    return [(a, b) for a in ids for b in ids if a != b]


class RandomPairSampler(Sampler[int]):
    """Draws ``num_samples`` dataset indices per epoch, re-drawn every epoch from ``(seed, epoch)``.

    Without replacement while ``num_samples <= len(dataset)`` (further draws start a new
    permutation). The epoch is the one given to :meth:`set_epoch` (Lightning calls it before
    each epoch, also under DDP where every rank must draw the same list); each ``__iter__``
    also advances it by one, so plain PyTorch loops see fresh pairs every epoch too.
    """

    def __init__(self, data_source_len: int, num_samples: int, seed: int = 0):
        if data_source_len < 1:
            raise ValueError(f"RandomPairSampler() needs a non-empty dataset, got length {data_source_len}")
        if num_samples < 1:
            raise ValueError(f"RandomPairSampler() 'num_samples' must be >= 1, got {num_samples}")
        self.data_source_len = int(data_source_len)
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self, epoch: int) -> list[int]:
        """The indices drawn for ``epoch``."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(epoch))
        out: list[int] = []
        while len(out) < self.num_samples:
            out.extend(torch.randperm(self.data_source_len, generator=gen).tolist())
        return out[: self.num_samples]

    def __iter__(self) -> Iterator[int]:
        idx = self.indices(self.epoch)
        self.epoch += 1
        return iter(idx)

    def __len__(self) -> int:
        return self.num_samples
