"""``InstanceOptimisationModule``: a classical optimiser that Lightning evaluates like a checkpoint.

``trainer.test`` (``python eval.py model=greedy data=...``) calls :meth:`register` for each batch;
it optimises every pair with gradients enabled (Lightning runs test steps under inference mode,
so the pair is copied out of it first), and the shared test step then scores the final
displacement through the one metric path and writes the results contract. Under DDP the test
sampler splits the pairs across devices. There is nothing to train: ``configure_optimizers``
returns None, and ``train.py`` with such a model only tests.
"""

from __future__ import annotations

import sys
from typing import Any, Mapping

import torch

from classical.api import RegistrationResult, input_size_requirement, register
from classical.config import ALGORITHMS, config_from_dict
from classical.threads import check_threads, using_threads
from data.plain import to_plain
from models.module import RegistrationModule

__all__ = ["InstanceOptimisationModule"]


class InstanceOptimisationModule(RegistrationModule):
    """Per-pair optimisation (affine, greedy or SyN) as a :class:`RegistrationModule`.

    Args:
        algorithm: ``"affine"``, ``"greedy"`` or ``"syn"``.
        method: name in result files (default: the algorithm).
        init_from: path of a checkpoint written by ``train.py`` whose network's prediction
            initialises the optimisation (test-time refinement of a learned method): recorded; the
            application layer reads it (``app.build.build_model``) and passes ``init_model``.
        init_model: that network (a :class:`RegistrationModule`), or None.
        label_interp, hd95: as :class:`RegistrationModule`.
        threads: torch CPU threads while a batch is optimised (:meth:`register`, the count before
            restored after it); None: the CPUs allocated to the process
            (:func:`classical.threads.allocated_cpus`: CPU affinity, ``SLURM_CPUS_PER_TASK``,
            ``OMP_NUM_THREADS``). Fields do not depend on it (within 0.01 voxel); seconds do.
        verbose: print one line per pyramid level of every pair as it ends (the pair, the stage,
            iterations run of the budget, final loss, seconds); it changes no result, so it is not
            a hyper-parameter (a rerun with another ``verbose`` reuses finished pairs).
        **settings: the algorithm's settings (:mod:`classical.config`), e.g. ``scales``,
            ``iterations``, ``lr``, ``grad_sigma``, ``warp_sigma``, ``sim``, ``sim_kwargs``, ``affine``.
    """

    HPARAMS_IGNORE = ("init_model", "verbose")

    def __init__(
        self,
        algorithm: str = "greedy",
        method: str | None = None,
        init_from: str | None = None,
        init_model: RegistrationModule | None = None,
        label_interp: str = "nearest",
        hd95: bool = True,
        threads: int | None = None,
        verbose: bool = False,
        **settings: Any,
    ) -> None:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"model.algorithm must be one of {sorted(ALGORITHMS)}, got {algorithm!r}")
        super().__init__(net=None, method=method or algorithm, label_interp=label_interp, hd95=hd95)
        try:
            self.config = config_from_dict(algorithm, {k: to_plain(v) for k, v in settings.items()})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"model: {exc}") from exc
        self.algorithm = algorithm
        if not isinstance(verbose, bool):
            raise ValueError(f"model.verbose must be a bool (true/false), got {verbose!r}")
        self.verbose = verbose
        self.init_from = init_from
        self.threads = check_threads(threads, "model.threads")
        if init_from and init_model is None:
            raise ValueError("model.init_from: the checkpoint is read by the application layer (app.build.build_model), "
                             "which passes its model as init_model")
        self._init_model: RegistrationModule | None = init_model
        if init_model is not None:
            init_model.eval()
            if algorithm == "affine" or getattr(self.config, "affine", None) is not None:
                raise ValueError("model.init_from starts the deformable stage: use algorithm greedy or syn without an affine stage")
        self.last_results: list[RegistrationResult] = []

    @property
    def init_model(self) -> RegistrationModule | None:
        """The network whose prediction starts the optimisation (``model.init_from``), or None."""
        return self._init_model

    def configure_optimizers(self):
        return None

    def min_input_size(self) -> int:
        """Fewest voxels per axis: every pyramid level of every stage must hold what its similarity
        and smoothing need, given the largest scale (:func:`classical.api.input_size_requirement`:
        7 for the default greedy and SyN configs, 4 for affine). An ``init_from`` network's own
        minimum counts too."""
        size = input_size_requirement(self.config)[0]
        if self._init_model is not None:
            size = max(size, self._init_model.min_input_size())
        return size

    def min_input_size_reason(self) -> str:
        reason = input_size_requirement(self.config)[1]
        if self._init_model is not None:
            reason += f"; model.init_from network: {self._init_model.min_input_size_reason()}"
        return reason

    @property
    def trainable(self) -> bool:
        """Nothing to fit: each pair is optimised at test time (an ``init_from`` network is fixed)."""
        return False

    @classmethod
    def settings_hints(cls, node: Mapping[str, Any]) -> dict[str, Any]:
        """The types of the ``**settings`` of ``node``'s algorithm (its config dataclass's fields),
        so that a config check names ``model.lr`` for ``model.lr=abc``."""
        import dataclasses
        import typing

        config_cls = ALGORITHMS[str(node.get("algorithm", "greedy"))]
        hints = typing.get_type_hints(config_cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(config_cls) if f.name in hints}

    @property
    def paradigm(self) -> str:
        return "hybrid" if self._init_model is not None else "classical"

    def _initial(self, batch: Mapping[str, Any]) -> torch.Tensor | None:
        if self._init_model is None:
            return None
        self._init_model.to(batch["fixed"].device)
        with torch.no_grad():
            return self._init_model.register(batch)

    def register(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Optimise each pair of the batch; returns the final displacements ``(B, D, *S)``."""
        with torch.inference_mode(False), using_threads(self.threads, "model.threads"):
            fixed = batch["fixed"].clone()
            moving = batch["moving"].clone()
            init = self._initial(batch)
            init = init.clone() if init is not None else None
            out = []
            self.last_results = []
            for i in range(fixed.shape[0]):
                # fixed and moving share one grid (the batch contract, checked by every dataset)
                res = register(fixed[i : i + 1], moving[i : i + 1], self.config,
                               init=None if init is None else init[i : i + 1],
                               report=self._reporter(batch, i) if self.verbose else None)
                self.last_results.append(res)
                out.append(res.displacement.detach())
            return torch.cat(out, dim=0)

    def register_with_inverse(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`register` and, for SyN, the inverse it computes (``psi_f o psi_m^-1``, moving ->
        fixed on the same grid); None for affine and greedy."""
        u = self.register(batch)
        inverses = [res.inverse for res in self.last_results]
        if not inverses or any(inv is None for inv in inverses):
            return u, None
        return u, torch.cat([inv.detach() for inv in inverses], dim=0)

    def _reporter(self, batch: Mapping[str, Any], i: int):
        """Print a level's line prefixed with the method and pair ``i`` (through the trainer's
        progress bar when one shows, so that it is not torn), flushed."""
        ids = [batch.get(key) for key in ("fixed_id", "moving_id")]
        pair = " <- ".join(str(v[i]) if isinstance(v, (list, tuple)) and i < len(v) else f"#{i}" for v in ids)
        trainer = getattr(self, "_trainer", None)
        bar = getattr(trainer, "progress_bar_callback", None) if trainer is not None else None

        def report(line: str) -> None:
            text = f"[{self.method}] {pair}: {line}"
            if bar is not None and getattr(bar, "is_enabled", False):
                bar.print(text)
            else:
                print(text)
            sys.stdout.flush()

        return report

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int = 0) -> torch.Tensor:
        """The displacement of each pair (``trainer.predict``)."""
        return self.register(batch)

