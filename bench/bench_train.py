"""Benchmark the built-in trainer on synthetic 48x48 images, or on real faces in class folders.

Trains a preset on ``--n`` synthetic images (7/8 train, 1/8 validation, 4 classes) and prints
seconds per epoch and in total. By default early stopping is disabled (patience = epochs) so the
total is the worst case: every epoch of the schedule runs.

With ``--folder`` it trains on real images instead: ``FOLDER/<class>/*`` (e.g. FER2013's Kaggle
``train/`` folder, whose rows are the ones to tune on), cut into a fixed, seeded split
(``--test-fraction`` held out and scored at the end, 10% of the rest for validation), and prints
the held-out accuracy. Every run prints process CPU seconds and the load average beside the wall
time, because wall time on a shared machine says little on its own.

    python bench/bench_train.py --preset cpu --n 20000              # 2 CPU threads
    python bench/bench_train.py --preset bpp --device cuda --epochs 5
    python bench/bench_train.py --preset cpu --folder fer2013/train --classes happy,neutral,sad,surprise

Targets: the ``cpu`` preset trains 20K images in at most 5 minutes on 2 CPU cores; the ``bpp``
preset runs at most 1 s per epoch over 17.5K images on one H100.
"""

from __future__ import annotations

import argparse
import ast
import os
import statistics
import sys
import time
from pathlib import Path

try:
    import fercurate  # noqa: F401
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from fercurate.train import ArraySplit, make_config, predict_proba, synthetic_split, train


def main() -> None:
    """Parse arguments, generate data, train and print the timings."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="cpu", help="preset name (bpp, cpu, tiny)")
    p.add_argument("--n", type=int, default=20000, help="total synthetic images")
    p.add_argument("--classes", default="4", help="number of synthetic classes, or class folders of --folder (a,b,c)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (0 = torch default)")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    p.add_argument("--batch-size", type=int, default=None, help="override the batch size")
    p.add_argument("--widths", default=None, help="override the conv widths, e.g. 16,32,64")
    p.add_argument("--dense", type=int, default=None, help="override the dense units")
    p.add_argument("--early-stop", action="store_true", help="keep the preset's patience")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--folder", type=Path, help="real images in FOLDER/<class>/ instead of synthetic ones")
    p.add_argument("--test-fraction", type=float, default=0.2, help="share of --folder held out for the score")
    p.add_argument("--train-rows", type=int, default=None, help="train on only the first N training rows of --folder")
    p.add_argument("--set", action="append", default=[], help="any config field, e.g. --set lr=1e-3 (repeatable)")
    args = p.parse_args()
    args.classes_list = args.classes.split(",") if not args.classes.isdigit() else None
    args.classes = int(args.classes) if args.classes.isdigit() else len(args.classes_list)

    overrides: dict[str, object] = {"device": args.device, "seed": args.seed}
    if args.threads:
        overrides["num_threads"] = args.threads
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.batch_size is not None:
        overrides["batch_size"] = args.batch_size
    if args.widths is not None:
        overrides["widths"] = tuple(int(w) for w in args.widths.split(","))
    if args.dense is not None:
        overrides["dense"] = args.dense
    for item in args.set:
        name, _, value = item.partition("=")
        overrides[name] = ast.literal_eval(value)
    config = make_config(args.preset, **overrides)
    if not args.early_stop:
        config = make_config(args.preset, **overrides, patience=config.epochs)

    t0 = time.perf_counter()
    test: ArraySplit | None = None
    if args.folder:
        classes = args.classes_list or sorted(d.name for d in args.folder.iterdir() if d.is_dir())
        tr, va, test = folder_splits(args.folder, classes, config.image_size, args.test_fraction, args.seed)
        if args.train_rows is not None:  # a quick probe: fewer training rows, same val and test
            tr = ArraySplit(tr.x[: args.train_rows], tr.y[: args.train_rows])
    else:
        n_val = args.n // 8
        # Harder than the default noise so accuracy is informative rather than 100% in one epoch.
        tr = synthetic_split(args.n - n_val, args.classes, config.image_size, seed=1, noise=70.0)
        va = synthetic_split(n_val, args.classes, config.image_size, seed=2, noise=70.0)
        classes = [f"c{i}" for i in range(args.classes)]
    held = f" / {len(test)} test" if test is not None else ""
    print(f"data: {len(tr)} train / {len(va)} val{held}, {time.perf_counter() - t0:.1f}s to load")
    print(
        f"config: preset={args.preset} widths={config.widths} dense={config.dense} "
        f"epochs={config.epochs} batch={config.batch_size} device={config.device} "
        f"threads={config.num_threads or 'default'}"
    )

    def show(h: dict) -> None:
        print(
            f"epoch {h['epoch']:3d}/{h['epochs']}  {h['seconds']:7.2f}s  "
            f"loss {h['train_loss']:.4f} acc {h['train_acc']:.3f}  "
            f"val_loss {h['val_loss']:.4f} val_acc {h['val_acc']:.3f}  lr {h['lr']:.2e}",
            flush=True,
        )

    load0 = os.getloadavg()[0]
    cpu0 = time.process_time()
    result = train(config, tr, va, classes, progress=show)
    cpu = time.process_time() - cpu0
    secs = [h["seconds"] for h in result.history]
    steady = secs[1:] or secs  # the first epoch pays for kernel selection and allocator warm-up
    print(f"device: {result.device}")
    print(
        f"seconds/epoch: mean {statistics.mean(secs):.2f}, after the first "
        f"{statistics.mean(steady):.2f}, min {min(secs):.2f}"
    )
    print(f"train images/s (steady): {len(tr) / statistics.mean(steady):,.0f}")
    print(
        f"total: {result.seconds:.1f}s wall for {result.epochs_run} epochs "
        f"({cpu:.1f}s process CPU time); best val_acc {result.best_metric:.3f} "
        f"at epoch {result.best_epoch}"
    )
    print(f"load average (1 min): {load0:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    if test is not None:
        accuracy = float((predict_proba(result.model, test.x).argmax(axis=1) == test.y).mean())
        print(f"held-out accuracy: {accuracy:.4f} on {len(test)} images")


def folder_splits(
    folder: Path, classes: list[str], size: int, test_fraction: float, seed: int
) -> tuple[ArraySplit, ArraySplit, ArraySplit]:
    """Load FOLDER/<class>/* as grayscale ``size`` x ``size`` and cut fixed train/val/test parts."""
    from PIL import Image

    images, labels = [], []
    for index, name in enumerate(classes):
        files = sorted(p for p in (folder / name).glob("*") if p.is_file())
        if not files:
            raise SystemExit(f"no images in {folder / name}; pass --folder DIR with DIR/<class>/ image folders")
        for path in files:
            with Image.open(path) as im:
                images.append(np.asarray(im.convert("L").resize((size, size)), dtype=np.uint8))
            labels.append(index)
    x, y = np.stack(images), np.array(labels, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    test, rest = order[:n_test], order[n_test:]
    n_val = len(rest) // 10
    val, fit = rest[:n_val], rest[n_val:]
    return ArraySplit(x[fit], y[fit]), ArraySplit(x[val], y[val]), ArraySplit(x[test], y[test])


if __name__ == "__main__":
    main()
