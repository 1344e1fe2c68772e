"""Dataset layouts on disk: where each volume's image and label map are, and which
``(fixed, moving)`` pairs each split registers (:mod:`data.oasis`, :mod:`data.klein`).

A layout never opens a NIfTI file: discovery only looks at names, so a wrong tree fails at once
with one :class:`~data.io.DataError` line naming the root and the layout expected (and the
layout the tree looks like, when it is another known one).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

from data.io import DataError, volume_id

__all__ = [
    "NIFTI_EXTENSIONS",
    "VolumeRef",
    "Layout",
    "LAYOUTS",
    "register_layout",
    "layout_class",
    "detect_layouts",
    "find_image",
    "numbered",
    "Pair",
]

# tried in this order for every expected file; .img = Analyze/NIfTI pair (the original Klein release)
NIFTI_EXTENSIONS = (".nii.gz", ".nii", ".img")


@dataclass(frozen=True)
class VolumeRef:
    """One volume on disk: ``id`` (used as ``fixed_id``/``moving_id``), image and label paths."""

    id: str
    image: Path
    label: Path | None

    @property
    def key(self) -> str:
        """Unique readable name of the files (cache file names): ``<id>__<image file stem>``."""
        return f"{self.id}__{volume_id(self.image)}"


Pair = tuple[VolumeRef, VolumeRef]


def find_image(stem: Path) -> Path:
    """``stem`` + the first of :data:`NIFTI_EXTENSIONS` that exists (``.nii.gz`` if none does)."""
    for ext in NIFTI_EXTENSIONS:
        candidate = stem.parent / (stem.name + ext)
        if candidate.is_file():
            return candidate
    return stem.parent / (stem.name + NIFTI_EXTENSIONS[0])


def _strip_ext(name: str) -> str | None:
    for ext in NIFTI_EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return None


def numbered(folder: Path, pattern: str, files: bool = True) -> dict[tuple[int, ...], str]:
    """Names in ``folder`` fully matching regex ``pattern`` (files: without NIfTI extension),
    keyed by the tuple of their integer groups, e.g. ``{(1,): "m1", (10,): "m10"}``."""
    out: dict[tuple[int, ...], str] = {}
    if not folder.is_dir():
        return out
    regex = re.compile(pattern)
    for entry in folder.iterdir():
        if files:
            if not entry.is_file():
                continue
            name = _strip_ext(entry.name)
        else:
            name = entry.name if entry.is_dir() else None
        if name is None:
            continue
        m = regex.fullmatch(name)
        if m:
            out.setdefault(tuple(int(g) for g in m.groups()), name)
    return dict(sorted(out.items()))


LAYOUTS: dict[str, type["Layout"]] = {}


def register_layout(cls: type["Layout"]) -> type["Layout"]:
    """Class decorator: make a layout known to ``python -m data.check`` and to error hints."""
    LAYOUTS[cls.name] = cls
    return cls


def layout_class(name: str) -> type["Layout"]:
    import data.klein  # noqa: F401  (registers the layouts)
    import data.oasis  # noqa: F401

    key = str(name).lower()
    if key not in LAYOUTS:
        raise DataError(f"unknown dataset {name!r}; expected one of {sorted(LAYOUTS)}")
    return LAYOUTS[key]


def detect_layouts(root: Path) -> list[str]:
    """Names of the known layouts whose marker files ``root`` holds."""
    import data.klein  # noqa: F401
    import data.oasis  # noqa: F401

    return [name for name, cls in LAYOUTS.items() if cls.looks_like(root)]


class Layout:
    """A dataset's file tree. Subclasses set the class attributes and implement the methods.

    Attributes (class): ``name`` (``data=`` config and ``data.check`` name), ``title``,
    ``expected`` (one line describing the tree, used in errors), ``paper_subjects`` and
    ``paper_pairs`` (the counts in ``PAPER.md``, for checks), ``grid`` (the dataset's default
    preprocessing: :class:`~data.preprocess.PreprocessConfig` fields), ``pairs_share_grid`` (True when
    a pair's two files lie on one grid by construction, as LPBA40's pre-registered pairs: their
    preprocessed grids must then agree in world space too, :func:`data.volume_pairs.check_same_window`).
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    expected: ClassVar[str] = ""
    paper_subjects: ClassVar[int | None] = None
    paper_pairs: ClassVar[dict[str, int]] = {}
    # default preprocessing of this dataset (DataModule defaults; data.check's crop estimate)
    grid: ClassVar[dict[str, Any]] = dict(orientation="RAS", spacing=1.0, shape=None, crop_center="volume",
                                          normalize="percentile")
    pairs_share_grid: ClassVar[bool] = False

    def __init__(self, root: str | os.PathLike):
        self.root = Path(os.path.expanduser(str(root)))
        self.check_root()

    # -------------------------------------------------------------- discovery
    @classmethod
    def looks_like(cls, root: Path) -> bool:
        """Whether ``root`` holds this layout's marker files (cheap, names only)."""
        raise NotImplementedError

    def volumes(self) -> list[VolumeRef]:
        """Every distinct volume of the dataset, in the dataset's order."""
        raise NotImplementedError

    def subjects(self) -> list[str]:
        """Subject ids in the dataset's order (what the counts in PAPER.md count)."""
        return [v.id for v in self.volumes()]

    def pairs(self) -> list[Pair]:
        """The evaluated pairs of the paper's scheme (all ordered pairs for the Klein sets)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- errors
    def check_root(self) -> None:
        """Root exists, is a non-empty directory, and holds this layout (else one DataError line)."""
        root = self.root
        if not root.exists():
            raise DataError(
                f"{root}: {self.title} data directory not found (set paths.data_dir or REGISTRATION_DATA_DIR, "
                f"or data.root); expected {self.expected}"
            )
        if not root.is_dir():
            raise DataError(f"{root}: expected the {self.title} data directory, got a file")
        if not any(root.iterdir()):
            raise DataError(f"{root}: directory is empty; expected the {self.title} layout {self.expected}")
        if not self.looks_like(root):
            raise DataError(self.wrong_layout_message())

    def wrong_layout_message(self) -> str:
        others = [n for n in detect_layouts(self.root) if n != self.name]
        hint = ""
        if others:
            names = ", ".join(f"{LAYOUTS[n].title} (data={n})" for n in others)
            hint = f"; this looks like {names}"
        return f"{self.root}: no {self.title} files found; expected {self.expected}{hint}"

    def missing_files(self, volumes: Sequence[VolumeRef] | None = None) -> list[Path]:
        """Expected image/label files that do not exist (or are not files)."""
        out = []
        for v in self.volumes() if volumes is None else volumes:
            for p in (v.image, v.label):
                if p is not None and not p.is_file():
                    out.append(p)
        return out

    def require_files(self, volumes: Sequence[VolumeRef] | None = None) -> None:
        """DataError naming the first expected file that is missing."""
        missing = self.missing_files(volumes)
        if missing:
            more = f" (and {len(missing) - 1} more missing files)" if len(missing) > 1 else ""
            raise DataError(f"{missing[0]}: file not found; expected {self.expected}{more}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"
