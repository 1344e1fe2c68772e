"""Data: NIfTI I/O and validation, pair datasets, the offline MNI152 subjects, the public
datasets (OASIS, Learn2Reg OASIS, IBSR18, CUMC12, MGH10, LPBA40), DataModules.

Every dataset item follows the batch contract: ``fixed``, ``moving`` float32 ``(1, *S)`` in
[0, 1]; optional ``fixed_label``, ``moving_label`` int64 ``(1, *S)``; ``spacing`` float32
``(3,)`` mm of the fixed image; ``fixed_id``, ``moving_id`` str. Bad input data raise
:class:`DataError` with a one-line message naming the file or key at fault.
"""

from data.datamodule import MNIDataModule, PairsCSVDataModule, SynthMorphDataModule
from data.datasets_module import DatasetDataModule, PairDataset
from data.layout import Layout, VolumeRef
from data.klein import KleinDataModule
from data.io import DataError, Volume, load_volume, normalize_intensity, read_header, save_nifti_atomic, volume_id
from data.generated import GeneratedDataModule, GeneratedPairDataset
from data.mni import LABEL_NAMES, MNISubjects, MNITemplate, load_mni_template
from data.pairs import RandomPairSampler, all_pairs, consecutive_pairs
from data.oasis import OASISDataModule, OASISL2RDataModule
from data.pairs_csv import PairsCSVDataset
from data.augment import VolumeAugmentation
from data.preprocess import LabelMapping, PreprocessConfig, VolumeStore

__all__ = [
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
