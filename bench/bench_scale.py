"""Scan + dedup of N generated 48x48 faces with ``--engine local`` and ``--engine ray``: wall, CPU, driver memory.

    python bench/bench_scale.py --n 100000 --root /tmp/ray/scale            # generate, then both engines
    python bench/bench_scale.py --n 100000 --root /tmp/ray/scale --two-nodes  # + a two-node cluster here

The faces: a small demo (``fercurate demo``, 1,500 renders) gives the base faces; each of the N files
is a tiling of four quadrants from four random base faces with its own brightness and contrast
plus (``--faces overlay``, the default) a random low-frequency field, and 1 % of them are planted
copies (half exact, half shifted by 1-2 pixels) so dedup has pairs to verify. Without the field
(``--faces tiles``, the first figures of docs/scale.md) the faces are 14x more alike to a pHash
than real faces, and dedup's Hamming search finds quadratically many pairs. Files are PNG under
``train/<class>/``.

Each stage runs in a fresh process (the driver, as a user runs it): its wall time, its own CPU and
that of every process under it (the local pool, or the Ray processes it started: sampled from
/proc twice a second, so the last half second of a process may be missed), and its own peak RSS
(``ru_maxrss``, which counts the pages of Ray's object store the driver wrote; and, sampled, the
peak without shared memory). ``--two-nodes`` starts a
head and a second node on this machine with ``ray start`` (one CPU each) and reports the share of
scan batches the second node ran. The machine's load average is printed with every figure:
timings taken on a shared machine are inflated by whatever else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

CLASSES = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
SIDE = 48
_FILES_PER_TASK = 5000


# -- generation ------------------------------------------------------------------------------------
def base_faces(folder: Path) -> np.ndarray:
    """The demo's active faces, decoded: the tiles every generated face is made of."""
    from fercurate.demo import DemoParams, generate_demo
    from fercurate.images import inspect_files

    demo = generate_demo(folder, DemoParams(n_images=1500, n_affectnet=0, n_invalid=0))
    paths = sorted(str(p) for p in demo.dataset_dir.rglob("*") if p.is_file())
    found = inspect_files(paths, SIDE)
    return found["pixels"][np.array(found["status"]) == "active"]


def _write_part(args: tuple[str, np.ndarray, int, int, int, str]) -> int:
    """Files ``start`` .. ``stop`` - 1: quadrant tilings of the base faces, a few planted copies."""
    from PIL import Image

    root, bases, start, stop, seed, style = args
    rng = np.random.default_rng([seed, start])
    half = SIDE // 2
    yy, xx = np.mgrid[0:SIDE, 0:SIDE] / SIDE
    prev = None
    for k in range(start, stop):
        if prev is not None and rng.random() < 0.01:  # a planted copy of the previous file
            face = prev if rng.random() < 0.5 else np.roll(prev, int(rng.integers(1, 3)), axis=int(rng.integers(0, 2)))
        else:
            face = np.empty((SIDE, SIDE), np.float64)
            picks = rng.integers(0, len(bases), 4)
            for q, (y, x) in enumerate(((0, 0), (0, half), (half, 0), (half, half))):
                face[y : y + half, x : x + half] = bases[picks[q], y : y + half, x : x + half]
            if style == "overlay":
                face += OVERLAY * _smooth_field(rng, yy, xx)
            face = np.clip(face * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20), 0, 255).astype(np.uint8)
        prev = face
        path = Path(root) / "train" / CLASSES[k % len(CLASSES)] / f"{k:08d}.png"
        Image.fromarray(face).save(path, format="PNG")
    return stop - start


#: Amplitude of the random low-frequency field ``overlay`` faces get: tilings of 1,500 base faces
#: alone are 14x more alike to a pHash than real faces (pairs within Hamming 12: 1.9e-3 of all pairs,
#: against 1.35e-4 on FER2013's training rows); with this field, 1.8e-4 (14,000 faces each)
OVERLAY = 60.0


