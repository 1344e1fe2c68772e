"""The public datasets' DataModules: OASIS (neurite and Learn2Reg layouts) and the Klein 2009 sets.

Each is a :class:`data.datasets_module.DatasetDataModule` over one layout; the layouts (file
trees, subjects, pairs) live in :mod:`data.oasis` and :mod:`data.klein`, which do not import
Lightning, so that ``python -m data.check`` reads a dataset tree in seconds.
"""

from __future__ import annotations

from typing import Any

from data.datasets_module import DatasetDataModule
from data.io import DataError
from data.klein import KLEIN_SETS
from data.oasis import PAPER_N_TRAIN, PAPER_N_VAL, OASISL2RLayout, OASISLayout
from data.pairs import consecutive_pairs

__all__ = ["KleinDataModule", "OASISDataModule", "OASISL2RDataModule"]


class KleinDataModule(DatasetDataModule):
    """One Klein set as a test-only DataModule: all ordered pairs (LPBA40: its registered pairs).

    Args:
        dataset: ``"ibsr18"``, ``"cumc12"``, ``"mgh10"`` or ``"lpba40"``.
        root: the set's folder (``${paths.data_dir}/IBSR18`` etc.).
        strict_count: require the paper's subject count (18/12/10/40); ``False`` accepts a
            partial copy (or the tiny trees of the tests).
        **kwargs: see :class:`data.datasets_module.DatasetDataModule`; defaults
            ``orientation="RAS", spacing=1.0, shape=(160, 192, 224), crop_center="foreground"``
            (LPBA40: ``"volume"``), ``normalize="percentile"``.
    """

    def __init__(self, dataset: str, root: str, strict_count: bool = True, **kwargs: Any):
        key = str(dataset).lower()
        if key not in KLEIN_SETS:
            raise ValueError(f"KleinDataModule() 'dataset' must be one of {sorted(KLEIN_SETS)}, got {dataset!r}")
        self.dataset_name = key
        self.layout_cls = KLEIN_SETS[key]
        self.strict_count = bool(strict_count)
        super().__init__(root, **{**self.layout_cls.grid, **kwargs})
        self.save_hyperparameters()

    def _build(self) -> None:
        self.layout = self.layout_cls(self.root)
        subjects = self.layout.subjects()
        expected = self.layout.paper_subjects
        if self.strict_count and len(subjects) != expected:
            raise DataError(
                f"{self.root}: found {len(subjects)} {self.layout.title} subjects, expected {expected} "
                f"(layout {self.layout.expected}); set data.strict_count=false to use a partial copy"
            )
        if len(subjects) < 2:
            raise DataError(f"{self.root}: found {len(subjects)} {self.layout.title} subject(s); need >= 2 to form pairs")
        self.train_volumes = []
        self.val_pairs = []
        self.test_pairs = self.layout.pairs()

    def _no_train_message(self) -> str:
        return (
            f"{self.layout.title} is a test-only set here (the paper trains on OASIS and tests on the Klein sets); "
            f"train with data=oasis and evaluate with eval.py data={self.dataset_name}"
        )


class OASISDataModule(DatasetDataModule):
    """OASIS, neurite layout (:class:`OASISLayout`): paper split and pair schemes.

    Args:
        root: the folder holding ``OASIS_OAS1_XXXX_MR1/`` (``${paths.data_dir}/OASIS``).
        labels: ``"seg35"`` (35 labels, default) or ``"seg4"``.
        n_train, n_val: split sizes (paper: 364 and 50; they must not exceed the subjects found).
        test_split: ``"val"`` (default: the paper evaluates the 49 consecutive validation pairs)
            or ``"rest"`` (consecutive pairs of the subjects after train and val) or ``"train"``
            (consecutive pairs of the first ``n_val`` training subjects, as many as the validation
            pairs: a trained network's Dice there against ``val`` is finding 3's train > val gap).
        **kwargs: see :class:`data.datasets_module.DatasetDataModule`; defaults here keep the
            native grid: ``orientation=None, spacing=1.0, shape=(160, 192, 224), normalize="minmax"``.
    """

    layout_cls = OASISLayout

    def __init__(self, root: str, labels: str = "seg35", n_train: int = PAPER_N_TRAIN, n_val: int = PAPER_N_VAL,
                 test_split: str = "val", **kwargs: Any):
        if int(n_train) < 0 or int(n_val) < 0 or int(n_val) == 1:
            raise ValueError(f"OASISDataModule() needs n_train >= 0 and n_val 0 or >= 2, got {n_train!r}, {n_val!r}")
        if test_split not in ("val", "rest", "train"):
            raise ValueError(f"OASISDataModule() 'test_split' must be 'val', 'rest' or 'train', got {test_split!r}")
        self.labels, self.n_train, self.n_val, self.test_split = labels, int(n_train), int(n_val), test_split
        super().__init__(root, **{**self.layout_cls.grid, **kwargs})
        self.save_hyperparameters()

    def _build(self) -> None:
        self.layout = OASISLayout(self.root, labels=self.labels)
        train, val, rest = self.layout.split(self.n_train, self.n_val)
        self.train_volumes = train
        self.val_pairs = consecutive_pairs(val)
        if self.test_split == "val":
            self.test_pairs = list(self.val_pairs)
        elif self.test_split == "train":  # as many consecutive pairs of training subjects (finding 3's gap)
            self.test_pairs = consecutive_pairs(train[: max(len(val), 2)])
        else:
            if len(rest) < 2:
                raise DataError(
                    f"{self.root}: data.test_split=rest needs >= 2 subjects after the {self.n_train} + {self.n_val} "
                    f"train/val subjects, found {len(rest)}"
                )
            self.test_pairs = consecutive_pairs(rest)


class OASISL2RDataModule(DatasetDataModule):
    """OASIS, Learn2Reg 2021 task 3 layout (:class:`OASISL2RLayout`).

    Args:
        root: the folder holding ``imagesTr/``, ``labelsTr/`` (``${paths.data_dir}/OASIS_L2R``).
        pairs_csv: validation pairs, relative to ``root`` (default ``pairs_val.csv``) or absolute.
        **kwargs: see :class:`data.datasets_module.DatasetDataModule`; defaults keep the native
            grid: ``orientation=None, spacing=1.0, shape=(160, 224, 192), normalize="minmax"``.

    Val and test pairs are the CSV's; training subjects are the others in ``imagesTr``.
    """

    layout_cls = OASISL2RLayout

    def __init__(self, root: str, pairs_csv: str = "pairs_val.csv", **kwargs: Any):
        self.pairs_csv = pairs_csv
        super().__init__(root, **{**self.layout_cls.grid, **kwargs})
        self.save_hyperparameters()

    def _build(self) -> None:
        self.layout = OASISL2RLayout(self.root, pairs_csv=self.pairs_csv)
        pairs = self.layout.pairs()
        in_pairs = {v.id for p in pairs for v in p}
        self.train_volumes = [v for v in self.layout.volumes() if v.id not in in_pairs]
        self.val_pairs = pairs
        self.test_pairs = list(pairs)
