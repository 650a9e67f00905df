"""Benchmark the built-in trainer on synthetic 48x48 images.

Trains a preset on ``--n`` synthetic images (7/8 train, 1/8 validation, 4 classes) and prints
seconds per epoch and in total. By default early stopping is disabled (patience = epochs) so the
total is the worst case: every epoch of the schedule runs.

    python bench/bench_train.py --preset cpu --n 20000              # 2 CPU threads
    python bench/bench_train.py --preset bpp --device cuda --epochs 5

Targets: the ``cpu`` preset trains 20K images in at most 5 minutes on 2 CPU cores; the ``bpp``
preset runs at most 1 s per epoch over 17.5K images on one H100.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

try:
    import fercurate  # noqa: F401
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fercurate.train import make_config, synthetic_split, train


def main() -> None:
    """Parse arguments, generate data, train and print the timings."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="cpu", help="preset name (bpp, cpu, tiny)")
    p.add_argument("--n", type=int, default=20000, help="total synthetic images")
    p.add_argument("--classes", type=int, default=4, help="number of classes")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (0 = torch default)")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    p.add_argument("--batch-size", type=int, default=None, help="override the batch size")
    p.add_argument("--widths", default=None, help="override the conv widths, e.g. 16,32,64")
    p.add_argument("--dense", type=int, default=None, help="override the dense units")
    p.add_argument("--early-stop", action="store_true", help="keep the preset's patience")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

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
    config = make_config(args.preset, **overrides)
    if not args.early_stop:
        config = make_config(args.preset, **overrides, patience=config.epochs)

    n_val = args.n // 8
    t0 = time.perf_counter()
    # Harder than the default noise so accuracy is informative rather than 100% in one epoch.
    tr = synthetic_split(args.n - n_val, args.classes, config.image_size, seed=1, noise=70.0)
    va = synthetic_split(n_val, args.classes, config.image_size, seed=2, noise=70.0)
    classes = [f"c{i}" for i in range(args.classes)]
    print(f"data: {len(tr)} train / {len(va)} val, {time.perf_counter() - t0:.1f}s to generate")
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


if __name__ == "__main__":
    main()