def _smooth_field(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Four random low-frequency cosines (up to 3 half-periods a side): moves a face's pHash bits."""
    field = np.zeros_like(yy)
    for _ in range(4):
        fy, fx = rng.integers(0, 4, 2)
        field += rng.normal() * np.cos(np.pi * (fy * yy + fx * xx) + rng.uniform(0, 2 * np.pi))
    return field


def generate(root: Path, n: int, seed: int = 0, workers: int = 2, style: str = "overlay") -> dict[str, float]:
    """Write ``n`` faces under ``root/train/<class>/``; returns the seconds taken."""
    started = time.perf_counter()
    for c in CLASSES:
        (root / "train" / c).mkdir(parents=True, exist_ok=True)
    bases = base_faces(root.parent / f"{root.name}-bases")
    tasks = [(str(root), bases, s, min(n, s + _FILES_PER_TASK), seed, style) for s in range(0, n, _FILES_PER_TASK)]
    with ProcessPoolExecutor(workers) as pool:
        written = sum(pool.map(_write_part, tasks))
    return {"files": written, "seconds": round(time.perf_counter() - started, 1), "load": _load()}


# -- one measured stage, in its own process ----------------------------------------------------------
class TreeCpu:
    """CPU seconds of this process's descendants, sampled from /proc (utime + stime of each, last seen)."""

    def __init__(self) -> None:
        self.seen: dict[int, float] = {}
        self.peak_private = 0  # bytes: the driver's resident memory less shared memory (Ray's object store)
        self.peak_anon = 0  # bytes: the driver's own memory (neither shared nor file pages, such as mapped pixels)
        self._stop = threading.Event()
        self._tick = os.sysconf("SC_CLK_TCK")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.sample()

    def sample(self) -> None:
        with open("/proc/self/status") as fh:
            status = {k: v for k, _, v in (line.partition(":") for line in fh)}
        private = int(status["VmRSS"].split()[0]) - int(status.get("RssShmem", "0 kB").split()[0])
        self.peak_private = max(self.peak_private, private * 1024)
        self.peak_anon = max(self.peak_anon, int(status.get("RssAnon", "0 kB").split()[0]) * 1024)
        parents: dict[int, int] = {}
        times: dict[int, float] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry)] = int(fields[1])
            times[int(entry)] = (int(fields[11]) + int(fields[12])) / self._tick
        me = os.getpid()
        for pid in times:
            p, depth = pid, 0
            while p in parents and p != me and depth < 32:
                p, depth = parents[p], depth + 1
            if p == me and pid != me:
                self.seen[pid] = max(self.seen.get(pid, 0.0), times[pid])

    def stop(self) -> float:
        self._stop.set()
        self.sample()
        return sum(self.seen.values())


