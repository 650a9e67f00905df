"""Two writers on one workspace at the same instant: how often do both commit? (Target: never.)

Usage: python bench/bench_lock.py --trials 200 [--mode resident|fresh] [--scratch /tmp/you/bench_lock]

Each trial copies a freshly scanned workspace (40 images), then starts ``fercurate split --seed 1``
and ``fercurate split --seed 2`` on it at the same instant, through the CLI entry point
(``fercurate.cli.main``), each in its own process. Exactly one may commit: the other must exit 1
with "locked by". A *double commit* is a trial where both exit 0 or more than one version appears;
every version written is also read back through its sha256 check.

``--mode resident`` (default) keeps two processes for all trials, imports done, and releases them
together per trial through a barrier: the tightest start (microseconds apart) and cheap enough for
thousands of trials. ``--mode fresh`` starts two new interpreters per trial that import fercurate,
then sleep until a common start time (``--start-delay`` seconds ahead) and call the entry point; a
trial where either finished its imports after the start time is counted as late, not simultaneous.

Prints one JSON line: trials, double commits, outcomes, seconds, CPU seconds, load average.

``--hash-rows 100000`` instead measures what the sha256 check costs when a version is read: it
commits a synthetic manifest of that many rows and times hashing its Parquet file against reading it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fercurate.scan import ScanParams, scan
from fercurate.workspace import Workspace

LAUNCH = """
import sys, time
import fercurate.cli
start, late_file = float(sys.argv[1]), sys.argv[2]
with open(late_file, "w") as fh:
    fh.write("late" if time.time() > start else "on time")
