"""Validation and test of :class:`models.module.RegistrationModule`: the one metric code path
(:func:`models.evaluation.evaluate_batch`) on the final displacement, validation means and the
best validation Dice logged, an example pair drawn for image loggers, and the test phase's
per-pair results (returned, never written: the application's results callback stores them)."""

from __future__ import annotations

import math
import time
from typing import Any, Mapping

import torch

from metrics import PAIR_METRICS
from models.evaluation import each_pair_once, evaluate_batch, nanmean, warp_label
from spatial import as_float32, float32_region, warp

__all__ = ["EvaluationSteps"]


class EvaluationSteps:
    """Mixin of :class:`models.module.RegistrationModule`: its validation and test steps. It reads the
    module's ``net``, ``register``, ``to_displacement``, ``_loss_parts``, ``loss_cfg``,
    ``label_interp``, ``hd95_at_val``, ``vis_every_n_epochs`` and keeps ``_val_rows``, ``_val_best``
    and ``_test_rows``.

    Means are taken at the epoch's end over the rows of every process, each pair once
    (:func:`models.evaluation.each_pair_once`: under DDP the sampler pads the pairs with repeats).
    ``log_test_means``: whether the test phase logs ``test/<metric>`` means of the pairs it ran
    (``app.evaluation.run_test`` turns it off and logs the summary of the whole test set instead)."""

    log_test_means: bool = True

    def warp_label(self, label: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Warp an int label map ``(B,1,*S)`` by ``u`` as configured (``label_interp``;
        :func:`models.evaluation.warp_label`)."""
        return warp_label(label, u, self.label_interp)

    def _evaluate_batch(self, batch: Mapping[str, Any], u: torch.Tensor, with_hd95: bool) -> list[dict[str, Any]]:
        """Every pair of the batch scored (:func:`models.evaluation.evaluate_batch`); a pair that
        cannot be scored raises :class:`metrics.MetricError` naming it. Metrics see a float32
        displacement, computed with autocast off."""
        u = as_float32(u)
        with float32_region(u):
            return evaluate_batch(batch, u, with_hd95, self.label_interp)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        if self.net is None:
            u = self.register(batch)
        else:  # one forward pass serves both the loss and the metrics
            out = self(batch["moving"], batch["fixed"])
            u = self.to_displacement(out, batch["fixed"].shape[2:])
            if self._can_compute_loss(batch):  # one row per pair (deduplicated under DDP like the metrics)
                for i in range(u.shape[0]):
                    one = _batch_item(batch, i) if u.shape[0] > 1 else batch
                    sl = slice(i, i + 1)
                    parts = self._loss_parts(one, out[sl], u[sl])
                    self._val_rows.append({"pairs": ("loss", *_pair_ids(batch, i)), "n": 1,
                                           **{f"loss/{k}": float(v.detach()) for k, v in parts.items()}})
        for i, res in enumerate(self._evaluate_batch(batch, u, self.hd95_at_val)):
            self._val_rows.append({"pairs": _pair_ids(batch, i), "n": 1,
                                   **{f"pair/{k}": res[k] for k in (*PAIR_METRICS, "dice_identity")}})
        if batch_idx == 0:
            self._log_example(batch, u)

    def _log_example(self, batch: Mapping[str, Any], u: torch.Tensor) -> None:
        """Draw the first pair every ``vis_every_n_epochs`` epochs for the loggers that take images."""
        trainer = getattr(self, "_trainer", None)
        if (trainer is None or not self.vis_every_n_epochs or trainer.sanity_checking
                or not trainer.is_global_zero or self.current_epoch % self.vis_every_n_epochs):
            return
        image_loggers = [lg for lg in self.loggers if hasattr(lg, "log_image")]
        if not image_loggers:
            return
        from models.visualize import log_figure, pair_figure

        moved = warp(batch["moving"][:1], u[:1])
        title = f"{batch['fixed_id'][0]} <- {batch['moving_id'][0]}, epoch {self.current_epoch}"
        fig = pair_figure(batch["fixed"][0], batch["moving"][0], moved[0], u[0], title=title)
        log_figure(fig, "val/example", image_loggers, self.global_step)

    def _can_compute_loss(self, batch: Mapping[str, Any]) -> bool:
        return self.loss_cfg["dice_weight"] == 0 or ("fixed_label" in batch and "moving_label" in batch)

    def on_validation_epoch_end(self) -> None:
        rows, self._val_rows = each_pair_once(self.trainer, self._val_rows), []
        means = _means(rows)
        for k, v in means.items():  # the same value on every process
            self.log(f"val/{k}", v, sync_dist=True)
        if "dice" in means and not self.trainer.sanity_checking and math.isfinite(means["dice"]):
            self._val_best = max(self._val_best, means["dice"])
        if math.isfinite(self._val_best):
            self.log("val/dice_best", self._val_best, sync_dist=True)

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Register the batch and score every pair (the one metric path); returns one result per
        pair and writes nothing (the application's results callback stores them):
        ``{"pair": row of the results contract, "labels": {label: {name: value}} (the per-label
        metrics, :data:`metrics.LABEL_METRICS`), "erased": labels the warp erased, "signature": the inputs' signature, "displacement": u (1, D, *S),
        "moved_label": (1, *S) or None}``."""
        start = time.perf_counter()
        u = self.register(batch).detach()
        if u.device.type == "cuda":
            torch.cuda.synchronize(u.device)
        seconds = (time.perf_counter() - start) / u.shape[0]
        signatures = batch.get("pair_signature")
        results = []
        for i, res in enumerate(self._evaluate_batch(batch, u, with_hd95=True)):
            row = {"fixed_id": str(batch["fixed_id"][i]), "moving_id": str(batch["moving_id"][i]),
                   **{k: res[k] for k in PAIR_METRICS}, "n_erased": res["n_erased"], "seconds": seconds,
                   "dice_identity": res["dice_identity"], "mae_identity": res["mae_identity"]}
            if self._trainer is not None and self.log_test_means:  # called by a Trainer (not directly)
                self._test_rows.append({"pairs": _pair_ids(batch, i), "n": 1,
                                        **{f"pair/{k}": row[k] for k in (*PAIR_METRICS, "dice_identity")}})
            results.append({"pair": row, "labels": res["label_metrics"], "erased": res["erased_labels"],
                            "signature": None if signatures is None else signatures[i],
                            "displacement": u[i : i + 1], "moved_label": res["moved_label"]})
        return results

    def on_test_epoch_start(self) -> None:
        self._test_rows = []

    def on_test_epoch_end(self) -> None:
        if not self.log_test_means:
            return
        rows, self._test_rows = each_pair_once(self.trainer, self._test_rows), []
        for k, v in _means(rows).items():  # the same value on every process
            self.log(f"test/{k}", v, sync_dist=True)


def _batch_item(batch: Mapping[str, Any], i: int) -> dict[str, Any]:
    """Pair ``i`` of a batch as a batch of one: every tensor and list sliced ``[i:i+1]`` along the
    batch axis (a validation loss per pair: the repeats DDP pads with are dropped pair by pair)."""
    return {k: v[i:i + 1] if isinstance(v, (torch.Tensor, list, tuple)) else v for k, v in batch.items()}


def _pair_ids(batch: Mapping[str, Any], i: int | None = None) -> tuple:
    """``(fixed_id, moving_id)`` of pair ``i`` of the batch, or of every pair (a tuple of them)."""
    if i is None:
        return tuple(_pair_ids(batch, j) for j in range(len(batch["fixed_id"])))
    return str(batch["fixed_id"][i]), str(batch["moving_id"][i])


def _means(rows: list[Mapping[str, Any]]) -> dict[str, float]:
    """The epoch's means: each per-pair metric (``pair/<name>`` -> ``<name>``) over the pairs
    (:func:`models.evaluation.nanmean`), each loss part (``loss/<name>`` -> ``<name>``) over the
    pairs (a row's ``n``)."""
    values: dict[str, list[tuple[float, int]]] = {}
    for row in rows:
        for key, value in row.items():
            if key.startswith(("pair/", "loss/")):
                values.setdefault(key, []).append((value, row["n"]))
    return {key.split("/", 1)[1]: nanmean([v for v, _ in vs]) if key.startswith("pair/")
            else float(sum(v * n for v, n in vs) / sum(n for _, n in vs)) for key, vs in values.items()}
