"""Time `fercurate scan` on N 48x48 grayscale JPGs, and reading its pixel cache back.

Usage: python bench/bench_scan.py --n 20000 --repeats 3 [--dataset FOLDER] [--workers 2]

Prints, per run on a fresh workspace, the wall time of the scan (in this process, so without the
CLI's start-up and imports: time ``fercurate scan`` for those) and of ``load_pixels`` over the active
rows, which is what ``fercurate dedup`` and the later stages pay to get the pixels from the cache; then
the medians. ``--dataset`` scans an existing folder (for example a ``fercurate demo`` dataset) instead
of writing ``--n`` synthetic JPGs. Context: ``fercurate scan`` + ``fercurate dedup`` of 20K such
images should take at most 5 s of wall time on 2 cores, as two CLI processes.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from fercurate.manifest import ACTIVE, Col
from fercurate.scan import ScanParams, scan
from fercurate.workspace import Workspace, load_pixels


def write_dataset(root: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    classes = ("happy", "neutral", "sad", "surprise")
    base = rng.normal(120, 40, (256, 12, 12))
    for i in range(n):
        split = "train" if i % 1000 < 750 else ("validation" if i % 1000 < 995 else "test")
        folder = root / split / classes[i % 4]
        folder.mkdir(parents=True, exist_ok=True)
        img = np.kron(base[i % 256], np.ones((4, 4))) + rng.normal(0, 12, (48, 48))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--dataset", type=Path, default=None, help="scan this folder instead of writing JPGs")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-scan-"))
    try:
        data = args.dataset
        if data is None:
            data = tmp / "data"
            t = time.perf_counter()
            write_dataset(data, args.n)
            print(f"wrote {args.n} JPGs in {time.perf_counter() - t:.1f} s")
        scans, loads = [], []
        for r in range(args.repeats):
            ws = Workspace(tmp / f"ws{r}")
            t = time.perf_counter()
            result = scan(ws, ScanParams(dataset=data, workers=args.workers))
            scans.append(time.perf_counter() - t)
            info, df = ws.read()
            active = df[df[Col.STATUS] == ACTIVE]
            t = time.perf_counter()
            load_pixels(Workspace(ws.root), info, active)  # a new Workspace: nothing cached in memory
            loads.append(time.perf_counter() - t)
            print(f"run {r + 1}: scan {scans[-1]:.2f} s ({result.rows} rows), load_pixels {loads[-1]:.3f} s")
        print(f"median scan time for {result.rows} images: {statistics.median(scans):.2f} s")
        print(f"median load_pixels time for {len(active)} active rows: {statistics.median(loads):.3f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