time.sleep(max(0.0, start - time.time()))
sys.argv = ["fercurate", *sys.argv[3:]]
fercurate.cli.main()
"""


def write_dataset(root: Path, n: int = 40) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / "train" / ("happy", "sad")[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(folder / f"{i}.png")


def _resident(seed: int, barrier: Any, jobs: Any, results: Any) -> None:
    """A CLI process for every trial: wait for the others, run ``split`` once, report its exit code."""
    import fercurate.cli

    while (root := jobs.get()) is not None:
        os.environ["FERCURATE_WORKSPACE"] = root
        sys.argv = ["fercurate", "split", "--seed", str(seed), "--json"]
        barrier.wait()
        code = 0
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:
                fercurate.cli.main()
            except SystemExit as exc:
                code = int(exc.code or 0)
        results.put((seed, code))


def _judge(root: Path, codes: list[int]) -> tuple[bool, str]:
    ws = Workspace(root)
    new = ws.versions()[1:]
    for info in new:
        ws.read(info.version)  # raises on a record that does not describe its Parquet file
    double = len(new) > 1 or codes.count(0) > 1
    return double, f"{len(new)} version(s), exit codes {sorted(codes)}"


def hash_cost(rows: int, scratch: Path, repeats: int = 5) -> dict[str, Any]:
    """Seconds to hash a ``rows``-row manifest's Parquet file and to read it, best of ``repeats``."""
    import pandas as pd

    from fercurate.manifest import Col, read_manifest
    from fercurate.workspace import file_sha256

    rng = np.random.default_rng(0)
    ids = [f"{i:016x}" for i in rng.permutation(rows * 16)[:rows]]
    labels = rng.choice(["angry", "happy", "neutral", "sad", "surprise"], rows)
    splits = rng.choice(["train", "val", "test"], rows)
    df = pd.DataFrame(
        {
            Col.IMAGE_ID: ids,
            Col.PATH: [f"train/{lbl}/Training_{i:08d}.jpg" for i, lbl in enumerate(labels)],
            Col.SPLIT: splits,
            Col.LABEL: labels,
            Col.SPLIT_ORIGINAL: splits,
            Col.LABEL_ORIGINAL: labels,
            Col.SOURCE: "original",
            Col.STATUS: "active",
            Col.REASON: None,
            Col.WIDTH: pd.array([48] * rows, dtype="Int32"),
            Col.HEIGHT: pd.array([48] * rows, dtype="Int32"),
            Col.MODE: "L",
            Col.SHA256: [hashlib.sha256(i.encode()).hexdigest() for i in ids],  # incompressible, like real ones
        }
    )
    ws = Workspace(scratch / "hash")
    with ws.lock("bench"):
        info = ws.commit(df, stage="bench", parent=None, params={})
    path = Path(info.path)

    def best(fn: Any) -> tuple[float, float]:
        """Best wall and CPU seconds of ``repeats`` calls."""
        walls, cpus = [], []
        for _ in range(repeats):
            t, c = time.perf_counter(), time.process_time()
            fn()
            walls.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
        return round(min(walls), 4), round(min(cpus), 4)

    (hash_wall, hash_cpu), (read_wall, read_cpu) = best(lambda: file_sha256(path)), best(lambda: read_manifest(path))
    return {
        "rows": rows,
        "parquet_mb": round(path.stat().st_size / 1e6, 2),
        "sha256_seconds": hash_wall,
        "sha256_cpu_seconds": hash_cpu,
        "read_manifest_seconds": read_wall,
        "read_manifest_cpu_seconds": read_cpu,
        "loadavg": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--mode", choices=("resident", "fresh"), default="resident")
    scratch = Path("/tmp") / os.environ.get("USER", "fercurate") / "bench_lock"
    parser.add_argument("--scratch", type=Path, default=scratch)
    parser.add_argument("--start-delay", type=float, default=5.0, help="fresh mode: seconds allowed for imports")
    parser.add_argument("--hash-rows", type=int, default=0, help="measure the hash check on N rows instead")
    args = parser.parse_args()
    shutil.rmtree(args.scratch, ignore_errors=True)
    if args.hash_rows:
        print(json.dumps(hash_cost(args.hash_rows, args.scratch)))
        shutil.rmtree(args.scratch, ignore_errors=True)
        return
    write_dataset(args.scratch / "data")
    template = args.scratch / "template"
    scan(Workspace(template), ScanParams(dataset=args.scratch / "data", workers=1))

    outcomes: dict[str, int] = {}
    doubles = late = 0
    started = time.perf_counter()
    if args.mode == "resident":
        ctx = multiprocessing.get_context("spawn")  # clean interpreters, like two CLI processes
        barrier, results = ctx.Barrier(2), ctx.Queue()
        jobs = [ctx.Queue(), ctx.Queue()]
        procs = [ctx.Process(target=_resident, args=(s + 1, barrier, jobs[s], results)) for s in range(2)]
        for p in procs:
            p.start()
    for trial in range(args.trials):
        root = args.scratch / f"ws-{trial % 2}"
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(template, root)
        if args.mode == "resident":
            for q in jobs:
                q.put(str(root))
            codes = [results.get(timeout=120)[1] for _ in range(2)]
        else:
            start = time.time() + args.start_delay
            env = {**os.environ, "FERCURATE_WORKSPACE": str(root)}
            late_files = [str(args.scratch / f"late-{s}") for s in (1, 2)]
            cmds = [
                [sys.executable, "-c", LAUNCH, str(start), late_files[s - 1], "split", "--seed", str(s)] for s in (1, 2)
            ]
            runs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for c in cmds]
            codes = [r.wait() for r in runs]
            if any((args.scratch / f"late-{s}").read_text() == "late" for s in (1, 2)):
                late += 1
        double, outcome = _judge(root, codes)
        doubles += double
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    if args.mode == "resident":
        for q in jobs:
            q.put(None)
        for p in procs:
            p.join()
    usage = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        json.dumps(
            {
                "mode": args.mode,
                "trials": args.trials,
                "double_commits": doubles,
                "late_starts": late,
                "outcomes": outcomes,
                "seconds": round(time.perf_counter() - started, 1),
                "cpu_seconds": round(sum(u.ru_utime + u.ru_stime for u in usage), 1),
                "loadavg": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None,
            }
        )
    )
    shutil.rmtree(args.scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
