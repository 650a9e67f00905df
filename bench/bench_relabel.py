"""Benchmark ``relabel-review flag``: how well it finds wrong labels, and how long it takes.

On the demo dataset (``fercurate.demo.generate_demo``, which plants about 10% wrong labels, mostly
sad <-> neutral, and records them in ``truth.parquet``), or on real FER2013 whose labels were
re-annotated by ten people (FER+: ``fer2013.csv`` plus Microsoft's ``fer2013new.csv``), this

1. scans the data into a fresh workspace and times ``flag`` (k-fold cross-fitting + scoring);
2. scores the same out-of-fold probabilities with each filter x ranking of
   ``fercurate.relabel.scoring`` and with cleanlab's ``find_label_issues`` (if installed), and
   reports precision at 100 / 500 / 1000 of the ranked flags, and precision, recall and F1 of the
   flagged set, against the truth.

Run from the repository root::

    python bench/bench_relabel.py --n-images 3000                        # demo, cpu preset, 2 cores
    python bench/bench_relabel.py --n-images 20000 --cores 2              # the 10-minute target
    python bench/bench_relabel.py --n-images 20000 --preset bpp --device cuda --cores 16
    python bench/bench_relabel.py --fer2013 fer2013.csv --ferplus fer2013new.csv
    # score a version that `fercurate relabel-review flag` wrote on the real fer4 folders
    # (bench/real/ builds them with the FER+ votes matched to each JPEG):
    python bench/bench_relabel.py --flagged /tmp/ws --votes sets/truth/ferplus_votes.csv \
        --index sets/truth/fer4_index.csv

``--cores`` pins the run (after the demo is generated with every core) to that many CPUs and
sets torch's threads to match. ``--workdir`` keeps the data and workspace, so a second run reuses
the demo and the cached out-of-fold probabilities (use a new folder to time training again).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

try:
    import fercurate  # noqa: F401
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fercurate.manifest import ACTIVE, Col  # noqa: E402
from fercurate.relabel.flag import FlagParams, classes_of, flag, prob_column  # noqa: E402
from fercurate.relabel.queue import QUEUE_RANK  # noqa: E402
from fercurate.relabel.scoring import FILTERS, RANKERS, score_labels  # noqa: E402
from fercurate.scan import ScanParams, scan  # noqa: E402
from fercurate.workspace import Workspace  # noqa: E402

TOP_K = (100, 500, 1000)
#: FER+ vote columns and the fercurate class each stands for (unknown / NF are not classes).
FERPLUS_CLASSES = {
    "neutral": "neutral",
    "happiness": "happy",
    "surprise": "surprise",
    "sadness": "sad",
    "anger": "angry",
    "disgust": "disgust",
    "fear": "fear",
    "contempt": "contempt",
}


class PrintProgress:
    """Prints each phase of the flag run with the time since the start (per-fold timings)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def start(self, description: str, total: int | None) -> None:
        print(f"  {time.perf_counter() - self.t0:7.1f} s  {description}", flush=True)

    def advance(self, n: int = 1) -> None:
        print(f"  {time.perf_counter() - self.t0:7.1f} s    epoch done", flush=True)


def metrics(ranked: np.ndarray, flagged: np.ndarray, is_error: np.ndarray) -> dict[str, Any]:
    """Precision at k of a ranking of the flags, and precision / recall / F1 of the flagged set."""
    out: dict[str, Any] = {"flagged": int(flagged.sum())}
    for k in TOP_K:
        top = ranked[:k]
        out[f"p@{k}"] = round(float(is_error[top].mean()), 4) if len(top) else None
        out[f"p@{k}_n"] = int(len(top))  # below k when fewer rows were flagged
    tp = int((flagged & is_error).sum())
    precision = tp / max(int(flagged.sum()), 1)
    recall = tp / max(int(is_error.sum()), 1)
    out.update(
        precision=round(precision, 4),
        recall=round(recall, 4),
        f1=round(2 * precision * recall / max(precision + recall, 1e-12), 4),
        true_flags=tp,
    )
    return out


