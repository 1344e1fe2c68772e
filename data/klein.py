"""The Klein et al. (2009) evaluation sets IBSR18, CUMC12, MGH10 and LPBA40 (test-only sets).

Layouts (each file may be ``.nii.gz``, ``.nii`` or an Analyze/NIfTI pair ``.img``+``.hdr``, as
in the original release; subject numbers are sorted numerically, ``m2`` before ``m10``)::

    IBSR18  ROOT/IBSR_01/IBSR_01_ana_strip.nii.gz     image       18 subjects
            ROOT/IBSR_01/IBSR_01_seg_ana.nii.gz       labels      all ordered pairs: 306
    CUMC12  ROOT/Brains/m1.nii.gz                     image       12 subjects
            ROOT/Atlases/m1.nii.gz                    labels      all ordered pairs: 132
    MGH10   ROOT/Brains/g1.nii.gz                     image       10 subjects
            ROOT/Atlases/g1.nii.gz                    labels      all ordered pairs: 90
    LPBA40  ROOT/registered_pairs/l{j}_to_l{i}.nii.gz         image of subject j in subject i's space
            ROOT/registered_label_pairs/l{j}_to_l{i}.nii.gz   its labels          40 subjects, 1560 pairs

Pairs: ``data.pairs.all_pairs`` of the subjects, fixed first: ``(1, 2), (1, 3), ..., (2, 1), ...``.

LPBA40 ships pre-registered pairs: ``l{j}_to_l{i}`` is subject ``j`` already (affinely)
registered into subject ``i``'s space. The pair is therefore fixed = ``l{i}``, moving =
``l{j}`` (``fixed_id="l{i}"``, ``moving_id="l{j}"``), with the moving image read from
``l{j}_to_l{i}``. The fixed image is the diagonal file ``l{i}_to_l{i}`` (subject ``i`` in its own
space, on the same grid as every ``l{j}_to_l{i}``), so both volumes of a pair come from the
same target space; a missing diagonal file is reported like any missing file. LPBA40 is
cropped around the volume centre by default (not the brain), so that fixed and moving get the
same window and keep their pre-registration.

All four are used as test sets (the paper trains on OASIS and tests here, question 4): the
DataModule's test pairs are all ordered pairs; it has no training or validation pairs.
Defaults: canonical RAS orientation, 1 mm isotropic resampling (CUMC12 has 3 mm slices),
crop/pad to 160x192x224 around the brain (LPBA40: the volume centre), percentile normalisation.

The layouts are here; the DataModules over them (KleinDataModule) are in :mod:`data.public`.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from data.layout import Layout, VolumeRef, find_image, numbered, register_layout
from data.pairs import all_pairs

__all__ = ["KleinLayout", "IBSR18Layout", "CUMC12Layout", "MGH10Layout", "LPBA40Layout", "KLEIN_SETS"]


class KleinLayout(Layout):
    """A set of subjects, each one image and one label map; pairs = all ordered pairs."""

    grid = dict(orientation="RAS", spacing=1.0, shape=(160, 192, 224), crop_center="foreground",
                normalize="percentile")

    def subject_numbers(self) -> list[int]:
        raise NotImplementedError

    def ref(self, number: int) -> VolumeRef:
        raise NotImplementedError

    def volumes(self) -> list[VolumeRef]:
        return [self.ref(n) for n in self.subject_numbers()]

    def pairs(self) -> list:
        return all_pairs(self.volumes())


@register_layout
class IBSR18Layout(KleinLayout):
    name = "ibsr18"
    title = "IBSR18"
    expected = "IBSR_XX/IBSR_XX_ana_strip.nii.gz + IBSR_XX/IBSR_XX_seg_ana.nii.gz"
    paper_subjects = 18
    paper_pairs = {"test": 306}

    @classmethod
    def looks_like(cls, root: Path) -> bool:
        return bool(numbered(root, r"IBSR_(\d+)", files=False))

    def subject_numbers(self) -> list[int]:
        return [k[0] for k in numbered(self.root, r"IBSR_(\d+)", files=False)]

    def ref(self, number: int) -> VolumeRef:
        name = numbered(self.root, r"IBSR_(\d+)", files=False).get((number,), f"IBSR_{number:02d}")
        return VolumeRef(name, find_image(self.root / name / f"{name}_ana_strip"),
                         find_image(self.root / name / f"{name}_seg_ana"))


class _BrainsAtlases(KleinLayout):
    letter: ClassVar[str] = ""

    @classmethod
    def looks_like(cls, root: Path) -> bool:
        return bool(numbered(root / "Brains", rf"{cls.letter}(\d+)") or numbered(root / "Atlases", rf"{cls.letter}(\d+)"))

    def subject_numbers(self) -> list[int]:
        found = set(numbered(self.root / "Brains", rf"{self.letter}(\d+)"))
        found |= set(numbered(self.root / "Atlases", rf"{self.letter}(\d+)"))
        return sorted(k[0] for k in found)

    def ref(self, number: int) -> VolumeRef:
        name = f"{self.letter}{number}"
        return VolumeRef(name, find_image(self.root / "Brains" / name), find_image(self.root / "Atlases" / name))


@register_layout
class CUMC12Layout(_BrainsAtlases):
    name = "cumc12"
    title = "CUMC12"
    expected = "Brains/m{i}.nii.gz + Atlases/m{i}.nii.gz"
    paper_subjects = 12
    paper_pairs = {"test": 132}
    letter = "m"


@register_layout
class MGH10Layout(_BrainsAtlases):
    name = "mgh10"
    title = "MGH10"
    expected = "Brains/g{i}.nii.gz + Atlases/g{i}.nii.gz"
    paper_subjects = 10
    paper_pairs = {"test": 90}
    letter = "g"


@register_layout
class LPBA40Layout(KleinLayout):
    name = "lpba40"
    title = "LPBA40"
    expected = (
        "registered_pairs/l{j}_to_l{i}.nii.gz + registered_label_pairs/l{j}_to_l{i}.nii.gz "
        "(including l{i}_to_l{i}, the fixed images)"
    )
    paper_subjects = 40
    paper_pairs = {"test": 1560}
    grid = dict(KleinLayout.grid, crop_center="volume")  # fixed and moving keep one window
    pairs_share_grid = True  # l{j}_to_l{i} lies on l{i}'s grid
    _PATTERN = r"l(\d+)_to_l(\d+)"

    @classmethod
    def looks_like(cls, root: Path) -> bool:
        return bool(numbered(root / "registered_pairs", cls._PATTERN))

    def subject_numbers(self) -> list[int]:
        found = numbered(self.root / "registered_pairs", self._PATTERN)
        found.update(numbered(self.root / "registered_label_pairs", self._PATTERN))
        return sorted({n for key in found for n in key})

    def file_ref(self, moving: int, fixed: int) -> VolumeRef:
        """Subject ``moving`` in subject ``fixed``'s space: ``l{moving}_to_l{fixed}`` (id ``l{moving}``)."""
        name = f"l{moving}_to_l{fixed}"
        return VolumeRef(f"l{moving}", find_image(self.root / "registered_pairs" / name),
                         find_image(self.root / "registered_label_pairs" / name))

    def ref(self, number: int) -> VolumeRef:
        """Subject ``number`` as a fixed image: the diagonal file ``l{i}_to_l{i}``."""
        return self.file_ref(number, number)

    def volumes(self) -> list[VolumeRef]:
        nums = self.subject_numbers()
        return [self.file_ref(j, i) for i in nums for j in nums]

    def subjects(self) -> list[str]:
        return [f"l{n}" for n in self.subject_numbers()]

    def pairs(self) -> list:
        """fixed = ``l{i}_to_l{i}``, moving = ``l{j}_to_l{i}``, for all ``i != j`` (row-major in ``i``)."""
        return [(self.file_ref(i, i), self.file_ref(j, i)) for i, j in all_pairs(self.subject_numbers())]


KLEIN_SETS: dict[str, type[KleinLayout]] = {
    "ibsr18": IBSR18Layout,
    "cumc12": CUMC12Layout,
    "mgh10": MGH10Layout,
    "lpba40": LPBA40Layout,
}
