"""Data: NIfTI I/O and validation, pair datasets, the offline MNI152 subjects, the public
datasets (OASIS, Learn2Reg OASIS, IBSR18, CUMC12, MGH10, LPBA40), DataModules.

Every dataset item follows the batch contract, written once in :mod:`data.batch` (every key,
dtype and shape) and built by its one function :func:`data.batch.pair_item`; every DataModule
derives from :class:`data.base.RegistrationDataModule`, whose docstring is the interface the
entry points and models use. Files are written atomically through :mod:`data.files`. Bad
input data raise :class:`DataError` with a one-line message naming the file or key at fault.

The names below load their module on first use (PEP 562): ``import data`` or ``from data.batch
import pair_item`` does not import nibabel, scipy's I/O or the dataset layouts, so the in-memory
path (generated subjects, batches, DataModules over arrays) runs where nibabel is not installed
(the device check, ``experiments/bench_gpu.py``; ``tests/test_bench_gpu.py`` blocks it).
"""


from __future__ import annotations

from data.lazy import lazy_names

# name -> the module that defines it
_HOMES = {
    "RegistrationDataModule": "data.base",
    "PairItem": "data.batch",
    "pair_item": "data.batch",
    "MNIDataModule": "data.mni_datamodule",
    "PairsCSVDataModule": "data.pairs_csv_datamodule",
    "SynthMorphDataModule": "data.synthmorph_datamodule",
    "DatasetDataModule": "data.datasets_module",
    "PairDataset": "data.datasets_module",
    "Layout": "data.layout",
    "VolumeRef": "data.layout",
    "KleinDataModule": "data.public",
    "DataError": "data.io",
    "Volume": "data.io",
    "load_volume": "data.io",
    "normalize_intensity": "data.io",
    "read_header": "data.io",
    "save_nifti_atomic": "data.io",
    "volume_id": "data.io",
    "GeneratedDataModule": "data.generated",
    "GeneratedPairDataset": "data.generated",
    "LABEL_NAMES": "data.mni",
    "MNIKnobs": "data.mni",
    "MNISubjects": "data.mni",
    "MNITemplate": "data.mni",
    "load_mni_template": "data.mni",
    "RandomPairSampler": "data.pairs",
    "all_pairs": "data.pairs",
    "consecutive_pairs": "data.pairs",
    "OASISDataModule": "data.public",
    "OASISL2RDataModule": "data.public",
    "PairsCSVDataset": "data.pairs_csv",
    "VolumeAugmentation": "data.augment",
    "LabelMapping": "data.preprocess",
    "PreprocessConfig": "data.preprocess",
    "VolumeStore": "data.preprocess",
}

__all__ = [
    "RegistrationDataModule",
    "PairItem",
    "pair_item",
    "MNIKnobs",
    "DataError",
    "SynthMorphDataModule",
    "Volume",
    "load_volume",
    "read_header",
    "normalize_intensity",
    "save_nifti_atomic",
    "volume_id",
    "PairsCSVDataset",
    "LABEL_NAMES",
    "MNITemplate",
    "load_mni_template",
    "MNISubjects",
    "GeneratedPairDataset",
    "GeneratedDataModule",
    "RandomPairSampler",
    "consecutive_pairs",
    "all_pairs",
    "MNIDataModule",
    "PairsCSVDataModule",
    "VolumeRef",
    "Layout",
    "PairDataset",
    "DatasetDataModule",
    "OASISDataModule",
    "OASISL2RDataModule",
    "KleinDataModule",
    "PreprocessConfig",
    "VolumeStore",
    "LabelMapping",
    "VolumeAugmentation",
]

__getattr__, __dir__ = lazy_names("data", _HOMES, globals())