def compare(probs: np.ndarray, labels: np.ndarray, is_error: np.ndarray) -> dict[str, dict[str, Any]]:
    """Every fercurate filter x ranking, and cleanlab's find_label_issues, on the same probabilities."""
    rows: dict[str, dict[str, Any]] = {}
    for filter_by in FILTERS:
        for method in RANKERS:
            s = score_labels(probs, labels, method=method, filter_by=filter_by)
            rows[f"fercurate {filter_by} / {method}"] = metrics(s.ranked(), s.flagged, is_error)
    try:
        from cleanlab.filter import find_label_issues
    except ImportError:
        print("cleanlab is not installed (pip install cleanlab): no cleanlab baseline", file=sys.stderr)
        return rows
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for filter_by in ("prune_by_noise_rate", "confident_learning", "predicted_neq_given"):
            for method in ("self_confidence", "normalized_margin"):
                ranked = find_label_issues(
                    labels, probs, filter_by=filter_by, return_indices_ranked_by=method, n_jobs=1
                )
                mask = np.zeros(len(labels), dtype=bool)
                mask[ranked] = True
                name = (
                    "cleanlab find_label_issues (defaults)"
                    if (filter_by == "prune_by_noise_rate" and method == "self_confidence")
                    else f"cleanlab {filter_by} / {method}"
                )
                rows[name] = metrics(ranked, mask, is_error)
    return rows


def demo_truth(dest: Path, n_images: int, seed: int) -> tuple[Path, pd.DataFrame]:
    """Generate (or reuse) the demo under ``dest``; returns its dataset folder and truth table."""
    from fercurate.demo import DemoParams, generate_demo

    # reused only when the same params and this version's drawing code made it (a stale demo measures
    # another dataset)
    t0 = time.perf_counter()
    made = generate_demo(dest, DemoParams(n_images=n_images, seed=seed), overwrite=True)
    if made.action != "reused":
        print(f"demo: {n_images} images generated in {time.perf_counter() - t0:.1f} s", flush=True)
    truth = pd.read_parquet(dest / "truth.parquet")
    return dest / "dataset", truth[["path", "given_label", "true_label"]]


def ferplus_truth(fer2013: Path, ferplus: Path) -> pd.DataFrame:
    """The FER+ majority label of each FER2013 row, keyed by the path ``scan`` gives CSV rows."""
    votes = pd.read_csv(ferplus)
    votes.columns = [c.strip() for c in votes.columns]
    names = list(FERPLUS_CLASSES)
    counts = votes[[*names, "unknown", "NF"]].to_numpy(dtype=float)
    top = counts.max(axis=1)
    winner = counts.argmax(axis=1)
    tie = (counts == top[:, None]).sum(axis=1) > 1
    usable = ~tie & (winner < len(names))  # a clear majority for an emotion, not unknown / not-a-face
    true = np.array([FERPLUS_CLASSES[names[w]] if w < len(names) else None for w in winner], dtype=object)
    return pd.DataFrame(
        {
            "path": [f"@store/csv/{fer2013.stem}/{i:06d}.png" for i in range(len(votes))],
            "true_label": np.where(usable, true, None),
        }
    )


#: FER+ calls an image mislabelled when at least this many of its 10 annotators agree on another class.
VOTE_MAJORITY = 6


def vote_truth(votes_csv: Path, index_csv: Path) -> pd.DataFrame:
    """Per image of a real set: ``true_label`` is the class that >= 6 of 10 FER+ votes agree on,
    else the given label (not counted as an error); keyed by the image's path in the set."""
    votes = pd.read_csv(votes_csv)
    index = pd.read_csv(index_csv)[["path", "source", "label"]]
    names = list(FERPLUS_CLASSES)
    counts = votes[names].to_numpy(dtype=int)
    majority = np.where(counts.max(axis=1) >= VOTE_MAJORITY, counts.argmax(axis=1), -1)
    agreed = np.array([FERPLUS_CLASSES[names[m]] if m >= 0 else None for m in majority], dtype=object)
    by_source = pd.DataFrame({"source": votes["source"], "agreed": agreed})
    out = index.merge(by_source, on="source", how="inner")
    out["true_label"] = out["agreed"].where(out["agreed"].notna(), out["label"])
    return out[["path", "true_label"]]


