"""Benchmark of the dataset path: cache load time of an OASIS-sized pair, data time vs step time.

    python -m experiments.bench_data [--root OASIS_DIR] [--subjects 6] [--steps 6] [--workers 0 1]
                                     [--downsize 2] [--augment] [--threads 2]

Without ``--root`` a fake neurite OASIS tree is written to a temporary folder: ``--subjects``
subjects of 160x192x224 voxels (smooth random float32 images and 35-label maps, gzip-compressed
NIfTI as in the real release). Then:

1. *cold*: loading one pair without cache (gzip decoding + preprocessing), what every epoch
   would pay without the cache;
2. *cache fill*: ``OASISDataModule.validate()`` with ``cache_dir`` (checks and caches every volume);
3. *cached pair*: one training item (two volumes from the cache, label mapping, tensors),
   median of ``--repeats``. Goal: <= 0.5 s on CPU;
4. *training loop* (for each ``--workers``): VoxelMorph (vxm1, ``--downsize``) with LNCC +
   diffusion, Adam, ``--steps`` steps on random training pairs from the DataLoader. *Data time*
   is the wait in ``next(loader)``, *step time* is forward + backward + optimiser step; means
   exclude the first step (worker start-up, allocator warm-up).

Prints one table; ``--json FILE`` also writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

SHAPE = (160, 192, 224)


def write_fake_oasis(root: Path, n: int, shape=SHAPE, seed: int = 0) -> Path:
    """``n`` neurite-layout subjects: smooth images in [0, 1] (zero background) and 35-label maps."""
    gen = torch.Generator().manual_seed(seed)
    for k in range(1, n + 1):
        folder = root / f"OASIS_OAS1_{k:04d}_MR1"
        folder.mkdir(parents=True, exist_ok=True)
        low = torch.rand(1, 1, 10, 12, 14, generator=gen)
        img = F.interpolate(low, size=shape, mode="trilinear", align_corners=True)[0, 0]
        zz = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, s) for s in shape], indexing="ij"))
        brain = (zz**2).sum(0) < 0.8
        img = (img * brain).numpy().astype(np.float32)
        labels = np.ceil(img * 35).astype(np.uint8)
        affine = np.eye(4)
        nib.save(nib.Nifti1Image(img, affine), str(folder / "aligned_norm.nii.gz"))
        nib.save(nib.Nifti1Image(labels, affine), str(folder / "aligned_seg35.nii.gz"))
    return root


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def train_loop(dm, steps: int, downsize: int) -> dict:
    from models import RegistrationModule
    from models.networks import VoxelMorphUNet

    model = RegistrationModule(net=VoxelMorphUNet(ndim=3, variant="vxm1"), downsize=downsize,
                               loss={"sim": "lncc", "reg": "diffusion", "reg_weight": 0.1})
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loader = dm.train_dataloader()
    data_t, step_t = [], []
    it = iter(loader)
    for _ in range(steps):
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        t1 = time.perf_counter()
        loss = model.compute_loss(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        t2 = time.perf_counter()
        data_t.append(t1 - t0)
        step_t.append(t2 - t1)
    del it, loader
    rest = slice(1, None) if steps > 1 else slice(None)
    return {
        "data_s_mean": statistics.mean(data_t[rest]),
        "step_s_mean": statistics.mean(step_t[rest]),
        "data_s_first": data_t[0],
        "data_s": data_t,
        "step_s": step_t,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=None, help="a real neurite OASIS folder (default: write a fake one)")
    parser.add_argument("--subjects", type=int, default=6)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--downsize", type=int, default=2)
    parser.add_argument("--augment", action="store_true", help="independent random affine + gamma per volume")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from data import OASISDataModule
    from data.preprocess import VolumeStore

    tmp = tempfile.TemporaryDirectory(prefix="bench_data_")
    work = Path(tmp.name)
    out: dict = {"threads": args.threads, "cpu_count": os.cpu_count(), "shape": list(SHAPE)}
    if args.root is None:
        t0 = time.perf_counter()
        root = write_fake_oasis(work / "OASIS", args.subjects)
        out["write_fake_tree_s"] = time.perf_counter() - t0
        n_train, n_val = max(2, args.subjects - 2), min(2, max(0, args.subjects - 2))
    else:
        root = Path(args.root)
        n_train, n_val = 364, 50
    augment = {"degrees": 5.0, "scales": 0.05, "translation": 3.0, "gamma": 0.1} if args.augment else None
    common = dict(n_train=n_train, n_val=n_val, augment=augment, seed=0)

    dm = OASISDataModule(str(root), cache_dir=str(work / "cache"), **common)
    f, m = dm.train_volumes[0], dm.train_volumes[1]
    nocache = VolumeStore(dm.preprocess_config, None)
    out["cold_pair_s"] = _median_time(lambda: (nocache.get(f.key, f.image, f.label),
                                               nocache.get(m.key, m.image, m.label)), 3)
    t0 = time.perf_counter()
    dm.validate()
    out["cache_fill_s"] = time.perf_counter() - t0
    out["cache_fill_per_volume_s"] = out["cache_fill_s"] / len(dm.used_volumes())
    store = dm.store
    out["cached_pair_store_s"] = _median_time(lambda: (store.get(f.key, f.image, f.label),
                                                       store.get(m.key, m.image, m.label)), args.repeats)
    ds = dm.dataset("train")
    ds.augment = None
    out["cached_pair_item_s"] = _median_time(lambda: ds[0], args.repeats)
    if augment:
        ds_aug = dm.dataset("train")
        out["cached_pair_item_augmented_s"] = _median_time(lambda: ds_aug[0], args.repeats)
    size = sum(p.stat().st_size for p in (work / "cache").rglob("*.npz")) / len(dm.used_volumes())
    out["cache_mb_per_volume"] = size / 2**20

    out["loops"] = {}
    for workers in args.workers:
        dmw = OASISDataModule(str(root), cache_dir=str(work / "cache"), num_workers=workers,
                              pairs_per_epoch=args.steps, **common)
        out["loops"][workers] = train_loop(dmw, args.steps, args.downsize)

    print(f"OASIS-sized volumes {SHAPE}, torch threads {args.threads}, cpus {os.cpu_count()}, "
          f"augment {'on' if augment else 'off'}, VoxelMorph vxm1 downsize {args.downsize}")
    rows = [
        ("pair without cache (gzip + preprocess)", out["cold_pair_s"]),
        ("cache fill per volume (validate)", out["cache_fill_per_volume_s"]),
        ("cached pair, 2 x VolumeStore.get", out["cached_pair_store_s"]),
        ("cached pair, full dataset item", out["cached_pair_item_s"]),
    ]
    if augment:
        rows.append(("cached pair item + augmentation", out["cached_pair_item_augmented_s"]))
    for workers, r in out["loops"].items():
        rows.append((f"train loop, num_workers={workers}: data time/step", r["data_s_mean"]))
        rows.append((f"train loop, num_workers={workers}: step time", r["step_s_mean"]))
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value:8.3f} s")
    print(f"cache size per volume: {out['cache_mb_per_volume']:.1f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    tmp.cleanup()
    return out


if __name__ == "__main__":
    main()
