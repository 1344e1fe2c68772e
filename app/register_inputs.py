"""``register.py``'s inputs (:mod:`app.register`): the files by key and the output folder, their
headers checked, the device, the model (``model=`` or ``ckpt_path=``) checked against the fixed
image (size, voxel order), and the pair as the method registers it. Errors name the key or file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import torch
from omegaconf import DictConfig, OmegaConf

from app.errors import ConfigError

__all__ = ["USAGE", "required_path", "optional_path", "read_inputs", "check_grids", "device_of", "model_of",
           "pair_batch", "check_size", "check_voxel_order"]


def required_path(cfg: DictConfig, key: str, usage: str) -> Path:
    """``cfg[key]`` as a path; ConfigError naming the key and the usage line when it is not set."""
    value = cfg.get(key)
    if value is None or not str(value).strip():
        raise ConfigError(f"{key} is not set: {usage}")
    return Path(os.path.expanduser(str(value)))


def optional_path(cfg: DictConfig, key: str) -> Path | None:
    value = cfg.get(key)
    return None if value is None or not str(value).strip() else Path(os.path.expanduser(str(value)))


USAGE = "python register.py fixed=F.nii.gz moving=M.nii.gz out=DIR [moving_label=ML.nii.gz fixed_label=FL.nii.gz]"


def read_inputs(cfg: DictConfig, outputs: Iterable[str]) -> tuple[dict[str, Path], Path]:
    """The input files by key and the output folder; ConfigErrors name the key."""
    files = {key: required_path(cfg, key, USAGE) for key in ("fixed", "moving")}
    for key in ("fixed_label", "moving_label"):
        path = optional_path(cfg, key)
        if path is not None:
            files[key] = path
    if "fixed_label" in files and "moving_label" not in files:
        raise ConfigError(f"fixed_label={files['fixed_label']} needs moving_label=... (the metrics compare the "
                          "fixed label map with the moving one read through the transform)")
    out = required_path(cfg, "out", USAGE)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={out} is a file; give the folder to write the registration to")
    targets = {(out / name).resolve() for name in outputs}
    for key, path in files.items():
        if path.resolve() in targets:
            raise ConfigError(f"out={out} would overwrite the input {key}={path}; write to another folder")
    return files, out


def check_grids(files: dict[str, Path]) -> dict[str, Any]:
    """Every input's header (:func:`data.io.read_grid`), each label map on its image's grid, both
    images resampleable; returns the grids by key. DataErrors name the files."""
    from data.io import check_itk_header, check_label_grid, read_grid
    from data.transforms import check_affine

    grids = {key: read_grid(path) for key, path in files.items()}
    for path in files.values():
        check_itk_header(path)  # the ITK exports must act on the image nibabel reads
    for key in ("fixed", "moving"):
        check_affine(files[key], grids[key].affine)
        label = f"{key}_label"
        if label in grids:
            check_label_grid(grids[label], grids[key], f"{files[label]}: label map {label}", f"{key}={files[key]}")
    return grids


def device_of(cfg: DictConfig) -> torch.device:
    name = str(cfg.get("device", "auto"))
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device={name}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name}: no CUDA device is available here; use device=cpu or device=auto")
    return device


def model_of(cfg: DictConfig):
    """The method and its record for the outputs: a checkpoint's path, or the model config; a
    conditional network's test code (``reg_code=``) is applied and recorded."""
    from app.build import apply_reg_code, build_model
    from app.checkpoints import load_model_from_checkpoint

    if cfg.get("ckpt_path"):
        model, record = load_model_from_checkpoint(cfg.ckpt_path), {"ckpt_path": str(Path(str(cfg.ckpt_path)).resolve())}
    else:
        model, record = build_model(cfg), OmegaConf.to_container(cfg.model, resolve=True)
    apply_reg_code(model, cfg)
    settings = model.test_settings() if hasattr(model, "test_settings") else {}
    return model, {**record, **settings}


def pair_batch(files: dict[str, Path], grids: dict[str, Any], volumes: dict[str, Any], normalize: bool):
    """The batch the method registers: both images prepared as a pairs CSV prepares them, the moving
    image and label map on the fixed grid in world space (:mod:`data.pairs_csv`)."""
    from data.batch import pair_item
    from data.io import volume_id
    from data.pair_inputs import moving_on_fixed_grid, prepared_image
    from data.signature import file_signature, signature

    fixed = prepared_image(files["fixed"], volumes["fixed"].array, normalize)
    moving = moving_on_fixed_grid(prepared_image(files["moving"], volumes["moving"].array, normalize),
                                  grids["moving"], grids["fixed"], "image", files["moving"], files["fixed"])
    labels = {}
    if "fixed_label" in volumes:
        labels = {"fixed_label": volumes["fixed_label"].array[None],
                  "moving_label": moving_on_fixed_grid(volumes["moving_label"].array, grids["moving_label"],
                                                       grids["fixed"], "label", files["moving_label"])[None]}
    item = pair_item(fixed[None], moving[None], spacing=grids["fixed"].spacing, fixed_affine=grids["fixed"].affine,
                     fixed_id=volume_id(files["fixed"]), moving_id=volume_id(files["moving"]),
                     pair_signature=signature({k: file_signature(v) for k, v in files.items()}), **labels)
    return {k: (v.unsqueeze(0) if isinstance(v, torch.Tensor) else [v]) for k, v in item.items()}


def check_size(model, files: dict[str, Path], shape: tuple[int, ...]) -> None:
    from data.io import DataError

    minimum = model.min_input_size()
    for axis, n in enumerate(shape):
        if n < minimum:
            raise DataError(f"{files['fixed']}: shape {tuple(shape)} has {n} voxel(s) on axis {axis}, fewer than the "
                            f"{minimum} that model {model.method} needs ({model.min_input_size_reason()})")


def check_voxel_order(cfg: DictConfig, model, files: dict[str, Path], fixed) -> None:
    """A network (``ckpt_path``, or the ``model.init_from`` that starts a classical method) sees the
    fixed grid's voxels, not world space (the moving image is resampled onto that grid): a fixed image
    stored in another voxel order than its training data would be registered with its axes swapped or
    flipped. One ConfigError naming both orders (:func:`app.checkpoints.refuse_voxel_order`)."""
    from app.checkpoints import refuse_normalisation, refuse_voxel_order
    from data.geometry import axcodes

    given = axcodes(fixed.affine)
    normalisation = "percentile" if bool(cfg.get("normalize", True)) else "none"  # data.pair_inputs.prepared_image
    for key, net in (("ckpt_path", model), ("model.init_from", getattr(model, "init_model", None))):
        refuse_normalisation(getattr(net, "trained_intensity_normalisation", None), normalisation,
                             OmegaConf.select(cfg, key), key, "register.py normalises them",
                             "register.py normalises 'percentile' (normalize=true) or not at all (normalize=false, "
                             "images already in [0, 1]); use eval.py with a data config normalised as the network's")
        trained = getattr(net, "trained_voxel_axes", None)
        if trained:
            refuse_voxel_order(trained, given, OmegaConf.select(cfg, key), key,
                               f"fixed={files['fixed']} is stored in {given}",
                               f"store the fixed image in voxel order {trained} (the same world-space image, its "
                               f"voxel axes reordered, e.g. nibabel's as_reoriented) or use a classical method")