def score_flagged(args: argparse.Namespace) -> None:
    """Score a version written by ``fercurate relabel-review flag`` against the FER+ votes."""
    for option, path in (("--votes", args.votes), ("--index", args.index)):
        if path is None or not Path(path).is_file():
            sys.exit(
                f"{option} {path} is not a file; pass sets/truth/ferplus_votes.csv and fer4_index.csv "
                "written by bench/real/prepare.py"
            )
    ws = Workspace(args.flagged)
    info, df = ws.read(args.version)
    truth = vote_truth(args.votes, args.index)
    df = df[df[Col.STATUS] == ACTIVE].merge(truth, left_on=Col.PATH, right_on="path", how="inner")
    if args.usage:  # e.g. only FER2013's Training rows, the ones to tune on
        usage = pd.read_csv(args.index)[["path", "usage"]]
        df = df.merge(usage, on="path", how="inner")
        df = df[df["usage"] == args.usage]
    scored = df[[Col.PATH, Col.LABEL, "true_label", *(prob_column(c) for c in classes_of(df))]]
    report: dict[str, Any] = {
        "source": f"{args.flagged} {info.version} scored against {args.votes} (>= {VOTE_MAJORITY} of 10 votes)"
        + (f", {args.usage} rows only" if args.usage else ""),
        "preset": info.extra.get("preset"),
        "epochs": info.extra.get("epochs"),
        "folds": info.params.get("folds"),
        "oof_accuracy_vs_given": round(float(info.extra.get("oof_accuracy", float("nan"))), 4),
    }
    report["methods"] = evaluate(scored)
    if QUEUE_RANK in df.columns:  # the version's own queue, which may rank with more than the probabilities
        is_error = (df[Col.LABEL] != df["true_label"]).to_numpy()
        rank = df[QUEUE_RANK].to_numpy(dtype=np.float64)
        queued = np.flatnonzero(~np.isnan(rank))
        name = f"this version's queue (fit_weight {info.params.get('fit_weight', 0.0)})"
        table = {name: metrics(queued[np.argsort(rank[queued])], ~np.isnan(rank), is_error)}
        report["methods"]["table"] = {**table, **report["methods"]["table"]}
    show(report, args.json)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-images", type=int, default=3000, help="demo images (before its planted faults)")
    ap.add_argument("--fer2013", type=Path, help="FER2013 CSV (emotion,pixels,Usage): use real data")
    ap.add_argument("--ferplus", type=Path, help="FER+ votes (fer2013new.csv) for --fer2013")
    ap.add_argument("--workdir", type=Path, help="keep data and workspace here (default: a temp folder)")
    ap.add_argument("--folds", type=int, default=FlagParams.folds)
    ap.add_argument("--preset", default=FlagParams.preset)
    ap.add_argument("--epochs", type=int, default=None, help="override the cross-fitting epochs")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cores", type=int, default=2, help="CPUs to pin to (and torch threads)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--demo", type=Path, help="demo folder to use (generated there if missing)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--save-probs", type=Path, help="write the scored rows (labels, truth, probabilities) here")
    ap.add_argument("--from-probs", type=Path, help="only compare methods on rows saved by --save-probs")
    ap.add_argument("--flagged", type=Path, help="workspace holding a flagged version: only score it")
    ap.add_argument("--version", help="the flagged version in --flagged (default: latest)")
    ap.add_argument("--votes", type=Path, help="FER+ votes matched to the set's images (ferplus_votes.csv)")
    ap.add_argument("--index", type=Path, help="the set's path -> source index (fer4_index.csv)")
    ap.add_argument("--usage", help="with --flagged: score only rows of this FER2013 Usage (e.g. Training)")
    args = ap.parse_args()

    if args.flagged:
        if not (args.votes and args.index):
            ap.error("--flagged needs --votes and --index (bench/real/ writes both under sets/truth/)")
        score_flagged(args)
        return

    if args.from_probs:
        saved = pd.read_parquet(args.from_probs)
        report = json.loads(args.from_probs.with_suffix(".json").read_text())
        report["methods"] = evaluate(saved)
        show(report, args.json)
        return

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-relabel-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.fer2013:
        if not args.ferplus:
            ap.error("--fer2013 needs --ferplus (the FER+ votes, fer2013new.csv)")
        dataset, truth, source = args.fer2013, ferplus_truth(args.fer2013, args.ferplus), "FER2013 + FER+"
    else:
        dataset, truth = demo_truth(args.demo or work / "demo", args.n_images, args.seed)
        source = f"demo (n_images={args.n_images}, seed={args.seed})"

    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if available and len(available) > args.cores:
        os.sched_setaffinity(0, set(available[: args.cores]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    ws = Workspace(work / "workspace")
    t0 = time.perf_counter()
    if not ws.versions():
        scan(ws, ScanParams(dataset=dataset, workers=cores))
    scan_s = time.perf_counter() - t0
    params = FlagParams(
        folds=args.folds,
        preset=args.preset,
        epochs=args.epochs,
        seed=args.seed,
        device=args.device,
        num_threads=cores if args.device == "cpu" else None,
    )
    t0 = time.perf_counter()
    result = flag(ws, params, PrintProgress())
    flag_s = time.perf_counter() - t0
    print(
        f"flag: {result.rows} rows, {result.flagged} flagged, {flag_s:.1f} s "
        f"({result.folds_trained} folds trained, {result.folds_cached} cached)",
        flush=True,
    )

    _, df = ws.read(result.version.version)
    df = df[df[Col.STATUS] == ACTIVE].merge(truth, left_on=Col.PATH, right_on="path", how="left")
    df = df[df["true_label"].notna()]
    scored = df[[Col.PATH, Col.LABEL, "true_label", *(prob_column(c) for c in classes_of(df))]]
    report: dict[str, Any] = {
        "source": source,
        "preset": args.preset,
        "epochs": result.version.extra.get("epochs"),
        "folds": args.folds,
        "device": args.device,
        "cores": cores,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "rows_flagged_over": result.rows,
        "scan_seconds": round(scan_s, 1),
        "flag_seconds": round(flag_s, 1),
        "folds_trained": result.folds_trained,
        "flag_seconds_per_20k_extrapolated": round(flag_s * 20000 / max(result.rows, 1), 1),
        "oof_accuracy_vs_given": round(result.oof_accuracy, 4),
    }
    if args.save_probs:
        scored.to_parquet(args.save_probs, index=False)
        args.save_probs.with_suffix(".json").write_text(json.dumps(report, indent=2))
    report["methods"] = evaluate(scored)
    show(report, args.json)


def evaluate(scored: pd.DataFrame) -> dict[str, Any]:
    """Truth counts and the method comparison for rows with ``label``, ``true_label`` and ``prob_*``."""
    classes = classes_of(scored)
    probs = scored[[prob_column(c) for c in classes]].to_numpy(dtype=np.float64)
    labels = np.array([classes.index(c) for c in scored[Col.LABEL]])
    truth = np.array([classes.index(c) if c in classes else -1 for c in scored["true_label"]])
    is_error = labels != truth
    return {
        "rows_scored": int(len(scored)),
        "errors": int(is_error.sum()),
        "error_rate": round(float(is_error.mean()), 4),
        "oof_accuracy_vs_true": round(float((probs.argmax(1) == truth).mean()), 4),
        "table": compare(probs, labels, is_error),
    }


def show(report: dict[str, Any], json_path: Path | None) -> None:
    methods = report["methods"]
    summary = {k: v for k, v in report.items() if k != "methods"}
    summary.update({k: v for k, v in methods.items() if k != "table"})
    print(json.dumps(summary, indent=2))
    print(
        f"{'method':52s} {'flagged':>7s} {'p@100':>6s} {'p@500':>6s} {'p@1000':>6s} "
        f"{'prec':>6s} {'recall':>6s} {'F1':>6s}"
    )
    for name, m in methods["table"].items():
        cells = [f"{m[f'p@{k}']:.3f}" if m[f"p@{k}"] is not None else "  -  " for k in TOP_K]
        print(
            f"{name:52s} {m['flagged']:7d} {cells[0]:>6s} {cells[1]:>6s} {cells[2]:>6s} "
            f"{m['precision']:6.3f} {m['recall']:6.3f} {m['f1']:6.3f}"
        )
    if json_path:
        json_path.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
