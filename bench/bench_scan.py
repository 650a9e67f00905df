"""Time `fercurate scan` on N 48x48 grayscale JPGs (target: 20K in at most 10 s on 2 cores).

Usage: python bench/bench_scan.py --n 20000 --repeats 3
Prints the wall time of each run and the median.
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

from fercurate.scan import ScanParams, scan
from fercurate.workspace import Workspace


def write_dataset(root: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    classes = ("happy", "neutral", "sad", "surprise")
    splits = (("train", 0.75), ("validation", 0.245), ("test", 0.005))
    base = rng.normal(120, 40, (256, 12, 12))
    for i in range(n):
        split = "train" if i % 1000 < 750 else ("validation" if i % 1000 < 995 else "test")
        folder = root / split / classes[i % 4]
        folder.mkdir(parents=True, exist_ok=True)
        img = np.kron(base[i % 256], np.ones((4, 4))) + rng.normal(0, 12, (48, 48))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i}.jpg", quality=90)
    del splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-scan-"))
    try:
        data = tmp / "data"
        t = time.perf_counter()
        write_dataset(data, args.n)
        print(f"wrote {args.n} JPGs in {time.perf_counter() - t:.1f} s")
        times = []
        for r in range(args.repeats):
            ws = Workspace(tmp / f"ws{r}")
            t = time.perf_counter()
            result = scan(ws, ScanParams(dataset=data, workers=args.workers))
            times.append(time.perf_counter() - t)
            print(f"run {r + 1}: {times[-1]:.2f} s ({result.rows} rows)")
        print(f"median scan time for {args.n} images: {statistics.median(times):.2f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
