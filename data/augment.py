"""Training-time augmentation of single volumes (an image with its own label map), torchio-based.

torchio applies one random transform to every image of a Subject, so a fixed/moving pair put in
one Subject would get identical augmentation; here each volume is its own Subject and the fixed
and the moving volume are augmented by separate calls (independent draws).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch


class VolumeAugmentation:
    """Random augmentation of ONE volume (an image with its own label map).

    Call it separately for the fixed and the moving volume of a pair: each call draws its own
    random parameters (see the module docstring for why a shared torchio Subject is wrong).

    Args:
        degrees: max rotation (deg) about each axis (``torchio.RandomAffine``); 0 = none.
        scales: max relative scaling, e.g. 0.05 for [0.95, 1.05]; 0 = none.
        translation: max shift in mm; 0 = none.
        gamma: ``log(gamma)`` range of ``torchio.RandomGamma``; 0 = none.
        bias_field: coefficient range of ``torchio.RandomBiasField``; 0 = none.
        noise_std: max std of ``torchio.RandomNoise`` (intensities in [0, 1]); 0 = none.
        p: probability of applying each of the above.

    Spatial transforms move the image (linear) and its label (nearest) together, padding
    with 0. Intensities are clipped to [0, 1] afterwards.
    """

    def __init__(
        self,
        degrees: float = 0.0,
        scales: float = 0.0,
        translation: float = 0.0,
        gamma: float = 0.0,
        bias_field: float = 0.0,
        noise_std: float = 0.0,
        p: float = 1.0,
    ):
        import torchio as tio

        values = dict(degrees=degrees, scales=scales, translation=translation, gamma=gamma,
                      bias_field=bias_field, noise_std=noise_std)
        for name, v in values.items():
            if float(v) < 0:
                raise ValueError(f"VolumeAugmentation() '{name}' must be >= 0, got {v!r}")
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"VolumeAugmentation() 'p' must be in [0, 1], got {p!r}")
        self.params = {**{k: float(v) for k, v in values.items()}, "p": float(p)}
        transforms = []
        if degrees or scales or translation:
            transforms.append(tio.RandomAffine(scales=float(scales), degrees=float(degrees),
                                               translation=float(translation), default_pad_value=0.0, p=float(p)))
        if bias_field:
            transforms.append(tio.RandomBiasField(coefficients=float(bias_field), p=float(p)))
        if gamma:
            transforms.append(tio.RandomGamma(log_gamma=float(gamma), p=float(p)))
        if noise_std:
            transforms.append(tio.RandomNoise(std=(0.0, float(noise_std)), p=float(p)))
        self.transform = tio.Compose(transforms) if transforms else None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> "VolumeAugmentation | None":
        """None/empty/``{enabled: false}`` -> None; otherwise ``cls(**cfg)`` (``enabled`` dropped)."""
        if cfg is None or cfg is False:
            return None
        cfg = dict(cfg)
        if not cfg.pop("enabled", True):
            return None
        aug = cls(**cfg)
        return aug if aug.transform is not None else None

    def __call__(self, image: torch.Tensor, label: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``image`` float32 ``(1, *S)``, ``label`` int64 ``(1, *S)`` or None -> the same, augmented."""
        if self.transform is None:
            return image, label
        import torchio as tio

        images = {"image": tio.ScalarImage(tensor=image)}
        if label is not None:
            images["label"] = tio.LabelMap(tensor=label.to(torch.int32))
        subject = tio.Subject(**images)  # this volume only: its own random draw
        out = self.transform(subject)
        img = out["image"].data.to(torch.float32).clamp_(0.0, 1.0)
        lab = None if label is None else out["label"].data.to(torch.int64)
        return img.contiguous(), lab

    def __repr__(self) -> str:
        return f"VolumeAugmentation({self.params})"
