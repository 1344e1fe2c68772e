"""OASIS: the neurite layout (414 subjects, 364 train / 50 val) and the Learn2Reg 2021 task 3 layout.

Neurite layout (``data=oasis``; the preprocessed OASIS-1 release of the VoxelMorph / neurite
authors)::

    ROOT/subjects.txt                        (optional) one subject folder name per line
    ROOT/OASIS_OAS1_0001_MR1/aligned_norm.nii.gz     image, 160x192x224, 1 mm
    ROOT/OASIS_OAS1_0001_MR1/aligned_seg35.nii.gz    35 labels (data.labels=seg35)
    ROOT/OASIS_OAS1_0001_MR1/aligned_seg4.nii.gz     4 labels  (data.labels=seg4)
    ...

Subjects are the folders ``OASIS_OAS1_XXXX_MR1`` (or, when ``subjects.txt`` exists, the
folders it lists; lines may also hold just the number), sorted by the number ``XXXX``. The
first ``n_train`` (364) train, the next ``n_val`` (50) validate. Validation (and, by default,
test) pairs are consecutive subjects: fixed ``k``, moving ``k+1`` (49 pairs); training pairs
are drawn at random among the training subjects every epoch.

Learn2Reg layout (``data=oasis_l2r``)::

    ROOT/imagesTr/OASIS_0001_0000.nii.gz    image (160x224x192, 1 mm)
    ROOT/labelsTr/OASIS_0001_0000.nii.gz    35 labels
    ROOT/pairs_val.csv                      fixed,moving  (integer ids, e.g. 438,439)

Validation and test pairs are the CSV's rows in order (fixed = column ``fixed``); training
subjects are all other subjects of ``imagesTr``. Item ids are ``OASIS_XXXX``.

Both sets are used on their native grid by default (no reorientation, 1 mm already, the
shape above), as in the literature, so that results compare with published numbers.

The layouts are here; the DataModules over them (OASISDataModule and OASISL2RDataModule) are in :mod:`data.public`.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from data.layout import Layout, VolumeRef, find_image, numbered, register_layout
from data.io import DataError
from data.pairs import consecutive_pairs

__all__ = ["OASISLayout", "OASISL2RLayout", "OASIS_LABELS", "PAPER_N_TRAIN", "PAPER_N_VAL"]

OASIS_LABELS = {"seg35": "aligned_seg35", "seg4": "aligned_seg4"}
_SUBJECT = re.compile(r"OASIS_OAS1_(\d+)_MR1")
_L2R = r"OASIS_(\d+)_0000"
PAPER_N_TRAIN, PAPER_N_VAL = 364, 50


@register_layout
class OASISLayout(Layout):
    """The neurite OASIS tree (module docstring). ``labels``: ``"seg35"`` or ``"seg4"``."""

    name = "oasis"
    title = "OASIS (neurite)"
    expected = (
        "OASIS_OAS1_XXXX_MR1/aligned_norm.nii.gz + aligned_seg35.nii.gz (+ aligned_seg4.nii.gz, subjects.txt)"
    )
    paper_subjects = PAPER_N_TRAIN + PAPER_N_VAL
    paper_pairs = {"val": PAPER_N_VAL - 1}
    grid = dict(orientation=None, spacing=1.0, shape=(160, 192, 224), crop_center="volume", normalize="minmax")

    def __init__(self, root, labels: str = "seg35"):
        if labels not in OASIS_LABELS:
            raise ValueError(f"OASIS data.labels must be one of {sorted(OASIS_LABELS)}, got {labels!r}")
        self.labels = labels
        super().__init__(root)
        self._names = self._discover()

    @classmethod
    def looks_like(cls, root: Path) -> bool:
        return bool(numbered(root, _SUBJECT.pattern, files=False))

    @property
    def subjects_file(self) -> Path:
        return self.root / "subjects.txt"

    def _discover(self) -> list[str]:
        folders = numbered(self.root, _SUBJECT.pattern, files=False)
        if not self.subjects_file.is_file():
            return list(folders.values())
        try:
            lines = self.subjects_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"{self.subjects_file}: unreadable subject list ({type(err).__name__}: {err})") from err
        names: dict[int, str] = {}
        for number, line in enumerate(lines, start=1):
            token = line.split("#", 1)[0].strip().split()
            if not token:
                continue
            token = token[0].rstrip("/")
            if token.isdigit():
                token = f"OASIS_OAS1_{int(token):04d}_MR1"
            m = _SUBJECT.fullmatch(Path(token).name)
            if not m:
                raise DataError(
                    f"{self.subjects_file}: line {number}: expected a subject folder name like "
                    f"OASIS_OAS1_0001_MR1 (or its number), got {line.strip()!r}"
                )
            names.setdefault(int(m.group(1)), Path(token).name)
        if not names:
            raise DataError(f"{self.subjects_file}: lists no subjects; expected one OASIS_OAS1_XXXX_MR1 per line")
        return [names[k] for k in sorted(names)]

    def unlisted_folders(self) -> list[str]:
        """Subject folders present but not in ``subjects.txt`` (ignored; reported by data.check)."""
        listed = set(self._names)
        return [n for n in numbered(self.root, _SUBJECT.pattern, files=False).values() if n not in listed]

    def volumes(self) -> list[VolumeRef]:
        return [
            VolumeRef(name, find_image(self.root / name / "aligned_norm"),
                      find_image(self.root / name / OASIS_LABELS[self.labels]))
            for name in self._names
        ]

    def split(self, n_train: int, n_val: int) -> tuple[list[VolumeRef], list[VolumeRef], list[VolumeRef]]:
        """``(train, val, rest)`` volumes: the first ``n_train``, the next ``n_val``, the others."""
        vols = self.volumes()
        if n_train + n_val > len(vols):
            raise DataError(
                f"{self.root}: found {len(vols)} OASIS subjects but data.n_train + data.n_val = {n_train + n_val} "
                f"({n_train} + {n_val}); the paper's split needs {self.paper_subjects} (set data.n_train/data.n_val "
                f"for a partial copy)"
            )
        if (n_train, n_val) == (PAPER_N_TRAIN, PAPER_N_VAL) and len(vols) != self.paper_subjects \
                and not self.subjects_file.is_file():
            # without the neurite subject list, another subject folder among the sorted ones moves the
            # split boundary: every validation (test) pair would differ from the paper's 49
            raise DataError(
                f"{self.root}: found {len(vols)} OASIS subject folders and no subjects.txt; the paper's "
                f"{n_train} + {n_val} split is defined on the {self.paper_subjects} subjects of the neurite release "
                f"(its subjects.txt lists them); add that file, or set data.n_train/data.n_val for another split"
            )
        return vols[:n_train], vols[n_train : n_train + n_val], vols[n_train + n_val :]

    def pairs(self) -> list:
        """The paper's evaluation pairs: consecutive validation subjects (364/50 split)."""
        vols = self.volumes()
        return consecutive_pairs(vols[PAPER_N_TRAIN : PAPER_N_TRAIN + PAPER_N_VAL])


