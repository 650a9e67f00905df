"""Benchmark annotator votes on real FER2013 + FER+: import speed and correctness, vote-flag precision.

1. ``import-csv``: rebuild ``fer2013.csv`` from the FER+ release if it is not given (each image FER+
   kept becomes one row, in ``fer2013new.csv`` order: its PNG's pixels, ``fer2013new.csv``'s Usage,
   the Kaggle label of the JPEG with those pixels as the emotion; the rows FER+ dropped are missing),
   scan it, and time ``fercurate votes import fer2013new.csv``. Checked by pixels: every named line
   lands on a row whose stored pixels equal its FER+ PNG's.
2. ``import-kaggle``: scan the Kaggle JPEG folders and time ``fercurate votes import`` of the FER+
   data folder (matched by pixels). Checked by pixels: every FER+ image matched, each to a distinct
   row, every matched JPEG within the JPEG noise of its PNG (RMS recomputed here from the files), and
   how often the match names the same JPEG as the reference index in ``--truth`` (where it does not,
   both JPEGs are re-encodings of one photo: their RMS to the PNG is shown).
3. ``targets``: the trainer on vote distributions against the majority label, on a set as a user
   curates it (``scan``, ``votes import`` of the FER+ data folder, ``dedup --mirror``, ``split``):
   ``benchmark --targets labels`` and ``benchmark --targets votes`` of the split version, both scored
   with ``--gold-labels votes`` on the same gold images, and the paired bootstrap interval of the
   difference (votes minus labels) over those images.
4. ``flag``: on a scanned set with votes (real fer4), ``flag`` with votes alone, measured honestly:
   the ten votes of each row are split 5 / 5 at random, the flags come from one half, and a
   ``wrong`` flag counts as right when the held-out half's most-voted class is not the given label
   (a tie with it counts as not confirmed). Thresholds are tuned on the ``Training_*`` rows only.

Timings are taken through the console script, with wall seconds, the process's CPU seconds
(children included) and the load average: the build machine is shared, so wall time is inflated.

Run from the repository root::

    python bench/bench_votes.py --workdir /tmp/votes/bench all
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REAL = Path("/tmp/real")


def timed(cmd: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run a fercurate command with --json; its result, and wall / CPU seconds and the load average."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = Path("/proc/loadavg").read_text().split()[:3]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "fercurate", *cmd, "--json"], capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(proc.stdout), {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "loadavg_before": load}


def decode(paths: list[str]) -> np.ndarray:
    from fercurate.images import apply_batches, load_gray_files

    parts = apply_batches(functools.partial(load_gray_files, size=48), paths, batch_size=1024)
    return np.concatenate(parts)


def ferplus_pngs(data: Path) -> dict[tuple[str, str], str]:
    """(Usage, name) -> PNG path of every image the FER+ release holds."""
    from fercurate.votes.params import FERPLUS_FOLDERS

    return {(usage, p.name): str(p) for folder, usage in FERPLUS_FOLDERS.items() for p in (data / folder).glob("*.png")}


# -- 1. fer2013new.csv against fer2013.csv ----------------------------------------------------------------
def rebuild_csv(dest: Path, new_csv: Path, data: Path, truth: Path) -> Path:
    """fer2013.csv from the images FER+ kept (the real one is not among the snapshots)."""
    if dest.exists():
        return dest
    emotions = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    folder = {"Training": "Train", "PublicTest": "Valid", "PrivateTest": "Test"}
    labels = {(r["ferplus_folder"], r["ferplus_name"]): r["label"] for r in csv.DictReader(open(truth))}
    pngs = ferplus_pngs(data)
    lines = [r for r in csv.DictReader(open(new_csv)) if r["Image name"]]
    pixels = decode([pngs[(r["Usage"], r["Image name"])] for r in lines])
    tmp = dest.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        fh.write("emotion,pixels,Usage\n")
        for r, px in zip(lines, pixels, strict=True):
            code = emotions.index(labels[(folder[r["Usage"]], r["Image name"])])
            fh.write(f"{code},{' '.join(map(str, px.ravel()))},{r['Usage']}\n")
    tmp.rename(dest)
    return dest


def bench_import_csv(work: Path, csv_path: Path | None) -> dict[str, Any]:
    from fercurate.manifest import Col, VoteCol
    from fercurate.workspace import Workspace, load_pixels

    new_csv, data = REAL / "ferplus" / "fer2013new.csv", REAL / "ferplus" / "data"
    csv_path = csv_path or rebuild_csv(work / "fer2013.csv", new_csv, data, REAL / "sets/truth/ferplus_votes.csv")
    ws = work / "ws-csv"
    if not ws.exists():
        timed(["scan", str(csv_path), "-w", str(ws)])
    result, timing = timed(["votes", "import", str(new_csv), "-w", str(ws), "--version", "0"])
    info, df = Workspace(ws).read()
    voted = df[df[VoteCol.IMAGE].notna()]
    pngs = ferplus_pngs(data)
    usage = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
    png = decode([pngs[(usage[s], n)] for s, n in zip(voted[Col.SPLIT], voted[VoteCol.IMAGE], strict=True)])
    stored = load_pixels(Workspace(ws), info, voted, 48)
    same = (png.reshape(len(png), -1) == stored.reshape(len(stored), -1)).all(axis=1)
    return {
        "csv": str(csv_path),
        "csv_rows": len(df),
        "import": {k: result[k] for k in ("entries", "matched", "unmatched", "ambiguous", "rows_with_votes", "method")},
        "rows_checked_by_pixels": len(voted),
        "wrong_by_pixels": int((~same).sum()),
        **timing,
    }


# -- 2. label.csv against the Kaggle JPEG folders ----------------------------------------------------------
def bench_import_kaggle(work: Path, truth: Path) -> dict[str, Any]:
    from fercurate.votes.match import rms

    ws = work / "ws-kaggle"
    if not ws.exists():
        timed(["scan", str(REAL / "fer2013"), "-w", str(ws)])
    result, timing = timed(["votes", "import", str(REAL / "ferplus"), "-w", str(ws), "--version", "0"])
    report = pd.read_csv(result["report"])
    matched = report[report["status"] == "matched"]
    pngs = ferplus_pngs(REAL / "ferplus" / "data")
    png = decode([pngs[(u, n)] for u, n in zip(matched["usage"], matched["name"], strict=True)])
    jpg = decode([str(REAL / "fer2013" / p) for p in matched["path"]])
    dist = rms(png, jpg)
    ref = {(r["ferplus_folder"], r["ferplus_name"]): r["source"] for r in csv.DictReader(open(truth))}
    folder = {"Training": "Train", "PublicTest": "Valid", "PrivateTest": "Test"}
    theirs = [ref.get((folder[u], n)) for u, n in zip(matched["usage"], matched["name"], strict=True)]
    differ = [i for i, (t, p) in enumerate(zip(theirs, matched["path"], strict=True)) if t is not None and t != p]
    other = decode([str(REAL / "fer2013" / theirs[i]) for i in differ]) if differ else np.zeros((0, 48, 48))
    return {
        "ferplus_images": int(len(report)),
        "import": {k: result[k] for k in ("matched", "unmatched", "ambiguous", "rows_with_votes", "distance")},
        "distinct_rows": int(matched["image_id"].nunique()),
        "rms_recomputed": {"median": round(float(np.median(dist)), 3), "max": round(float(dist.max()), 3)},
        "same_as_reference_index": len(matched) - len(differ),
        "differs_from_reference": [
            {
                "name": matched["name"].iloc[i],
                "ours": matched["path"].iloc[i],
                "reference": theirs[i],
                "rms_ours": round(float(dist[i]), 3),
                "rms_reference": round(float(rms(png[[i]], other[[k]])[0]), 3),
                "rms_between_jpegs": round(float(rms(jpg[[i]], other[[k]])[0]), 3),
            }
            for k, i in enumerate(differ)
        ],
        **timing,
    }


# -- 3. wrong-flag precision against held-out annotators ---------------------------------------------------
def split_votes(counts: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's votes dealt at random into two halves (the first gets floor(n / 2))."""
    rng = np.random.default_rng(seed)
    a = np.zeros_like(counts)
    for i, row in enumerate(counts):
        ballots = np.repeat(np.arange(len(row)), row)
        rng.shuffle(ballots)
        a[i] = np.bincount(ballots[: len(ballots) // 2], minlength=len(row))
    return a, counts - a


def bench_flag(
    work: Path, dataset: Path, index: Path | None, seeds: int, grid: list[tuple[float, float]]
) -> dict[str, Any]:
    from fercurate.manifest import ACTIVE, VOTE_COUNT_COLUMNS, Col, VoteCol
    from fercurate.votes.flagging import WRONG, vote_flags
    from fercurate.votes.params import FERPLUS_CLASSES
    from fercurate.votes.stats import class_map, mapped_votes
    from fercurate.workspace import Workspace

    if index is not None:
        # the set's rows are Kaggle JPEGs with their Kaggle labels (index: path,source,label,...): take
        # their votes from the Kaggle workspace of import-kaggle instead of decoding them all again
        ws = work / "ws-kaggle"
        if not ws.exists():
            bench_import_kaggle(work, REAL / "sets" / "truth" / "ferplus_votes.csv")
        _, df = Workspace(ws).read()
        sources = pd.read_csv(index)
        df = df[df[Col.PATH].isin(set(sources["source"]))]
        if (df[Col.LABEL].to_numpy() != df[Col.PATH].map(sources.set_index("source")["label"]).to_numpy()).any():
            raise SystemExit(f"{index}: labels differ from the Kaggle folders'; scan the set instead")
    else:
        ws = work / f"ws-{dataset.name}"
        if not ws.exists():
            timed(["scan", str(dataset), "-w", str(ws)])
            timed(["votes", "import", str(REAL / "ferplus"), "-w", str(ws)])
        _, df = Workspace(ws).read()
    rows = df[(df[Col.STATUS] == ACTIVE) & df[VoteCol.N].notna()]
    classes = sorted(df.loc[df[Col.STATUS] == ACTIVE, Col.LABEL].unique())
    mapping = class_map(classes)
    counts = rows[list(VOTE_COUNT_COLUMNS)].astype(int).to_numpy()
    labels = rows[Col.LABEL].astype(str).to_numpy()
    training = rows[Col.PATH].str.rsplit("/", n=1).str[-1].str.startswith("Training_").to_numpy()
    unmapped = [j for j, c in enumerate(FERPLUS_CLASSES) if mapping.get(c) is None]
    index = {c: j for j, c in enumerate(classes)}
    given = np.array([index[c] for c in labels])

    def score(rule: tuple[float, float], subset: np.ndarray) -> dict[str, Any]:
        """Flags from half A; precision by half B: ``no_majority`` = B gives the label no majority
        (the import's default scheme would not pick it), ``outvoted`` = some class beats it outright in B."""
        flagged = no_majority = outvoted = 0
        for seed in range(seeds):
            a, b = split_votes(counts[subset], seed)
            wrong = vote_flags(a, labels[subset], classes, mapping, *rule).kind == WRONG
            held = np.concatenate([mapped_votes(b, mapping, classes), b[:, unmapped]], axis=1)
            g = held[np.arange(len(held)), given[subset]]
            others = held.copy()
            others[np.arange(len(held)), given[subset]] = -1
            flagged += int(wrong.sum())
            no_majority += int((wrong & (2 * g <= held.sum(axis=1))).sum())
            outvoted += int((wrong & (others.max(axis=1) > g)).sum())
        return {
            "max_support": rule[0],
            "min_majority": rule[1],
            "wrong_flags_per_split": round(flagged / seeds, 1),
            "precision_no_majority": round(no_majority / max(flagged, 1), 4),
            "precision_outvoted": round(outvoted / max(flagged, 1), 4),
        }

    tuning = [score(rule, training) for rule in grid]
    passing = [t for t in tuning if t["precision_no_majority"] >= 0.95]
    if passing:
        chosen = max(passing, key=lambda t: t["wrong_flags_per_split"])
    else:
        chosen = max(tuning, key=lambda t: t["precision_no_majority"])
    rule = (chosen["max_support"], chosen["min_majority"])
    everything = score(rule, np.ones(len(rows), bool))
    full = vote_flags(counts, labels, classes, mapping, *rule)
    return {
        "dataset": str(dataset),
        "rows_with_votes": int(len(rows)),
        "training_rows": int(training.sum()),
        "tuning_on_training_rows": tuning,
        "chosen": {"max_support": rule[0], "min_majority": rule[1]},
        "held_out_precision_all_rows": everything,
        "flags_with_all_ten_votes": {k: int((full.kind == k).sum()) for k in ("wrong", "ambiguous")},
        "seeds": seeds,
    }


def bench_targets(work: Path, dataset: Path, preset: str, seeds: int, epochs: int | None) -> dict[str, Any]:
    from fercurate.benchmark.stage import bootstrap_delta
    from fercurate.workspace import Workspace

    ws = work / f"ws-targets-{dataset.name}"
    steps: dict[str, Any] = {}
    if not (ws / "DONE").exists():
        for name, cmd in (
            ("scan", ["scan", str(dataset)]),
            ("votes_import", ["votes", "import", str(REAL / "ferplus" / "data")]),
            ("dedup", ["dedup", "--mirror"]),
            ("split", ["split"]),
        ):
            _, steps[name] = timed([*cmd, "-w", str(ws)])
        (ws / "DONE").write_text("")
    version = Workspace(ws).resolve().version
    runs: dict[str, Any] = {}
    correct: dict[str, np.ndarray] = {}
    for targets in ("labels", "votes"):
        cmd = ["benchmark", version, "--preset", preset, "--seeds", str(seeds), "--device", "cpu"]
        cmd += ["--targets", targets, "--gold-labels", "votes", "-w", str(ws)]
        cmd += ["--epochs", str(epochs)] if epochs else []
        result, timing = timed(cmd)
        gold = pd.read_parquet(Path(result["report_dir"]) / "gold.parquet")
        correct[targets] = gold[f"correct_{version}"].to_numpy(dtype=float)
        score = result["versions"][-1]
        runs[targets] = {
            "gold_acc": score["gold_acc_mean"],
            "gold_macro_f1": score["gold_f1_mean"],
            "gold_size": result["gold_size"],
            "notes": result["warnings"],
            **timing,
        }
    delta, lo, hi = bootstrap_delta(correct["labels"], correct["votes"])
    return {
        "dataset": str(dataset),
        "version": version,
        "preset": preset,
        "seeds": seeds,
        "steps": steps,
        "runs": runs,
        "votes_minus_labels": {"delta": round(delta, 4), "ci95": [round(lo, 4), round(hi, 4)]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["import-csv", "import-kaggle", "targets", "flag", "all"])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/votes/bench"))
    parser.add_argument("--csv", type=Path, default=None, help="fer2013.csv (default: rebuilt from FER+)")
    parser.add_argument("--dataset", type=Path, default=REAL / "sets" / "fer4", help="set for the flag bench")
    parser.add_argument(
        "--index",
        type=Path,
        default=REAL / "sets" / "truth" / "fer4_index.csv",
        help="the set's index (path,source,label): votes from the Kaggle workspace; 'none' to scan --dataset",
    )
    parser.add_argument("--truth", type=Path, default=REAL / "sets" / "truth" / "ferplus_votes.csv")
    parser.add_argument("--seeds", type=int, default=5, help="random 5/5 vote splits averaged")
    parser.add_argument("--preset", default="cpu", help="trainer preset for the targets bench")
    parser.add_argument("--train-seeds", type=int, default=1, help="models per target kind (targets bench)")
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs (targets bench)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"cpus": os.cpu_count()}
    if args.what in ("import-csv", "all"):
        out["import_csv"] = bench_import_csv(args.workdir, args.csv)
    if args.what in ("import-kaggle", "all"):
        out["import_kaggle"] = bench_import_kaggle(args.workdir, args.truth)
    if args.what in ("targets", "all"):
        out["targets"] = bench_targets(args.workdir, args.dataset, args.preset, args.train_seeds, args.epochs)
    if args.what in ("flag", "all"):
        index = None if str(args.index) == "none" else args.index
        grid = [(s, m) for s in (0.0, 0.1, 0.2) for m in (0.6, 0.8, 0.9, 1.0)]
        out["flag"] = bench_flag(args.workdir, args.dataset, index, args.seeds, grid)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
