"""The shared LightningModule: every method turns a batch of pairs into a displacement.

``RegistrationModule.register(batch)`` returns the FINAL displacement ``u`` ``(B, D, *S)``
from fixed to moving in voxel units (``moved = warp(moving, u)``); a velocity never leaves
it. Validation and test run the one metric code path (:func:`metrics.evaluate_pair`) on that
displacement, so a learned network and a classical optimiser are scored identically.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Mapping, Sequence

import lightning as L
import torch
from torch import nn

from losses import build_regulariser, build_similarity
from models.evaluation import LABEL_INTERPS, PARADIGMS
from models.health import HealthChecks, NonFiniteError, configured_call, is_plain
from models.loss_config import loss_config
from models.evaluation_steps import EvaluationSteps
from models.training_loss import TrainingLoss
from models.networks import pad_to_multiple
from models.specs import built, factory
from spatial import as_float32, float32_region, integrate, resize_field, resize_image

__all__ = ["RegistrationModule", "IdentityRegistration", "NonFiniteError", "configured_call", "FIELDS",
           "LABEL_INTERPS", "PARADIGMS"]

FIELDS = ("displacement", "velocity")
LOSS_GRIDS = ("full", "coarse")


class RegistrationModule(TrainingLoss, EvaluationSteps, HealthChecks, L.LightningModule):
    """Trains and evaluates a network ``net(moving, fixed) -> field``.

    Args:
        net: an ``nn.Module`` returning ``(B, D, *S)``, or its spec (:mod:`models.specs`: what the
            configs pass, so that checkpoints rebuild the model); ``None`` for methods that
            override :meth:`register` (classical optimisers, identity).
        method: name written in result files (``method`` column) and logs.
        field: ``"displacement"`` (the net predicts ``u``) or ``"velocity"`` (it predicts a
            stationary velocity integrated by scaling and squaring with ``integration_steps``).
        loss: ``{sim, sim_kwargs, reg, reg_kwargs, reg_weight, dice_weight}``; loss =
            sim(fixed, moved) + reg_weight·reg(net output) + dice_weight·Dice loss of the
            moving one-hot labels warped linearly (needs labels when ``dice_weight > 0``);
            ``inverse_consistency_weight`` (default 0) weighs the ``bidirectional`` term below.
        optimizer: a ``torch.optim`` constructor taking the parameters: a spec
            (``{_target_: torch.optim.Adam, lr: 1e-3}``) or a callable; default Adam(lr=1e-4).
        scheduler: optional partial LR scheduler taking the optimiser.
        label_interp: how evaluation warps the moving label: ``"nearest"`` (default) or
            ``"linear"`` (one-hot, linear interpolation, argmax).
        hd95: compute HD95 at validation (test always computes it).
        downsize: the network sees both images resampled to ``S // downsize`` (trilinear,
            align_corners=True) and predicts its field on that coarse grid; a velocity is
            integrated there, then the displacement is brought to full resolution by
            :func:`spatial.resize_field` (magnitudes rescaled). Losses and metrics stay at full
            resolution unless ``loss_grid="coarse"``. ``1`` (default) = full resolution.
        loss_grid: where the training (and validation) loss is computed: ``"full"`` (default:
            the field is upsampled and the full-resolution images compared) or ``"coarse"``
            (images and labels are downsampled to the network's grid and compared there with
            the coarse field: ``downsize**D`` times cheaper, the cheap way to train on CPUs).
            Metrics are always computed at full resolution on the upsampled displacement.
        vis_every_n_epochs: every n validation epochs, the first validation pair is drawn
            (:func:`models.visualize.pair_figure`: slices, deformed grid, det J) and sent to the
            loggers that take images (W&B); 0 = never. No image logger: nothing is drawn.
        bidirectional: also train the reverse direction (moving -> fixed); default False. With a
            velocity ``v`` the reverse map is ``exp(-v)`` (diffeomorphic VoxelMorph's bidirectional
            cost); with a displacement it is a second pass ``net(fixed, moving)``, regularised
            like the first (``reg_reverse``). Adds ``sim_reverse = sim(moving, fixed o phi^-1)``,
            ``dice_loss_reverse`` (weight ``dice_weight``) when labels supervise, and
            ``inverse_consistency`` (weight ``loss.inverse_consistency_weight``): the mean over
            voxels of ``|compose(u_fm, u_mf)|^2`` and ``|compose(u_mf, u_fm)|^2``, averaged. The
            two directions' similarity (and Dice, and a displacement's regulariser) terms weigh
            one half each, as diffeomorphic VoxelMorph's 0.5 / 0.5 (both 1 until 2026-12-04), so
            ``reg_weight`` means the same with or without the reverse direction.
            Evaluation is unchanged: metrics see the forward displacement only.

    Inputs whose (coarse) size is not a multiple of the network's ``multiple`` (its total
    stride) are zero-padded at the end of each axis and the field is cropped back
    (:func:`models.networks.pad_to_multiple`), so any grid can be registered.
    """

    # loss weights a subclass adds under ``model.loss`` (name -> default), checked by models.loss_config.loss_config
    EXTRA_LOSS_WEIGHTS: Mapping[str, float] = {}
    # constructor arguments of a subclass that are objects, not plain data: not hyper-parameters
    HPARAMS_IGNORE: Sequence[str] = ()

    def __init__(
        self,
        net: nn.Module | Mapping[str, Any] | None = None,
        method: str = "model",
        field: str = "displacement",
        integration_steps: int = 7,
        loss: Mapping[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | Mapping[str, Any] | None = None,
        scheduler: Callable[..., Any] | Mapping[str, Any] | None = None,
        label_interp: str = "nearest",
        hd95: bool = True,
        downsize: int = 1,
        loss_grid: str = "full",
        vis_every_n_epochs: int = 5,
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        self._save_init_args()
        if field not in FIELDS:
            raise ValueError(f"model.field must be one of {list(FIELDS)}, got {field!r}")
        if label_interp not in LABEL_INTERPS:
            raise ValueError(f"model.label_interp must be one of {list(LABEL_INTERPS)}, got {label_interp!r}")
        self.net = built(net)
        self.method = str(method)
        self.field = field
        self.integration_steps = int(integration_steps)
        self.loss_cfg = loss_config(loss, self.EXTRA_LOSS_WEIGHTS)
        self.similarity = build_similarity(self.loss_cfg["sim"], **self.loss_cfg["sim_kwargs"])
        self.regulariser = build_regulariser(self.loss_cfg["reg"], **self.loss_cfg["reg_kwargs"])
        self.optimizer_factory = factory(optimizer)
        self.scheduler_factory = factory(scheduler)
        self.label_interp = label_interp
        self.hd95_at_val = bool(hd95)
        if isinstance(downsize, bool) or not isinstance(downsize, int) or downsize < 1:
            raise ValueError(f"model.downsize must be an int >= 1, got {downsize!r}")
        self.downsize = downsize
        if loss_grid not in LOSS_GRIDS:
            raise ValueError(f"model.loss_grid must be one of {list(LOSS_GRIDS)}, got {loss_grid!r}")
        self.loss_grid = loss_grid
        if isinstance(vis_every_n_epochs, bool) or int(vis_every_n_epochs) < 0:
            raise ValueError(f"model.vis_every_n_epochs must be an int >= 0, got {vis_every_n_epochs!r}")
        self.vis_every_n_epochs = int(vis_every_n_epochs)
        if not isinstance(bidirectional, bool):
            raise ValueError(f"model.bidirectional must be a bool (true/false), got {bidirectional!r}")
        self.bidirectional = bidirectional
        self._val_best = -math.inf
        self._val_rows: list[dict[str, Any]] = []
        self._test_rows: list[dict[str, Any]] = []

    def _save_init_args(self) -> None:
        """Hyper-parameters = the arguments of the outermost constructor (a subclass's), so that
        ``type(self)(**hparams)`` rebuilds the model (``load_from_checkpoint``, ``eval.py``):
        plain values and specs are kept; objects (a built net, a partial, ``HPARAMS_IGNORE``) are
        not, and a model built from them cannot be rebuilt from a checkpoint."""
        frame = outer = inspect.currentframe().f_back  # RegistrationModule.__init__
        while frame is not None and frame.f_code.co_name == "__init__" and frame.f_locals.get("self") is self:
            outer, frame = frame, frame.f_back
        objects = [k for k, v in outer.f_locals.items() if k in self.HPARAMS_IGNORE or isinstance(v, nn.Module)]
        self.save_hyperparameters(ignore=objects or None, frame=outer)
        for key in list(self.hparams):
            if key in self.HPARAMS_IGNORE or not is_plain(self.hparams[key]):
                del self.hparams[key]

    # ------------------------------------------------------------------ core API
    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """The raw network output (a displacement or a velocity, see ``field``), on the
        network's grid (``S // downsize``), always float32 (or float64): under mixed precision
        (``trainer.precision=bf16-mixed``) the network runs in bfloat16, and everything after it
        (integration, warping, losses, metrics) in float32 (:mod:`spatial.precision`)."""
        if self.net is None:
            raise NotImplementedError(f"{type(self).__name__} has no network; override register()")
        ndim = getattr(self.net, "ndim", None)
        if ndim is not None and moving.dim() - 2 != ndim:
            raise ValueError(
                f"model.net.ndim={ndim}: {type(self.net).__name__} is {ndim}-D but the images are "
                f"{moving.dim() - 2}-D {tuple(moving.shape[2:])}; set model.net.ndim={moving.dim() - 2} "
                f"or give {ndim}-D data"
            )
        if self.downsize > 1:
            moving, fixed = self._coarse(moving), self._coarse(fixed)
        multiple = int(getattr(self.net, "multiple", 1))
        extra = self.net_kwargs()
        if multiple > 1 and any(s % multiple for s in moving.shape[2:]):
            moving, crop = pad_to_multiple(moving, multiple)
            fixed, _ = pad_to_multiple(fixed, multiple)
            return as_float32(self.net(moving, fixed, **extra)[crop])
        return as_float32(self.net(moving, fixed, **extra))

    def net_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of every call of the network besides the two images: none here; a
        conditional network's code (:class:`models.lapirn.LapIRNModule`)."""
        return {}

    def step_reg_weight(self) -> float:
        """The smoothness weight of this step's loss: ``model.loss.reg_weight`` (a conditional
        network scales it by the step's code)."""
        return float(self.loss_cfg["reg_weight"])

    def test_settings(self) -> dict[str, Any]:
        """Settings chosen at test time that ``summary.json`` records (none here)."""
        return {}

    def _coarse(self, img: torch.Tensor, factor: int | None = None) -> torch.Tensor:
        """``(B, C, *S)`` -> the grid ``S // factor`` (default ``downsize``: the network's grid;
        linear, align_corners=True)."""
        factor = self.downsize if factor is None else int(factor)
        return resize_image(img, tuple(s // factor for s in img.shape[2:]))

    def to_displacement(self, out: torch.Tensor, shape: Sequence[int] | None = None) -> torch.Tensor:
        """Network output -> final displacement on grid ``shape`` (integrates a velocity first);
        float32 with autocast off (scaling and squaring in bfloat16 compounds its rounding)."""
        out = as_float32(out)
        with float32_region(out):
            u = integrate(out, self.integration_steps) if self.field == "velocity" else out
            return u if shape is None else resize_field(u, shape)

    @property
    def paradigm(self) -> str:
        """One of :data:`PARADIGMS`, recorded in ``summary.json`` (what compare.py groups by):
        a learned network is ``"supervised"`` when a Dice loss on labels trains it, else ``"unsupervised"``."""
        return "supervised" if self.loss_cfg["dice_weight"] > 0 else "unsupervised"

    def register(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Final displacement ``(B, D, *S)`` fixed -> moving for a batch of pairs."""
        return self.to_displacement(self(batch["moving"], batch["fixed"]), batch["fixed"].shape[2:])

    def inverse_displacement(self, out: torch.Tensor, shape: Sequence[int] | None = None) -> torch.Tensor | None:
        """The inverse map (moving -> fixed) of :meth:`to_displacement` ``(out, shape)`` when the method
        has one by construction: ``exp(-v)`` for a velocity ``v``; None for a displacement network."""
        return self.to_displacement(-out, shape) if self.field == "velocity" else None

    def register_with_inverse(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(u, inverse)``: :meth:`register`'s displacement ``(B, D, *S)`` fixed -> moving and its
        inverse moving -> fixed on the same grid (``moving(x + u(x))`` undone by ``inverse``), or None
        when the method has none (one network pass serves both; :meth:`inverse_displacement`).
        A subclass that overrides :meth:`register` says here whether it has an inverse (default: none)."""
        if self.net is None or type(self).register is not RegistrationModule.register:
            return self.register(batch), None
        out = self(batch["moving"], batch["fixed"])
        shape = batch["fixed"].shape[2:]
        return self.to_displacement(out, shape), self.inverse_displacement(out, shape)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        parts = self.compute_loss(batch)
        self._check_finite_loss(parts, batch)
        bs = batch["fixed"].shape[0]
        for k, v in parts.items():  # train/<k>_step: this process's; train/<k>_epoch: the mean over every process
            v = v.detach()          # (synchronised once, at the epoch's end: under DDP rank 0 logged its own)
            self.log(f"train/{k}_step", v, prog_bar=(k == "loss"), batch_size=bs, on_step=True, on_epoch=False)
            self.log(f"train/{k}_epoch", v, batch_size=bs, on_step=False, on_epoch=True, sync_dist=True)
        return parts["loss"]

    @property
    def trainable(self) -> bool:
        """Whether ``train.py`` has something to fit: a network with parameters that take gradients
        (identity and the classical optimisers have none and are only tested)."""
        return self.net is not None and any(p.requires_grad for p in self.net.parameters())

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            return None
        factory = self.optimizer_factory or (lambda ps: torch.optim.Adam(ps, lr=1e-4))
        opt = configured_call(factory, (params,), "model.optimizer")
        if self.scheduler_factory is None:
            return opt
        scheduler = configured_call(self.scheduler_factory, (opt,), "model.scheduler")
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # ------------------------------------------------------------------ input size
    def min_input_size(self) -> int:
        """Fewest voxels per spatial axis this method registers: ``2 * model.downsize`` (the
        network's grid ``S // downsize`` needs 2 voxels per axis: the warp's normalised
        coordinates ``2 x / (n - 1) - 1`` and the Jacobian's finite differences are undefined on
        a single voxel). Subclasses with coarser stages override it."""
        return 2 * self.downsize

    def min_input_size_reason(self) -> str:
        """The config keys that set :meth:`min_input_size`, with their values, for messages."""
        return f"2 voxels per axis on the network's grid at model.downsize={self.downsize}"


class IdentityRegistration(RegistrationModule):
    """No registration: ``u = 0``. The baseline every method must beat (``model=identity``)."""

    def __init__(self, method: str = "identity", **kwargs: Any) -> None:
        super().__init__(net=None, method=method, **kwargs)

    def register(self, batch: Mapping[str, Any]) -> torch.Tensor:
        fixed = batch["fixed"]
        return torch.zeros(fixed.shape[0], fixed.dim() - 2, *fixed.shape[2:], device=fixed.device, dtype=fixed.dtype)

    def register_with_inverse(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        u = self.register(batch)
        return u, torch.zeros_like(u)

    @property
    def paradigm(self) -> str:
        return "identity"


