"""Data: NIfTI I/O and validation, pair datasets, the offline MNI152 subjects, the public
datasets (OASIS, Learn2Reg OASIS, IBSR18, CUMC12, MGH10, LPBA40), DataModules.

Every dataset item follows the batch contract, written once in :mod:`data.batch` (every key,
dtype and shape) and built by its one function :func:`data.batch.pair_item`; every DataModule
derives from :class:`data.base.RegistrationDataModule`, whose docstring is the interface the
entry points and models use. Files are written atomically through :mod:`data.files`. Bad
input data raise :class:`DataError` with a one-line message naming the file or key at fault.
"""

from data.base import RegistrationDataModule
from data.batch import PairItem, pair_item

from data.datamodule import MNIDataModule, PairsCSVDataModule, SynthMorphDataModule
from data.datasets_module import DatasetDataModule, PairDataset
from data.layout import Layout, VolumeRef
from data.klein import KleinDataModule
from data.io import DataError, Volume, load_volume, normalize_intensity, read_header, save_nifti_atomic, volume_id
from data.generated import GeneratedDataModule, GeneratedPairDataset
from data.mni import LABEL_NAMES, MNIKnobs, MNISubjects, MNITemplate, load_mni_template
from data.pairs import RandomPairSampler, all_pairs, consecutive_pairs
from data.oasis import OASISDataModule, OASISL2RDataModule
from data.pairs_csv import PairsCSVDataset
from data.augment import VolumeAugmentation
from data.preprocess import LabelMapping, PreprocessConfig, VolumeStore

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
