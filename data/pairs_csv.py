"""Bring your own data: a CSV of image pairs.

CSV format (header row required, column order free, extra columns ignored)::

    fixed,moving,fixed_label,moving_label
    sub01.nii.gz,sub02.nii.gz,sub01_seg.nii.gz,sub02_seg.nii.gz

``fixed`` and ``moving`` are required; ``fixed_label`` and ``moving_label`` are optional
but come together (both columns, and a value in both for every row). Relative paths are
resolved against the CSV's folder. Item ids are the file names without ``.nii``/``.nii.gz``
when those are unique within the CSV; files whose names collide (``sub0/t1.nii.gz``,
``sub1/t1.nii.gz``) get their path relative to the CSV's folder without the extension
(``sub0/t1``, ``sub1/t1``). A CSV listing the same (fixed, moving) files twice is refused.

Validation happens in two steps so that a run never stops half-way with partial results:

* construction checks every row from the headers only (cheap): files exist and parse, hold
  one scalar channel (no vector/RGB image), are 3-D; fixed and moving share one grid in world
  space, and so does each label map with its image: the same shape and the same voxel-to-world
  affine (:func:`data.io.grid_mismatch`: voxel sizes within ``1e-3`` mm, axis directions within
  ``1e-4``, origins within ``1e-3`` mm). Pairs are registered in voxel space, so a moving image
  stored in another orientation (LAS vs RAS), shifted (another origin) or with a label map
  flipped against its image would be registered and scored wrongly: each is one DataError
  naming both files and the difference (resample onto the fixed image's grid first);
* ``resample="fixed"`` (``data.resample=fixed``) lifts the fixed/moving check: each moving image
  (and its label map) is resampled onto its fixed image's grid in world space when the pair is
  loaded (:func:`moving_on_fixed_grid`: trilinear, nearest neighbour for labels, 0 outside the
  moving image); the setting is part of every pair's signature. Each label map must still share
  its image's grid;
* :meth:`PairsCSVDataset.validate` loads each distinct file once and checks the voxels
  (NaN/inf, whole non-negative labels with some foreground and at most
  :data:`data.io.MAX_LABEL_VALUES` distinct values, a non-constant image that is not all zeros
  after normalisation, the [0, 1] range when ``normalize=False``). ``check="full"`` (the
  default) runs it in the constructor.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from data.batch import PairItem, pair_item
from data.io import (
    SPACING_TOLERANCE,  # re-exported: one tolerance (mm) for "same grid" everywhere
    DataError,
    Grid,
    check_label_grid,
    grid_mismatch,
    load_volume,
    normalize_intensity,
    read_grid,
)
from data.geometry import axcodes
from data.pair_inputs import moving_on_fixed_grid, prepared_image, require_scored_labels_kept
from data.pairs_csv_rows import LABEL_COLUMNS, REQUIRED_COLUMNS, assign_ids, read_pairs_csv
from data.signature import file_signature, signature
from data.transforms import check_affine

__all__ = ["PairsCSVDataset", "SPACING_TOLERANCE", "RESAMPLE", "prepared_image", "moving_on_fixed_grid"]

# what normalize=True does (recorded in every pair's signature: other settings, other results)
_NORMALIZE_DEFAULTS = {k: v.default for k, v in inspect.signature(normalize_intensity).parameters.items()
                       if v.default is not inspect.Parameter.empty}
_CHECKS = ("full", "header")
RESAMPLE = (None, "fixed")  # data.resample: refuse pairs on two grids, or resample moving onto the fixed grid


class PairsCSVDataset(Dataset):
    """Image pairs listed in a CSV file; items follow the batch contract.

    Args:
        csv_path: the CSV file (see module docstring for the format).
        normalize: rescale each image with :func:`data.io.normalize_intensity` (percentiles
            0.5/99.5 over nonzero voxels). With ``False`` images are used as stored and must
            already lie in [0, 1] (checked by :meth:`validate` and on loading).
        check: ``"full"`` validates headers and voxel values at construction;
            ``"header"`` only headers (call :meth:`validate` before producing results).
        resample: ``None`` (default): fixed and moving must share one grid in world space;
            ``"fixed"``: each moving image and label map is resampled onto its fixed image's grid
            in world space (:func:`moving_on_fixed_grid`).

    Item ``i`` follows the batch contract (:mod:`data.batch`); labels with label columns;
    ``spacing`` and ``fixed_affine`` are the fixed image's header's; ``fixed_id``, ``moving_id``
    are unique per file (see the module docstring); ``pair_signature`` is :meth:`pair_signature`.

    Raises:
        DataError: on any problem, naming the CSV, its row (1-based data row, with the file
            line) and the files involved.
    """

    def __init__(self, csv_path: str | os.PathLike, normalize: bool = True, check: str = "full",
                 resample: str | None = None):
        if check not in _CHECKS:
            raise ValueError(f"PairsCSVDataset() 'check' must be one of {_CHECKS}, got {check!r}")
        if resample not in RESAMPLE:
            raise DataError(f"data.resample must be null or 'fixed', got {resample!r}")
        self.csv_path = Path(csv_path)
        self.normalize = bool(normalize)
        self.resample = resample
        self.rows: list[dict[str, Path]] = []
        self.has_labels = False
        self._headers: dict[Path, Grid] = {}
        self._validated = False
        self._max_label: int | None = None
        self.rows, self.has_labels = read_pairs_csv(self.csv_path)
        self._ids = assign_ids(self.rows, self.csv_path)
        self._check_headers()
        if check == "full":
            self.validate()

    def pair_id_of(self, row: dict) -> tuple[str, str]:
        """``(fixed_id, moving_id)`` of a CSV row."""
        return self._ids[row["fixed"].resolve()], self._ids[row["moving"].resolve()]

    def pair_ids(self) -> list[tuple[str, str]]:
        """``(fixed_id, moving_id)`` of every pair, in CSV order (unique)."""
        return [self.pair_id_of(row) for row in self.rows]

    def input_files(self) -> list[Path]:
        """The CSV and every file it lists (images and label maps)."""
        files = [self.csv_path]
        for row in self.rows:
            files.extend(v for k, v in row.items() if not k.startswith("_"))
        return list(dict.fromkeys(files))

    def pair_signature(self, index: int) -> str:
        """Signature of pair ``index``'s inputs (:mod:`data.signature`): resolved path, size and
        mtime of each of its files, the intensity normalisation and ``resample`` when set."""
        row = self.rows[index]
        cols = REQUIRED_COLUMNS + (LABEL_COLUMNS if self.has_labels else ())
        description = {
            "dataset": "pairs_csv",
            "files": {col: file_signature(row[col]) for col in cols},
            "normalize": _NORMALIZE_DEFAULTS if self.normalize else "clip [0, 1]",
        }
        if self.resample is not None:
            description["resample"] = self.resample
        return signature(description)

    def _where(self, row: dict) -> str:
        return f"{self.csv_path}: row {row['_row']} (line {row['_line']})"

    def _header(self, path: Path, row: dict, col: str):
        if path not in self._headers:
            try:
                self._headers[path] = read_grid(path)
            except DataError as err:
                raise DataError(f"{self._where(row)}, column '{col}': {err}") from err
        return self._headers[path]

    def _check_headers(self) -> None:
        for row in self.rows:
            fixed = self._header(row["fixed"], row, "fixed")
            moving = self._header(row["moving"], row, "moving")
            where = self._where(row)
            if self.resample == "fixed":
                try:
                    check_affine(row["moving"], moving.affine)
                    check_affine(row["fixed"], fixed.affine)
                except DataError as err:
                    raise DataError(f"{where}: {err}") from None
            elif fixed.shape != moving.shape:
                raise DataError(
                    f"{where}: fixed {row['fixed']} has shape {fixed.shape} but moving {row['moving']} has "
                    f"shape {moving.shape}; a pair must share one grid (resample first, or set data.resample=fixed)"
                )
            diff = None if self.resample else grid_mismatch(fixed.affine, moving.affine, fixed.spacing, moving.spacing)
            if diff:
                raise DataError(
                    f"{where}: fixed {row['fixed']} and moving {row['moving']} are not on one grid in world "
                    f"space ({diff}); resample the moving image onto the fixed image's grid first, or set "
                    f"data.resample=fixed"
                )
            if self.has_labels:
                for img_col, lab_col in zip(REQUIRED_COLUMNS, LABEL_COLUMNS):
                    label = self._header(row[lab_col], row, lab_col)
                    check_label_grid(label, self._headers[row[img_col]], f"{where}: {lab_col} {row[lab_col]}",
                                     f"{img_col} {row[img_col]}")

    # --------------------------------------------------------------- validation
    def validate(self) -> None:
        """Load every distinct file once and check voxel values; raise DataError on the first problem.

        Checks, beyond the header checks of construction: finite voxels; labels whole,
        non-negative, not all zero, at most :data:`data.io.MAX_LABEL_VALUES` distinct values;
        images not constant and not all zeros after normalisation (a binary mask); with
        ``normalize=False`` images within [0, 1]; with ``resample="fixed"`` each pair's moving
        image overlaps its fixed image's grid in world space (it is resampled once to see) and its
        moving label map keeps, on that grid, every label its fixed label map holds.
        Also records the largest label (:attr:`num_labels`). Run it before writing any result.
        """
        max_label = -1
        seen: set[Path] = set()
        for row in self.rows:
            cols = REQUIRED_COLUMNS + (LABEL_COLUMNS if self.has_labels else ())
            for col in cols:
                path = row[col]
                if path in seen:
                    continue
                seen.add(path)
                kind = "label" if col in LABEL_COLUMNS else "image"
                try:
                    vol = load_volume(path, kind=kind)
                    if kind == "image":
                        self._prepared(path, vol.array)
                    elif vol.array.size:
                        max_label = max(max_label, int(vol.array.max()))
                except DataError as err:
                    raise DataError(f"{self._where(row)}, column '{col}': {err}") from err
            if self.resample:  # the moving image must overlap the fixed grid, its label map keep the scored labels
                checks = {"moving": lambda: self._moving_image(row)}
                if self.has_labels:
                    checks["moving_label"] = lambda: self._moving_label(
                        row, load_volume(row["fixed_label"], kind="label").array)
                for col, check in checks.items():
                    try:
                        check()
                    except DataError as err:
                        raise DataError(f"{self._where(row)}, column '{col}': {err}") from err
        self._max_label = max_label if self.has_labels else None
        self._validated = True

    def _prepared(self, path: Path, array: np.ndarray) -> np.ndarray:
        """The image as items hold it (:func:`prepared_image`)."""
        return prepared_image(path, array, self.normalize)

    def _moving_image(self, row: dict) -> np.ndarray:
        """The moving image of ``row`` as items hold it: prepared on its own grid, then on the fixed
        grid (:func:`moving_on_fixed_grid` with ``resample="fixed"``)."""
        array = self._prepared(row["moving"], load_volume(row["moving"], kind="image").array)
        if self.resample:
            array = moving_on_fixed_grid(array, self._headers[row["moving"]], self._headers[row["fixed"]], "image",
                                         row["moving"], row["fixed"])
        return array

    def _moving_label(self, row: dict, fixed_label: np.ndarray) -> np.ndarray:
        """The moving label map of ``row`` as items hold it: on the fixed grid, refused when that
        resampling loses a label ``fixed_label`` holds (:func:`require_scored_labels_kept`)."""
        stored = load_volume(row["moving_label"], kind="label").array
        if not self.resample:
            return stored
        array = moving_on_fixed_grid(stored, self._headers[row["moving_label"]], self._headers[row["fixed"]],
                                     "label", row["moving_label"])
        require_scored_labels_kept(stored, array, fixed_label, row["moving_label"], row["fixed_label"])
        return array

    @property
    def validated(self) -> bool:
        """Whether :meth:`validate` has run successfully."""
        return self._validated

    @property
    def num_labels(self) -> int | None:
        """Largest label value + 1 over all label files (None without labels); loads labels once."""
        if not self.has_labels:
            return None
        if self._max_label is None:
            max_label = 0
            seen: set[Path] = set()
            for row in self.rows:
                for col in LABEL_COLUMNS:
                    if row[col] not in seen:
                        seen.add(row[col])
                        arr = load_volume(row[col], kind="label").array
                        if arr.size:
                            max_label = max(max_label, int(arr.max()))
            self._max_label = max_label
        return self._max_label + 1

    # ------------------------------------------------------------------ access
    @property
    def shapes(self) -> list[tuple[int, int, int]]:
        """Spatial shape of each pair (from headers)."""
        return [self._headers[row["fixed"]].shape for row in self.rows]

    @property
    def axes(self) -> list[str]:
        """Voxel axis codes of each pair's fixed image (from headers, :func:`data.geometry.axcodes`)."""
        return [axcodes(self._headers[row["fixed"]].affine) for row in self.rows]

    @property
    def spacings(self) -> list[tuple[float, float, float]]:
        """Fixed-image spacing (mm) of each pair (from headers)."""
        return [self._headers[row["fixed"]].spacing for row in self.rows]

    def pair_paths(self, index: int) -> dict[str, Path]:
        """The resolved file paths of pair ``index`` (keys: the CSV columns used)."""
        return {k: v for k, v in self.rows[index].items() if not k.startswith("_")}

    def __len__(self) -> int:
        return len(self.rows)

    def _image_and_affine(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        vol = load_volume(path, kind="image")
        return self._prepared(path, vol.array)[None], vol.affine

    def __getitem__(self, index: int) -> PairItem:
        row = self.rows[index]
        try:
            fixed, fixed_affine = self._image_and_affine(row["fixed"])
            moving = self._moving_image(row)[None]
            labels = {}
            if self.has_labels:
                fixed_label = load_volume(row["fixed_label"], kind="label").array
                labels = {"fixed_label": fixed_label[None], "moving_label": self._moving_label(row, fixed_label)[None]}
        except DataError as err:
            raise DataError(f"{self._where(row)}: {err}") from err
        fixed_id, moving_id = self.pair_id_of(row)
        return pair_item(fixed, moving, **labels, spacing=self._headers[row["fixed"]].spacing,
                         fixed_affine=fixed_affine, fixed_id=fixed_id, moving_id=moving_id,
                         pair_signature=self.pair_signature(index))

    def __repr__(self) -> str:
        resample = f", resample={self.resample!r}" if self.resample else ""
        return f"PairsCSVDataset({str(self.csv_path)!r}, pairs={len(self)}, labels={self.has_labels}{resample})"

