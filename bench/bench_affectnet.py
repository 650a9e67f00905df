"""Benchmark merge-affectnet: converting 10K AffectNet-style images on 2 cores (target: at most 60 s).

Generates N RGB JPEGs (128-224 px by default, a face box each, the official CSV) in a temporary
folder, then times

1. ``convert``: the per-batch conversion alone (:func:`fercurate.affectnet.convert_faces` mapped
   with :func:`fercurate.images.map_batches`): decode, crop to the box plus margin, grayscale,
   antialiased resize to 48x48, PNG encode, sha256;
2. ``merge``: the whole stage on a small scanned dataset with a per-class target high enough that
   every source image is converted: reading the CSV, the rounds of conversion, dedup against the
   dataset and within the source, storing the PNGs, committing the version and writing the report.

Run from the repository root::

    python bench/bench_affectnet.py --n 10000 --cores 2

``--cores`` pins this process and its workers to that many CPUs (when the machine has more).
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fercurate.affectnet import CSV_COLUMNS, MergeParams, convert_faces, merge_affectnet  # noqa: E402
from fercurate.images import map_batches  # noqa: E402
from fercurate.scan import ScanParams, scan  # noqa: E402
from fercurate.workspace import Workspace  # noqa: E402

CLASSES = ("neutral", "happy", "sad", "surprise")  # AffectNet codes 0-3


def _field(rng: np.random.Generator, side: int, cells: int) -> np.ndarray:
    coarse = rng.uniform(0, 255, (cells, cells)).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((side, side), Image.Resampling.BICUBIC), dtype=np.uint8)


def _make_image(index: int, seed: int, lo: int, hi: int) -> tuple[bytes, tuple[int, int, int, int]]:
    """One RGB JPEG with a distinct 'face' in a box (the box covers 45-70% of the short side)."""
    rng = np.random.default_rng([seed, index])
    width, height = (int(v) for v in rng.integers(lo, hi + 1, size=2))
    side = int(rng.uniform(0.45, 0.7) * min(width, height))
    x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
    big = max(width, height)
    scene = np.stack([_field(rng, big, 5)[:height, :width] for _ in range(3)], axis=-1)
    scene += rng.integers(0, 12, scene.shape, dtype=np.uint8)  # sensor noise, so JPEGs are not trivial
    face = _field(rng, side, 8)
    scene[y : y + side, x : x + side] = (face[..., None] * rng.uniform(0.6, 1.0, 3)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(scene).save(buf, format="JPEG", quality=int(rng.integers(80, 96)))
    return buf.getvalue(), (x, y, side, side)


def _write_chunk(indices: list[int], root: str, seed: int, lo: int, hi: int) -> list[tuple]:
    rows = []
    for i in indices:
        data, box = _make_image(i, seed, lo, hi)
        rel = f"{i % 97}/{i:07d}.jpg"
        path = Path(root) / "Manually_Annotated_Images" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        rows.append((rel, *box, "", i % len(CLASSES), 0.0, 0.0))
    return rows


def make_source(root: Path, n: int, seed: int, lo: int, hi: int, workers: int) -> pd.DataFrame:
    chunks = [list(range(i, min(n, i + 250))) for i in range(0, n, 250)]
    write = functools.partial(_write_chunk, root=str(root), seed=seed, lo=lo, hi=hi)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        rows = [r for chunk in pool.map(write, chunks) for r in chunk]
    csv = pd.DataFrame(rows, columns=list(CSV_COLUMNS))
    csv.to_csv(root / "training.csv", index=False)
    return csv


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (pool workers): immune to a busy machine."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def make_dataset(root: Path, per_class: int, seed: int) -> None:
    rng = np.random.default_rng([seed, 99])
    for label in CLASSES:
        folder = root / "train" / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(_field(rng, 48, 6)).save(folder / f"{i}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="source images to generate and convert")
    ap.add_argument("--cores", type=int, default=2, help="CPUs to pin to and worker processes to use")
    ap.add_argument("--min-side", type=int, default=128)
    ap.add_argument("--max-side", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-merge", action="store_true", help="time the conversion only")
    ap.add_argument("--keep", type=Path, default=None, help="keep the generated files here")
    ap.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = ap.parse_args()

    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if available and len(available) > args.cores:
        os.sched_setaffinity(0, set(available[: args.cores]))  # workers inherit the mask
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-affectnet-"))
    tmp.mkdir(parents=True, exist_ok=True)
    source = tmp / "affectnet"
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir()
    try:
        t0 = time.perf_counter()
        csv = make_source(source, args.n, args.seed, args.min_side, args.max_side, args.cores)
        gen_s = time.perf_counter() - t0
        mb = sum(p.stat().st_size for p in source.rglob("*.jpg")) / 1e6

        items = [
            (
                str(source / "Manually_Annotated_Images" / r.subDirectory_filePath),
                (int(r.face_x), int(r.face_y), int(r.face_width), int(r.face_height)),
            )
            for r in csv.itertuples(index=False)
        ]
        t0, c0 = time.perf_counter(), _cpu_seconds()
        records = map_batches(
            functools.partial(convert_faces, size=48, margin=0.1), items, batch_size=64, workers=args.cores
        )
        convert_s, convert_cpu = time.perf_counter() - t0, _cpu_seconds() - c0
        ok = sum(r["ok"] for r in records)
        numbers: dict[str, object] = {
            "images": args.n,
            "sides_px": [args.min_side, args.max_side],
            "source_mb": round(mb, 1),
            "cores": cores,
            "workers": args.cores,
            "generate_s": round(gen_s, 2),
            "convert_s": round(convert_s, 2),
            "convert_cpu_s": round(convert_cpu, 2),
            "convert_cpu_ms_per_image": round(1000 * convert_cpu / args.n, 3),
            "converted_ok": ok,
        }

        if not args.skip_merge:
            make_dataset(tmp / "dataset", 50, args.seed)
            ws = Workspace(tmp / "ws")
            shutil.rmtree(ws.root, ignore_errors=True)
            scan(ws, ScanParams(dataset=tmp / "dataset", workers=1))
            # a target above what the source holds: every source image is converted and checked
            target = 50 + args.n // len(CLASSES) + 1
            t0, c0 = time.perf_counter(), _cpu_seconds()
            result = merge_affectnet(
                ws, MergeParams(source=source, target=str(target), splits="train", workers=args.cores)
            )
            merge_s, merge_cpu = time.perf_counter() - t0, _cpu_seconds() - c0
            numbers.update(
                merge_s=round(merge_s, 2),
                merge_cpu_s=round(merge_cpu, 2),
                merge_examined=int(result.plan["examined"].sum()),
                merge_added=result.added,
                merge_skipped=result.skipped,
            )
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    numbers["machine"] = f"{platform.processor() or platform.machine()}, python {platform.python_version()}"
    if args.json:
        print(json.dumps(numbers, indent=2))
        return
    print(f"generated {args.n} JPEGs ({args.min_side}-{args.max_side} px, {mb:.0f} MB) in {gen_s:.1f} s")
    print(
        f"convert: {args.n} images in {convert_s:.1f} s on {args.cores} workers, {convert_cpu:.1f} CPU-s "
        f"({numbers['convert_cpu_ms_per_image']} ms CPU per image; {ok} ok); target <= 60 s"
    )
    if "merge_s" in numbers:
        print(
            f"merge-affectnet end to end: examined {numbers['merge_examined']}, added {numbers['merge_added']} "
            f"in {numbers['merge_s']:.1f} s ({numbers['merge_cpu_s']:.1f} CPU-s); skipped {numbers['merge_skipped']}"
        )


if __name__ == "__main__":
    main()
