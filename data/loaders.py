"""DataLoaders of every DataModule: one constructor, and resuming mid-epoch.

:func:`make_loader` builds every train/val/test loader of the project's DataModules. Its loaders
are :class:`ResumableLoader`: Lightning saves their position in every checkpoint (its stateful
loader protocol, ``state_dict`` / ``load_state_dict``), so ``python train.py ... ckpt_path=<a
checkpoint saved mid-epoch>`` continues the interrupted epoch with the batches it had not
trained on yet, instead of starting the epoch again or skipping to the next one.
"""

from __future__ import annotations

import random
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

__all__ = ["ResumableLoader", "make_loader", "check_loader_args"]


def _rng_state() -> dict[str, Any]:
    """Global RNG states as tensors, strings and numbers (checkpoints load with ``weights_only``)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


def _samplers(loader: DataLoader) -> list[Any]:
    """The loader's sampler and its batch sampler's sampler, each once (as Lightning sets epochs)."""
    found: dict[int, Any] = {}
    for s in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        if s is not None:
            found[id(s)] = s
    return list(found.values())


class ResumableLoader(DataLoader):
    """A ``DataLoader`` that knows where it is within the current pass.

    ``state_dict()`` (Lightning stores it in each checkpoint): the sampler epoch of the current
    pass, the number of batches handed out in it, and the global RNG states (torch, numpy,
    python) at that moment. ``load_state_dict()`` then makes the next pass the saved one: the
    sampler is set to the saved epoch, the batches already trained on are drawn again and
    dropped (a replay: the same indices, the same augmentation draws, so nothing depends on how
    a sampler or a dataset consumes randomness), and the RNG states are put back to the saved
    ones, so the steps after the resume see what they would have seen without the interruption.
    A state saved at the end of a pass resumes with the next epoch's pass, from its start.

    Exact on CPU with ``num_workers=0``. With workers, each worker's seed comes from the main
    RNG when the pass starts, so augmented batches after a resume are valid draws but not the
    same ones; under DDP the checkpoint holds rank 0's state. Replaying costs the loading time
    of the skipped batches (no training step runs for them). Lightning only fetches ahead when a
    loader has no length; this one has, so the count is the number of batches trained on.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pass_epoch: int | None = None
        self._served = 0
        self._resume: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self._pass_epoch, "batches": self._served, "rng": _rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch, served = state.get("epoch"), int(state.get("batches", 0))
        if epoch is None:
            return  # saved before any pass started
        if served >= len(self):
            epoch, served, rng = int(epoch) + 1, 0, None  # the pass had ended: start the next one
        else:
            rng = state.get("rng")
        for sampler in _samplers(self):
            if callable(getattr(sampler, "set_epoch", None)):
                sampler.set_epoch(int(epoch))
        self._resume = {"batches": served, "rng": rng}

    def _sampler_epoch(self) -> int | None:
        for sampler in _samplers(self):
            epoch = getattr(sampler, "epoch", None)
            if epoch is not None:
                return int(epoch)
        return None

    def __iter__(self) -> Iterator[Any]:
        resume, self._resume = self._resume, None
        self._pass_epoch = self._sampler_epoch()
        self._served = 0
        it = super().__iter__()
        if resume is not None:
            for _ in range(resume["batches"]):
                next(it)
            self._served = resume["batches"]
            if resume["rng"] is not None:
                _set_rng_state(resume["rng"])
        return self._counting(it)

    def _counting(self, it: Iterator[Any]) -> Iterator[Any]:
        for batch in it:
            self._served += 1
            yield batch


def make_loader(dataset, batch_size: int, num_workers: int, sampler=None) -> ResumableLoader:
    """The project's loader: no shuffling (a ``sampler`` draws training pairs), every batch kept."""
    return ResumableLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        drop_last=False,
    )


def check_loader_args(batch_size, num_workers, owner: str) -> tuple[int, int]:
    if int(batch_size) < 1:
        raise ValueError(f"{owner}() 'batch_size' must be >= 1, got {batch_size!r}")
    if int(num_workers) < 0:
        raise ValueError(f"{owner}() 'num_workers' must be >= 0, got {num_workers!r}")
    return int(batch_size), int(num_workers)