@register_layout
class OASISL2RLayout(Layout):
    """The Learn2Reg 2021 task 3 OASIS tree (module docstring)."""

    name = "oasis_l2r"
    title = "OASIS (Learn2Reg task 3)"
    expected = "imagesTr/OASIS_XXXX_0000.nii.gz + labelsTr/OASIS_XXXX_0000.nii.gz + pairs_val.csv (columns fixed,moving)"
    paper_subjects = 414
    paper_pairs: dict[str, int] = {}
    grid = dict(orientation=None, spacing=1.0, shape=(160, 224, 192), crop_center="volume", normalize="minmax")

    def __init__(self, root, pairs_csv: str = "pairs_val.csv"):
        super().__init__(root)
        csv_path = Path(str(pairs_csv)).expanduser()
        self.pairs_csv = csv_path if csv_path.is_absolute() else self.root / csv_path
        self._images = numbered(self.root / "imagesTr", _L2R)

    @classmethod
    def looks_like(cls, root: Path) -> bool:
        return bool(numbered(root / "imagesTr", _L2R))

    def _ref(self, number: int) -> VolumeRef:
        name = f"OASIS_{number:04d}_0000"
        return VolumeRef(f"OASIS_{number:04d}", find_image(self.root / "imagesTr" / name),
                         find_image(self.root / "labelsTr" / name))

    def volumes(self) -> list[VolumeRef]:
        return [self._ref(key[0]) for key in self._images]

    def pair_numbers(self) -> list[tuple[int, int]]:
        """``(fixed, moving)`` subject numbers of the CSV rows, in order."""
        path = self.pairs_csv
        if not path.is_file():
            raise DataError(f"{path}: pairs CSV not found; expected {self.expected}")
        try:
            with open(path, newline="", encoding="utf-8-sig") as fh:
                rows = [(n, row) for n, row in enumerate(csv.reader(fh), start=1) if any(c.strip() for c in row)]
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise DataError(f"{path}: unreadable pairs CSV ({type(err).__name__}: {err})") from err
        if not rows:
            raise DataError(f"{path}: empty pairs CSV; expected a header fixed,moving and rows of subject ids")
        cols = (0, 1)
        header = [c.strip().lower() for c in rows[0][1]]
        if not all(c.lstrip("-").isdigit() for c in header[:2]):
            if "fixed" not in header or "moving" not in header:
                raise DataError(f"{path}: line 1: expected columns fixed,moving, got {rows[0][1]}")
            cols = (header.index("fixed"), header.index("moving"))
            rows = rows[1:]
        out = []
        for line, row in rows:
            try:
                f, m = (int(row[c].strip()) for c in cols)
            except (IndexError, ValueError):
                raise DataError(f"{path}: line {line}: expected two integer subject ids (fixed,moving), got {row}") from None
            if f == m:
                raise DataError(f"{path}: line {line}: pair {f},{m} registers a subject to itself")
            if (f, m) in out:
                raise DataError(f"{path}: line {line}: pair {f},{m} is listed twice")
            out.append((f, m))
        if not out:
            raise DataError(f"{path}: pairs CSV has a header but no rows")
        return out

    def pairs(self) -> list:
        """The CSV's pairs as ``(fixed, moving)`` volume refs; an id without an image is an error."""
        known = {k[0] for k in self._images}
        out = []
        for f, m in self.pair_numbers():
            for number in (f, m):
                if number not in known:
                    raise DataError(
                        f"{self._ref(number).image}: file not found; {self.pairs_csv} names subject {number} "
                        f"(expected imagesTr/OASIS_{number:04d}_0000.nii.gz)"
                    )
            out.append((self._ref(f), self._ref(m)))
        return out
