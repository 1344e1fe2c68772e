"""Checkpoints are data: reading a ``train.py`` checkpoint (``torch.load(weights_only=True)``, checked)
and rebuilding the model it describes; Lightning's own loads go through the same reader."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from app.errors import ConfigError, one_line, root_cause

__all__ = ["CHECKPOINT_SAFE_GLOBALS", "read_checkpoint", "load_model_from_checkpoint", "check_voxel_axes",
           "check_trained_data", "model_trained_data", "refuse_normalisation",
           "refuse_voxel_order", "check_same_settings", "safe_checkpoint_io"]

# Types our checkpoints hold beyond what ``torch.load(weights_only=True)`` accepts by default
# (tensors, numbers, strings, None, dtypes, lists, tuples, dicts, OrderedDicts): none. Inspected:
# a train.py checkpoint holds the weights, Adam states, Lightning's loop counters and callback
# states, the datamodule's hyper-parameters, the loader's RNG states (data/loaders.py stores
# numpy's state as a tensor for this reason) and the `registration` dict of plain values;
# RegistrationModule.on_save_checkpoint keeps it so. A type added here must be plain data.
CHECKPOINT_SAFE_GLOBALS: tuple[Any, ...] = ()


def _load_error(exc: BaseException) -> str:
    """A short reason for a refused / unreadable checkpoint (torch's weights-only message is long)."""
    text = one_line(exc)
    if "Weights only load failed" in text or "nsupported" in text:
        import re

        m = re.search(r"unsupported (?:global:? )?(GLOBAL \S+?)\.?(?:\s|$)|unsupported (operand \S+)", text, re.I)
        what = next((g for g in m.groups() if g), "") if m else ""
        return ("it holds objects that are not plain data (a pickle that would run code on loading), so it "
                "is refused unread" + (f" ({what})" if what else ""))
    return text if len(text) <= 300 else text[:300] + " ..."


def read_checkpoint(path: str | os.PathLike, key: str = "ckpt_path") -> dict[str, Any]:
    """A checkpoint written by ``train.py``, read as data: ``torch.load(weights_only=True)`` with
    :data:`CHECKPOINT_SAFE_GLOBALS` (a pickle that would execute code is refused without running
    it), then checked: this project's ``registration`` metadata, the displacement convention, a
    ``state_dict`` of finite weights. Any failure is ONE :class:`ConfigError` naming ``key`` (the
    config key that gave the path: ``ckpt_path``, ``model.init_from``) and the file."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{key}: no checkpoint file at {path}")
    try:
        with torch.serialization.safe_globals(list(CHECKPOINT_SAFE_GLOBALS)):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable or refused file
        raise ConfigError(f"{key}: cannot read checkpoint {path}: {_load_error(exc)}") from None
    _check_checkpoint(ckpt, path, key)
    return ckpt


def _check_checkpoint(ckpt: Any, path: Path, key: str) -> None:
    import torch

    from spatial import DISPLACEMENT_CONVENTION

    meta = ckpt.get("registration") if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict) or not (meta.get("target") or meta.get("model_config")):
        raise ConfigError(f"{key}: {path} is not a checkpoint written by this project's train.py "
                          "(no 'registration' model config inside)")
    if meta.get("displacement_convention") != DISPLACEMENT_CONVENTION:
        raise ConfigError(f"{key}: {path} uses another displacement convention "
                          f"({meta.get('displacement_convention')!r}); expected {DISPLACEMENT_CONVENTION!r}")
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        raise ConfigError(f"{key}: {path} holds no 'state_dict' (weights) beside its model description")
    bad = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
           and not bool(torch.isfinite(v).all())]
    if bad:
        raise ConfigError(f"{key}: {path} holds non-finite weights ({', '.join(bad[:3])}"
                          f"{' ...' if len(bad) > 3 else ''}); it is not used")


_HYDRA_KEYS = ("_target_", "_recursive_", "_convert_", "_partial_")


def model_description(ckpt: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(class path, constructor arguments)`` of the model a checkpoint holds: format 2 (this
    code: ``registration.target`` and ``registration.hyper_parameters``, which Lightning's own
    ``hyper_parameters`` repeats) or format 1 (earlier
    ``train.py``: ``registration.model_config``, a resolved Hydra config of the module)."""
    meta = ckpt["registration"]
    if meta.get("target"):
        return str(meta["target"]), dict(meta.get("hyper_parameters") or ckpt.get("hyper_parameters") or {})
    config = dict(meta["model_config"])
    return str(config.get("_target_")), {k: v for k, v in config.items() if k not in _HYDRA_KEYS}


def load_model_from_checkpoint(path: str | os.PathLike, key: str = "ckpt_path"):
    """Rebuild a model from a checkpoint written by ``train.py`` without being told its config.

    Read as data (:func:`read_checkpoint`); the class must be a ``RegistrationModule`` and every
    part it builds within :data:`models.specs.ALLOWED_TARGETS` (a file names no code to run).
    Errors name ``key`` (``ckpt_path`` for eval.py, ``model.init_from`` for a refined classical
    method) and the file."""
    from models.module import RegistrationModule
    from models.specs import locate

    path = Path(path)
    ckpt = read_checkpoint(path, key)
    target, kwargs = model_description(ckpt)
    try:
        cls = locate(target)
        if not (isinstance(cls, type) and issubclass(cls, RegistrationModule)):
            raise ValueError(f"{target} is not a RegistrationModule")
        model = cls(**kwargs)
    except Exception as exc:  # noqa: BLE001 - a description of another version of the code
        raise ConfigError(f"{key}: {path}: its stored model config cannot be built here "
                          f"({one_line(root_cause(exc))})") from exc
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        detail = one_line(exc)
        detail = detail if len(detail) <= 300 else detail[:300] + " ..."
        raise ConfigError(f"{key}: {path} does not match its stored model config: {detail}") from exc
    model.trained_voxel_axes = ckpt["registration"].get("voxel_axes")  # see check_voxel_axes
    model.trained_intensity_normalisation = ckpt["registration"].get("intensity_normalisation")  # and check_trained_data
    return model


def check_trained_data(trained: Mapping[str, Any], datamodule: Any, path: str | os.PathLike,
                       key: str = "ckpt_path") -> None:
    """A network sees the voxels and the intensities of its input: data given in another voxel order
    (:func:`check_voxel_axes`) or with its intensities brought to [0, 1] another way than the data it
    was trained on (``datamodule.intensity_normalisation``: ``minmax`` puts an OASIS white matter at
    0.43 where ``percentile`` puts it at 0.9) is refused with one ConfigError naming both and the
    setting that fixes it: its low Dice would read as a domain shift. ``trained``: the checkpoint's
    ``registration`` record (``voxel_axes``, ``intensity_normalisation``); nothing to compare where
    either side is unknown (a checkpoint from before the record, generated data)."""
    check_voxel_axes(trained.get("voxel_axes"), datamodule, path, key)
    trained_norm = trained.get("intensity_normalisation")
    refuse_normalisation(trained_norm, getattr(datamodule, "intensity_normalisation", None), path, key,
                         "this data= normalises them",
                         f"set data.normalize={trained_norm} (a pairs CSV: data.normalize=true is 'percentile', false "
                         f"'none') or train on data normalised so")


def model_trained_data(model: Any) -> dict[str, Any]:
    """The ``registration`` record of the data a loaded network (:func:`load_model_from_checkpoint`)
    was trained on, as :func:`check_trained_data` reads it."""
    return {"voxel_axes": getattr(model, "trained_voxel_axes", None),
            "intensity_normalisation": getattr(model, "trained_intensity_normalisation", None)}


def refuse_normalisation(trained: str | None, given: str | None, path: str | os.PathLike, key: str,
                         what: str, remedy: str) -> None:
    """The one intensity-normalisation error (see :func:`check_trained_data`); ``what`` says where
    ``given`` comes from, ``remedy`` how to make them agree. Nothing when either is unknown."""
    if trained and given and str(trained) != str(given):
        raise ConfigError(f"{key}: {path} was trained on images normalised '{trained}', but {what} '{given}': a "
                          f"network sees intensities, so its results would mix a shift of the pipeline into the "
                          f"data's; {remedy}")


def check_voxel_axes(trained: str | None, datamodule: Any, path: str | os.PathLike, key: str = "ckpt_path") -> None:
    """A network trained on data in voxel order ``trained`` (recorded in the checkpoint at ``path``:
    ``model.trained_voxel_axes`` of :func:`load_model_from_checkpoint`, or ``registration.voxel_axes``
    of :func:`read_checkpoint`) sees its input's voxels, not world space: data whose voxel order
    (``datamodule.voxel_axes``, e.g. ``RAS``) differs would be registered with its axes swapped or
    flipped, and its low Dice read as a domain shift. ConfigError naming both orders and the setting
    that reorients the data; nothing to compare when either order is unknown."""
    unplaced = getattr(datamodule, "unplaced_volume", lambda: None)()
    if trained and unplaced is not None:
        raise ConfigError(f"{key}: {path} is a network trained on data in voxel order {trained}, but {unplaced[0]}: "
                          f"{unplaced[1]}, so its voxel order here is a reader's guess and the network could see it "
                          "flipped; store the data as NIfTI with its true orientation (classical methods run on it "
                          "as it is)")
    given = getattr(datamodule, "voxel_axes", None)
    refuse_voxel_order(trained, given, path, key, f"this data= gives {given}",
                       f"give the data in voxel order {trained} (data.orientation={trained} reorients OASIS and the "
                       f"Klein sets; a pairs CSV's files must be stored so) or train on data in {given}")


def refuse_voxel_order(trained: str | None, given: str | None, path: str | os.PathLike, key: str, what: str,
                       remedy: str) -> None:
    """The one voxel-order error (see :func:`check_voxel_axes`): ``what`` says where ``given`` comes
    from, ``remedy`` how to make the orders agree. Nothing when either order is unknown."""
    if trained and given and str(trained) != str(given):
        raise ConfigError(f"{key}: {path} was trained on data in voxel order {trained}, {what}: a network sees "
                          f"voxels, not world space; {remedy}")


# settings that may differ between a checkpoint and the run that resumes or tests it: what is logged
# (model), and where data lives or how it is loaded, and the test set (data); the training and
# validation files themselves are compared by name and size (_check_same_training_inputs)
RESUMABLE_MODEL_KEYS = ("hd95", "vis_every_n_epochs", "verbose")
# and, when only testing, how it was optimised (the loss stays: it decides the paradigm reported) and
# how labels are warped for scoring (a resumed training keeps it: val/dice picks the best epoch, and
# epochs scored nearest and linear would compete)
TESTABLE_MODEL_KEYS = (*RESUMABLE_MODEL_KEYS, "label_interp", "optimizer", "scheduler")
RESUMABLE_DATA_KEYS = ("num_workers", "cache_dir", "root", "n_test", "test_pairs", "test_csv")


def _flat(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}"))
        return out
    return {prefix: value}


def check_same_settings(ckpt: dict[str, Any], model: Any, datamodule: Any, path: str | os.PathLike,
                        key: str = "ckpt_path") -> None:
    """Refuse to resume (or test) the checkpoint ``ckpt`` (read from ``path``) with another model or
    data config than it was trained with: Lightning would restore its weights, optimiser state and
    counters into the model and data built from the new config, the checkpoints written afterwards
    would record only the new one, and a network trained as one method would be reported as
    another. Compares the model's hyper-parameters (except :data:`RESUMABLE_MODEL_KEYS`; without a
    ``datamodule``, testing only: :data:`TESTABLE_MODEL_KEYS`) and, with a ``datamodule`` (resuming
    a training), the data's (except :data:`RESUMABLE_DATA_KEYS`).
    ConfigError naming ``key``, the file and the differing settings."""
    from models.health import plain_data

    free = RESUMABLE_MODEL_KEYS if datamodule is not None else TESTABLE_MODEL_KEYS
    pairs = [("model", ckpt.get("registration", {}).get("hyper_parameters"), model.hparams, free)]
    inputs = ckpt.get("registration", {}).get("training_inputs")
    if datamodule is not None and isinstance(ckpt.get("datamodule_hyper_parameters"), dict):
        # with its training files recorded (compared below), a moved pairs CSV may be named anew too
        free_data = RESUMABLE_DATA_KEYS + (("train_csv", "val_csv") if inputs is not None else ())
        pairs.append(("data", ckpt["datamodule_hyper_parameters"], datamodule.hparams, free_data))
    diffs = []
    for name, was, now, free in pairs:
        if not isinstance(was, dict):
            continue
        was_flat = _flat({k: v for k, v in was.items() if k not in free}, name)
        now_flat = _flat(plain_data({k: v for k, v in dict(now).items() if k not in free}, name), name)
        for k in sorted(set(was_flat) | set(now_flat)):
            if was_flat.get(k, "<unset>") != now_flat.get(k, "<unset>"):
                diffs.append(f"{k}: {was_flat.get(k, '<unset>')!r} -> {now_flat.get(k, '<unset>')!r}")
    if datamodule is not None:
        _check_same_training_inputs(inputs, datamodule, path, key)
    if diffs:
        raise ConfigError(f"{key}: {path} was trained with other settings ({'; '.join(diffs[:5])}"
                          f"{'; ...' if len(diffs) > 5 else ''}): resuming or testing it under these would mix two "
                          "configurations; give the settings it was trained with (its experiment= and overrides), "
                          "or train afresh into another paths.output_dir")


def _check_same_training_inputs(was: Any, datamodule: Any, path: str | os.PathLike, key: str) -> None:
    """The training and validation data a resume reads are those the checkpoint was trained on
    (``training_inputs()``: file names and sizes, so a moved dataset passes and another dataset, or
    files rewritten since, under the same settings does not). Nothing to compare when the checkpoint
    has no record (generated data, an older checkpoint)."""
    if was is None:
        return
    now = datamodule.training_inputs()
    norm = lambda rows: [json.dumps(r, default=str) for r in (rows or [])]  # noqa: E731
    was_rows, now_rows = norm(was), norm(now)
    if was_rows == now_rows:
        return
    first = next((i for i, (a, b) in enumerate(zip(was_rows, now_rows)) if a != b), min(len(was_rows), len(now_rows)))
    what = (f"entry {first + 1}: {was_rows[first] if first < len(was_rows) else '<none>'} -> "
            f"{now_rows[first] if first < len(now_rows) else '<none>'}")
    raise ConfigError(f"{key}: {path} was trained on other data ({len(was_rows)} training/validation entries, now "
                      f"{len(now_rows)}; first difference at {what}): resuming would continue the training on "
                      "different images; give the data it was trained on, or train afresh into another "
                      "paths.output_dir")


def rebase_checkpoint_dirs(ckpt: dict[str, Any], path: str | os.PathLike,
                           target: str | os.PathLike | None = None) -> dict[str, Any]:
    """The checkpoint callbacks' records (``dirpath``, the best and top-k files) of a checkpoint read
    from ``path``, pointed at the folder the resumed run keeps its checkpoints in: ``target`` (the
    run's checkpoint folder, when known) or the folder the file lies in. Lightning drops a record
    whose ``dirpath`` is not the callback's, and the resumed run would then pick its "best"
    checkpoint among the epochs after the resume only, naming it in summary.json as the run's best.
    So: a run folder moved or copied since the save (the named files lie beside ``path``) is
    rewritten to where it is now; a run resumed into another output folder gets the named files
    copied into ``target`` (the old run's files stay untouched; Lightning replaces the copies as
    better epochs come). A record whose files are in neither place, or whose copy would overwrite
    another file of that name in ``target``, is left as it is (Lightning starts it afresh)."""
    import shutil

    here = Path(path).resolve().parent
    dest = Path(target).resolve() if target is not None else here
    for state in (ckpt.get("callbacks") or {}).values():
        old = state.get("dirpath") if isinstance(state, dict) else None
        if not old or Path(old).resolve() == dest:
            continue
        named = [p for p in [state.get("best_model_path")] + list((state.get("best_k_models") or {}).keys()) if p]

        def source(p: str) -> Path | None:
            for candidate in (here / Path(p).name, Path(p)):
                if candidate.is_file():
                    return candidate
            return None

        sources = {p: source(p) for p in named}
        if any(v is None for v in sources.values()):
            continue  # not this run's files: leave the record (Lightning then starts it afresh)
        clash = [p for p, src in sources.items() if (dest / src.name).exists()
                 and (dest / src.name).resolve() != src.resolve()]
        if clash:
            continue
        for src in sources.values():
            if (dest / src.name).resolve() != src.resolve():
                dest.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / src.name)

        def moved(value: Any) -> Any:
            if isinstance(value, str) and value and Path(value).parent == Path(old):
                return str(dest / Path(value).name)
            return value

        for k, v in list(state.items()):
            if k == "dirpath":
                state[k] = str(dest)
            elif k == "best_k_models" and isinstance(v, dict):
                state[k] = {moved(p): score for p, score in v.items()}
            else:
                state[k] = moved(v)
    return ckpt


def safe_checkpoint_io(key: str = "ckpt_path", target: str | os.PathLike | None = None):
    """A Lightning ``CheckpointIO`` whose every load is :func:`read_checkpoint` (weights only, the
    allow-list, the checks; ``weights_only=False`` is never honoured): resuming ``train.py
    ckpt_path=...`` and testing the best checkpoint read checkpoints as data, with one error.
    ``target``: the run's checkpoint folder (:func:`rebase_checkpoint_dirs`)."""
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    class SafeCheckpointIO(TorchCheckpointIO):
        def load_checkpoint(self, path, map_location=None, weights_only=None):  # noqa: ARG002
            return rebase_checkpoint_dirs(read_checkpoint(path, key), path, target)

    return SafeCheckpointIO()
