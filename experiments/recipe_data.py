"""What the recipe measures on one side (training or test data) of ``experiments/recipe.py``:
label availability, MI(i; s) of a sample of images, and the train/test intensity shift
(Jensen–Shannon divergence of pooled intensity histograms). The thresholds and the rule that
uses these numbers are in :mod:`experiments.recipe`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from app import ConfigError

__all__ = ["Side", "intensity_histogram", "js_divergence", "measure_side", "parse_sets", "shift_statistic",
           "HIST_BINS", "MI_BINS"]

HIST_BINS = 64
MI_BINS = 64
_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


# ---------------------------------------------------------------------------- shift statistic
def intensity_histogram(images: Sequence[Any], masks: Sequence[Any] | None = None, bins: int = HIST_BINS) -> np.ndarray:
    """Pooled ``bins``-bin histogram over [0, 1] (counts, float64) of the masked voxels of ``images``.

    ``masks``: one boolean array per image; None counts voxels with intensity > 0.
    """
    counts = np.zeros(int(bins), dtype=np.float64)
    for k, image in enumerate(images):
        x = np.asarray(image, dtype=np.float64).reshape(-1)
        keep = x > 0 if masks is None else np.asarray(masks[k], dtype=bool).reshape(-1)
        h, _ = np.histogram(np.clip(x[keep], 0.0, 1.0), bins=int(bins), range=(0.0, 1.0))
        counts += h
    return counts


def js_divergence(p: Any, q: Any) -> float:
    """Jensen–Shannon divergence in bits (0 .. 1) of two histograms (counts; normalised here)."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.shape != q.shape or p.sum() <= 0 or q.sum() <= 0:
        raise ValueError(f"js_divergence() needs two non-empty histograms of one shape, got {p.shape} and {q.shape}")
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float((a[nz] * np.log2(a[nz] / m[nz])).sum())

    return float(min(max(0.5 * kl(p) + 0.5 * kl(q), 0.0), 1.0))


# ------------------------------------------------------------------------------ data sides
@dataclass
class Side:
    """One side's measurements: counts over the whole set, the sampled images, MI per image."""

    source: str
    n_images: int = 0
    n_labelled: int = 0
    images: list = field(default_factory=list, repr=False)
    labels: list = field(default_factory=list, repr=False)
    ids: list = field(default_factory=list)
    all_ids: list = field(default_factory=list)  # every distinct image of the set (known from its file lists)
    mi: dict = field(default_factory=dict)
    note: str | None = None

    @property
    def labelled(self) -> bool:
        return bool(self.images) and all(lab is not None for lab in self.labels)

    @property
    def mi_mean(self) -> float | None:
        return float(np.mean(list(self.mi.values()))) if self.mi else None


def parse_sets(items: Sequence[str]) -> dict[str, list[str]]:
    """``["train.KEY=V", ...]`` -> Hydra overrides per side (``++data.KEY=V`` / ``paths.KEY=V``)."""
    out: dict[str, list[str]] = {"train": [], "test": []}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected SIDE.KEY=VALUE with SIDE train or test (no '=' found)")
        key, value = item.split("=", 1)
        side, _, sub = key.partition(".")
        if side not in out or not sub:
            raise ConfigError(f"--set {item!r}: the key must start with 'train.' or 'test.', e.g. test.gamma=0.5")
        if sub == "data_dir":
            out[side].append(f"paths.data_dir={value}")
        elif sub.startswith("paths."):
            out[side].append(f"{sub}={value}")
        else:
            out[side].append(f"++data.{sub}={value}")
    return out


