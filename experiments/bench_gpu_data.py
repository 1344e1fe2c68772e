"""The data of the prepared device check (:mod:`experiments.bench_gpu`): :func:`prepare` runs here
(Hydra, nilearn) and writes the composed recipes and the MNI-derived subjects as 8-bit arrays;
:class:`StoredSubjects` and :func:`stored_datamodule` serve them on the device, which has neither
nibabel, nilearn nor Hydra (only torch, lightning and numpy are imported at module level)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

# the paper's networks as the OASIS recipes train them (configs/experiment/oasis_unsup_*.yaml)
NETWORK_EXPERIMENTS = {
    "voxelmorph": "oasis_unsup_voxelmorph",
    "lkunet": "oasis_unsup_lkunet",
    "transmorph": "oasis_unsup_transmorph",
    "lapirn": "oasis_unsup_lapirn",
    "clapirn": "oasis_unsup_clapirn",
    "symnet": "oasis_unsup_symnet",
}
MNI_EXPERIMENTS = {"supervised": "mni_sup_voxelmorph", "unsupervised": "mni_unsup_voxelmorph"}
CLASSICAL_MODELS = ("greedy", "greedy_fast", "syn")
SHAPE = (160, 192, 224)  # the OASIS grid (neurite layout), 1 mm
QUICK = {"pair": ((32, 32, 32), 2), "subjects": {"shape": [32, 32, 32], "n_train": 2, "n_val": 0, "n_test": 2}}


# ------------------------------------------------------------------------------------- prepare (here)
def _quantise(image: torch.Tensor) -> np.ndarray:
    """``[0, 1]`` float image -> uint8 (``round(255 x)``; read back as ``x / 255``, error <= 0.002)."""
    return np.clip(np.rint(image.numpy() * 255.0), 0, 255).astype(np.uint8)


def _subject_arrays(subjects, indices: list[int]) -> dict[str, np.ndarray]:
    images, labels = [], []
    for k in indices:
        item = subjects[k]
        images.append(_quantise(item["image"][0]))
        label = item["label"][0].numpy()
        if label.min() < 0 or label.max() > 255:
            raise ValueError(f"bench_gpu prepare: subject {k} has labels outside 0..255")
        labels.append(label.astype(np.uint8))
    return {"images": np.stack(images), "labels": np.stack(labels), "indices": np.asarray(indices, np.int64),
            "spacing": np.asarray(subjects.spacing, np.float64), "affine": np.asarray(subjects.affine, np.float64),
            "label_names": np.asarray(json.dumps({int(k): v for k, v in subjects.label_names.items()}))}


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    from data.files import atomic_write_with

    def write(tmp) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    atomic_write_with(path, write)


def prepare(folder: str | Path, quick: bool = False) -> dict:
    """Compose the configs (Hydra) into plain nodes and draw the MNI-derived subjects (nilearn's
    template) into ``folder``: ``recipes.json``, ``pair.npz`` (subjects 0 and 1 on 160x192x224 at
    1 mm; ``quick``: 32^3 at 2 mm) and ``subjects.npz`` (the MNI recipe's training and test
    subjects at 2 mm; ``quick``: 2 + 2 on 32^3). Runs here, where Hydra and nilearn are installed."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from data.mni import MNIKnobs, MNISubjects

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def node(cfg, key):
        return OmegaConf.to_container(cfg[key], resolve=True)

    recipes: dict[str, Any] = {"networks": {}, "mni": {}, "classical": {}, "quick": bool(quick)}
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        for name, experiment in NETWORK_EXPERIMENTS.items():
            cfg = compose("train", [f"experiment={experiment}"])
            recipes["networks"][name] = {"experiment": experiment, "model": node(cfg, "model")}
        for name, experiment in MNI_EXPERIMENTS.items():
            cfg = compose("train", [f"experiment={experiment}"])
            recipes["mni"][name] = {"experiment": experiment, "model": node(cfg, "model"), "data": node(cfg, "data"),
                                    "seed": int(cfg.seed), "max_epochs": int(cfg.trainer.max_epochs)}
        for name in CLASSICAL_MODELS:
            cfg = compose("eval", [f"model={name}"])
            recipes["classical"][name] = node(cfg, "model")
    data = dict(recipes["mni"]["supervised"]["data"])
    if quick:
        data.update(QUICK["subjects"])
    if recipes["mni"]["unsupervised"]["data"] != recipes["mni"]["supervised"]["data"]:
        raise ValueError("bench_gpu prepare: mni_sup_voxelmorph and mni_unsup_voxelmorph use different data")
    knob_names = {f.name for f in dataclasses.fields(MNIKnobs)}
    knobs = {k: v for k, v in data.items() if k in knob_names}
    seed = int(data["seed"])
    # the 1 mm pair (or the quick one)
    shape, resolution = QUICK["pair"] if quick else (SHAPE, 1)
    pair_subjects = MNISubjects(MNIKnobs(**{**knobs, "resolution": resolution, "shape": list(shape)}), seed=seed,
                                cache=False)
    _save_npz(folder / "pair.npz", _subject_arrays(pair_subjects, [0, 1]))
    # the MNI recipe's training and test subjects (validation is not run: no validation subjects)
    subjects = MNISubjects(MNIKnobs(**knobs), seed=seed, cache=False)
    n_train, n_val, n_test = int(data["n_train"]), int(data["n_val"]), int(data["n_test"])
    indices = [*range(n_train), *range(n_train + n_val, n_train + n_val + n_test)]
    _save_npz(folder / "subjects.npz", _subject_arrays(subjects, indices))
    recipes["mni_data"] = data
    from data.files import atomic_write_text

    atomic_write_text(folder / "recipes.json", json.dumps(recipes, indent=1, sort_keys=True) + "\n")
    return recipes