class Phases:
    """A progress reporter that keeps how long each phase of a stage took (wall seconds)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._current: tuple[str, float] | None = None

    def start(self, description: str, total: int | None) -> None:
        self.finish()
        self._current = (description, time.perf_counter())

    def advance(self, n: int = 1) -> None:
        pass

    def finish(self) -> None:
        if self._current:
            name, since = self._current
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - since, 1)
            self._current = None


def run_stage(stage: str, engine_name: str, workspace: str, dataset: str, address: str | None) -> dict[str, Any]:
    """Run one stage as the CLI would, and measure it (called in a fresh process by :func:`measure`)."""
    from fercurate.dedup import DedupParams, dedup
    from fercurate.engine import EngineParams, open_engine
    from fercurate.scan import ScanParams, scan
    from fercurate.workspace import Workspace

    tree = TreeCpu()
    phases = Phases()
    started = time.perf_counter()
    with open_engine(EngineParams(engine=engine_name, ray_address=address)) as engine:
        ready = time.perf_counter() - started
        if stage == "scan":
            result: Any = scan(Workspace(workspace), ScanParams(dataset=Path(dataset)), phases, engine)
            summary = {"rows": result.rows}
        else:
            result = dedup(Workspace(workspace), DedupParams(), phases, engine)
            summary = {"pairs": result.pairs, "removed": result.removed}
        by_node = dict(engine.batches_by_node)
        phases.finish()
    wall = time.perf_counter() - started
    own = resource.getrusage(resource.RUSAGE_SELF)
    waited = resource.getrusage(resource.RUSAGE_CHILDREN)
    tree_cpu = tree.stop()
    return {
        "stage": stage,
        "engine": engine_name + (" (2 nodes)" if address else ""),
        "wall_s": round(wall, 1),
        "engine_start_s": round(ready, 1),
        "driver_cpu_s": round(own.ru_utime + own.ru_stime, 1),
        "all_cpu_s": round(own.ru_utime + own.ru_stime + max(tree_cpu, waited.ru_utime + waited.ru_stime), 1),
        "driver_peak_rss_gb": round(own.ru_maxrss / 1024**2, 2),
        "driver_peak_private_gb": round(tree.peak_private / 1024**3, 2),
        "driver_peak_anon_gb": round(tree.peak_anon / 1024**3, 2),
        "batches_by_node": by_node,
        "phases_s": phases.seconds,
        "version": Workspace(workspace).versions()[-1].content_hash[:16],
        "load": _load(),
        **summary,
    }


def measure(stage: str, engine: str, workspace: Path, dataset: Path, address: str | None = None) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--stage", stage, "--engine", engine, "--workspace", str(workspace)]
    cmd += ["--dataset", str(dataset)] + (["--address", address] if address else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{stage} on {engine} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# -- a two-node cluster on this machine ----------------------------------------------------------
def start_two_nodes() -> tuple[str, list[subprocess.Popen[bytes]], str]:
    """A head and a second node (``ray start --block``, one CPU each); returns the address, the
    processes (terminate them to stop the nodes) and the second node's id."""
    import ray

    ray_cli = str(Path(sys.executable).with_name("ray"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    quiet: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    common = ["--block", "--num-cpus=1", "--disable-usage-stats"]
    procs = [
        subprocess.Popen([ray_cli, "start", "--head", f"--port={port}", "--include-dashboard=false", *common], **quiet)
    ]
    while subprocess.run([ray_cli, "status", f"--address={address}"], capture_output=True).returncode != 0:
        time.sleep(0.5)
    procs.append(
        subprocess.Popen([ray_cli, "start", f"--address={address}", "--resources", '{"second": 1}', *common], **quiet)
    )
    ray.init(address=address, log_to_driver=False)
    while len([n for n in ray.nodes() if n["Alive"]]) < 2:
        time.sleep(0.5)
    second = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and "second" in n["Resources"])
    ray.shutdown()
    return address, procs, second


def _load() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="faces to generate")
    ap.add_argument("--root", type=Path, default=Path("/tmp/fercurate-scale"), help="scratch folder")
    ap.add_argument("--engines", default="local,ray", help="engines to time, in this order")
    ap.add_argument("--two-nodes", action="store_true", help="also time ray on a two-node cluster started here")
    ap.add_argument("--delete", action="store_true", help="delete the generated files and workspaces afterwards")
    ap.add_argument("--out", type=Path, help="append the JSON rows to this file")
    ap.add_argument(
        "--faces",
        choices=("overlay", "tiles"),
        default="overlay",
        help="tiles: quadrant tilings only (the first tables of docs/scale.md); overlay: with a random "
        "low-frequency field, about as alike to a pHash as real faces",
    )
    # one stage in this process (used by measure())
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--engine", help=argparse.SUPPRESS)
    ap.add_argument("--workspace", help=argparse.SUPPRESS)
    ap.add_argument("--dataset", help=argparse.SUPPRESS)
    ap.add_argument("--address", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # clusters on one machine, started here
    if args.stage:
        print(json.dumps(run_stage(args.stage, args.engine, args.workspace, args.dataset, args.address)))
        return

    dataset = args.root / (f"faces-{args.n}" if args.faces == "tiles" else f"faces-{args.n}-{args.faces}")
    rows: list[dict[str, Any]] = []

    def emit(row: dict[str, Any]) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(json.dumps({"n": args.n, **row}) + "\n")

    if not (dataset / "train").exists():
        emit({"generate": generate(dataset, args.n, style=args.faces)})
    runs = [(e, None) for e in args.engines.split(",") if e]
    procs: list[subprocess.Popen[bytes]] = []
    second = None
    try:
        if args.two_nodes:
            address, procs, second = start_two_nodes()
            runs.append(("ray", address))
        for engine, address in runs:
            workspace = args.root / f"ws-{args.n}-{engine}{'-2nodes' if address else ''}"
            shutil.rmtree(workspace, ignore_errors=True)
            for stage in ("scan", "dedup"):
                row = measure(stage, engine, workspace, dataset, address)
                if address and second:
                    total = sum(row["batches_by_node"].values())
                    row["second_node_share"] = round(row["batches_by_node"].get(second, 0) / max(total, 1), 3)
                emit(row)
            shutil.rmtree(workspace, ignore_errors=True)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait()
        if args.delete:
            shutil.rmtree(dataset, ignore_errors=True)
            shutil.rmtree(args.root / f"{dataset.name}-bases", ignore_errors=True)
    hashes = {(r["stage"], r["version"]) for r in rows if "stage" in r}
    same = len({v for s, v in hashes if s == "scan"}) <= 1 and len({v for s, v in hashes if s == "dedup"}) <= 1
    print(json.dumps({"same_versions_on_every_engine": same}))


if __name__ == "__main__":
    main()