def _datamodule(source: str, overrides: Sequence[str], flag: str):
    """Instantiate the DataModule of a config name or a pairs CSV (not validated: see module docstring)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from data.io import DataError
    from app.build import build

    is_csv = source.lower().endswith(".csv")
    if is_csv:
        path = Path(os.path.expanduser(source))
        if not path.is_file():
            raise DataError(f"{flag}: pairs CSV not found: {path}")
        name = "pairs_csv"
    else:
        name = source
        if not (_CONFIGS / "data" / f"{name}.yaml").is_file():
            known = ", ".join(sorted(p.stem for p in (_CONFIGS / "data").glob("*.yaml")))
            raise ConfigError(f"{flag}: unknown data config {name!r} (a name in configs/data: {known}; "
                              f"or a path ending in .csv; or none for --train)")
    try:
        with initialize_config_dir(config_dir=str(_CONFIGS), version_base="1.3"):
            cfg = compose(config_name="train", overrides=[f"data={name}", *overrides])
        if is_csv:
            cfg.data.csv = str(path.resolve())
        return build(cfg.data, "data")
    except (ConfigError, HydraException, OmegaConfBaseException) as exc:  # name the side at fault
        raise ConfigError(f"{flag} {source}: {' '.join(str(exc).split())}") from None


def _pair_keys(dataset) -> list[tuple[Any, Any]] | None:
    """Image keys ``(fixed, moving)`` of every pair, from the file lists (no image loaded); None if unknown."""
    if hasattr(dataset, "pairs"):
        return [(getattr(a, "id", a), getattr(b, "id", b)) for a, b in dataset.pairs]
    if hasattr(dataset, "rows"):
        return [(str(r["fixed"]), str(r["moving"])) for r in dataset.rows]
    return None


def _count_labelled(dataset, keys: Sequence[Any]) -> int:
    """How many of the distinct images ``keys`` have a label map, from the file lists."""
    if not getattr(dataset, "with_labels", getattr(dataset, "has_labels", True)):
        return 0
    if hasattr(dataset, "pairs") and dataset.pairs and hasattr(dataset.pairs[0][0], "label"):
        refs = {r.id: r for pair in dataset.pairs for r in pair}
        return sum(refs[k].label is not None for k in keys)
    return len(keys)


def _sample(dataset, max_images: int, side: Side) -> None:
    """Fill ``side`` with up to ``max_images`` distinct images (pairs with two new images first)."""
    keys = _pair_keys(dataset)
    plan: dict[int, list[str]] = {}
    if keys is not None:
        distinct = list(dict.fromkeys(k for pair in keys for k in pair))
        side.n_images = len(distinct)
        side.all_ids = [str(k) for k in distinct]
        side.n_labelled = _count_labelled(dataset, distinct)
        taken: set = set()
        for both in (True, False):  # first pairs that bring two new images, then one
            for index, (a, b) in enumerate(keys):
                if len(taken) >= max_images:
                    break
                new = [(s, k) for s, k in (("fixed", a), ("moving", b)) if k not in taken][: 1 if a == b else 2]
                if not new or (both and len(new) < 2):
                    continue
                for s, k in new[: max_images - len(taken)]:
                    taken.add(k)
                    plan.setdefault(index, []).append(s)
    else:  # unknown dataset type: load pairs in order
        plan = {i: ["fixed", "moving"] for i in range(len(dataset))}
    seen: set[str] = set()
    for index in sorted(plan):
        if len(seen) >= max_images:
            break
        item = dataset[index]
        for s in plan[index]:
            image_id = str(item[f"{s}_id"])
            if image_id in seen or len(seen) >= max_images:
                continue  # (unknown dataset types: ids are only known once loaded)
            seen.add(image_id)
            side.ids.append(image_id)
            side.images.append(item[s].detach().cpu().float().numpy())
            lab = item.get(f"{s}_label")
            side.labels.append(None if lab is None else lab.detach().cpu())
    if keys is None:
        side.n_images = len(side.ids)
        side.n_labelled = sum(lab is not None for lab in side.labels)


def measure_side(source: str, overrides: Sequence[str], flag: str, train: bool, max_images: int) -> Side:
    """Build the side's DataModule, sample its images and measure MI where labels exist."""
    import torch

    from data.io import DataError
    from metrics.information import intensity_label_information

    side = Side(source=source)
    dm = _datamodule(source, overrides, flag)
    dataset = None
    if train and not source.lower().endswith(".csv"):
        try:
            dataset = dm.train_dataloader().dataset
        except DataError as exc:
            side.note = f"no training split ({exc}); its test pairs' images are used"
    if dataset is None:
        dataset = dm.test_dataloader().dataset
    if getattr(dataset, "augment", None) is not None:
        dataset.augment = None  # intensities as stored: augmentation is random
    _sample(dataset, max_images, side)
    if not side.images:
        raise DataError(f"{flag} {source}: no images")
    for image_id, image, lab in zip(side.ids, side.images, side.labels):
        if lab is None:
            continue
        try:
            side.mi[image_id] = intensity_label_information(torch.from_numpy(image), lab, bins=MI_BINS,
                                                            mask="foreground").mi
        except ValueError as exc:
            raise DataError(f"{flag} image {image_id}: {exc}") from exc
    return side


def shift_statistic(train: Side, test: Side) -> tuple[float, str]:
    """JS divergence (bits) of the two sides' pooled histograms and the voxels it counted."""
    from data.io import DataError

    use_labels = train.labelled and test.labelled
    mask_name = "label>0" if use_labels else "intensity>0"
    hists = []
    for s in (train, test):
        masks = [lab.numpy() > 0 for lab in s.labels] if use_labels else None
        h = intensity_histogram(s.images, masks, HIST_BINS)
        if h.sum() == 0:
            raise DataError(f"{s.source}: no voxel with {mask_name} in the sampled images")
        hists.append(h)
    return js_divergence(*hists), mask_name