# ------------------------------------------------------------------------------------- stored data (device)
class StoredSubjects:
    """Subjects drawn by :func:`prepare` (``subjects.npz``/``pair.npz``), served like
    :class:`data.mni.MNISubjects` (``subjects[k]``: ``{"image": float32 (1, *S), "label": int64
    (1, *S), "id"}``; ``spacing``, ``affine``, ``shape``, ``label_names``) without nibabel or the
    template. Asking for a subject that was not stored is an error naming it and the file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with np.load(self.path) as z:
            self._images, self._labels = z["images"], z["labels"]
            self._row = {int(k): i for i, k in enumerate(z["indices"])}
            self.spacing = tuple(float(x) for x in z["spacing"])
            self.affine = z["affine"]
            self.label_names = {int(k): v for k, v in json.loads(str(z["label_names"])).items()}
        self.shape = tuple(int(n) for n in self._images.shape[1:])

    @staticmethod
    def subject_id(k: int) -> str:
        return f"mni_{int(k):04d}"

    def __getitem__(self, k: int) -> dict:
        row = self._row.get(int(k))
        if row is None:
            raise KeyError(f"{self.path}: subject {k} was not prepared (stored: {sorted(self._row)})")
        image = torch.from_numpy(self._images[row].astype(np.float32) / 255.0)[None]
        return {"image": image, "label": torch.from_numpy(self._labels[row].astype(np.int64))[None],
                "id": self.subject_id(k)}

    def prepare(self) -> None:
        """Nothing to load (the arrays are in memory)."""

    def __repr__(self) -> str:
        return f"StoredSubjects({self.path.name}, shape={self.shape}, stored={sorted(self._row)})"


def stored_datamodule(subjects: StoredSubjects, data: dict):
    """The MNI recipe's DataModule (:class:`data.generated.GeneratedDataModule`: the same splits,
    pair sampler and batches as :class:`data.MNIDataModule`) over the stored subjects."""
    from data.generated import GeneratedDataModule

    class StoredMNIDataModule(GeneratedDataModule):
        def __init__(self) -> None:
            super().__init__()
            self._setup_splits(subjects, int(data["n_train"]), int(data["n_val"]), int(data["n_test"]),
                               int(data["pairs_per_epoch"]), int(data["seed"]), 1, 0, True,
                               data.get("val_pairs", "consecutive"), data.get("test_pairs", "consecutive"))

    return StoredMNIDataModule()
