"""Cross-fitting variants of ``relabel-review flag`` on a scanned (and deduplicated) real set, scored
against FER+: what each change to the training plan buys, one variant per run.

Each variant trains the same folds (``assign_folds`` of the version's active rows, ``--seed``, 0 by
default) with ``flag``'s own ``cross_fit`` (its fold cache in a temporary folder), so the only
differences are the options given here; nothing is written to the workspace. Scoring is
``bench/bench_relabel.py``'s (out-of-fold accuracy, precision at 100 / 500 / 1000 of the
normalised-margin ranking, F1 of the set ``flag``'s default filter flags; all rows and the FER2013
``Training`` rows), for the out-of-fold probabilities ranked alone and for
``flag``'s ranking, which blends in the fold models' fit of each row (``--fit-weight``).

    python bench/relabel_ablation.py WS --version v0001 --truth /tmp/real/sets/truth \\
        --folds 3 --epochs 11 --val-fraction 0.1 --set label_smoothing=0.1 --set tta_shift=0   # the previous plan
    python bench/relabel_ablation.py WS --version v0001 --truth /tmp/real/sets/truth   # the plan now

``--set`` overrides a TrainConfig field on top of the ``cpu`` preset and its cross-fitting plan's
overrides; ``--epochs`` and ``--folds`` default to what ``flag`` would choose. ``--seed`` draws other
folds and model seeds (the run-to-run noise of a plan); ``--save-probs`` keeps a run's out-of-fold
probabilities and the fold models' fit, and ``--from-probs`` scores saved runs again without
training, averaging them when several are given (what repeated cross-fitting, one run per seed,
would flag):

    python bench/relabel_ablation.py WS --truth T --seed 1 --threads 1 --save-probs s1.npz
    python bench/relabel_ablation.py --truth T --from-probs s0.npz s1.npz
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

try:
    import fercurate  # noqa: F401
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_relabel import PrintProgress, metrics, vote_truth  # noqa: E402

from fercurate.errors import FercurateError  # noqa: E402
from fercurate.manifest import Col  # noqa: E402
from fercurate.relabel.scoring import blend_fit, score_labels  # noqa: E402
from fercurate.train import make_config  # noqa: E402
from fercurate.workspace import Workspace, load_pixels  # noqa: E402

F = importlib.import_module("fercurate.relabel.flag")  # the package re-exports flag(), shadowing the module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workspace", type=Path, nargs="?", help="the workspace (not with --from-probs)")
    ap.add_argument("--version", default=None, help="the version to cross-fit (default: latest)")
    ap.add_argument("--truth", type=Path, required=True, help="bench/real truth folder")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--folds", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--val-fraction", type=float, default=0.0)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=JSON", help="a TrainConfig override")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0, help="fold assignment and fold i's model seed (seed + i)")
    ap.add_argument("--save-probs", type=Path, default=None, help="write the out-of-fold probabilities (.npz)")
    ap.add_argument("--from-probs", type=Path, nargs="+", default=None, help="score saved runs (averaged); no training")
    ap.add_argument(
        "--fit-weight", type=float, default=F.FlagParams.fit_weight, help="the blend's weight of the fold models' fit"
    )
    args = ap.parse_args()
    for name in ("ferplus_votes.csv", "fer4_index.csv"):
        if not (args.truth / name).is_file():
            sys.exit(f"{args.truth / name} is missing; pass the truth folder bench/real/prepare.py wrote")
    if args.from_probs:
        paths, labels, probs, fit, classes = averaged(args.from_probs)
        print(f"{len(args.from_probs)} run(s) averaged: out-of-fold accuracy {(probs.argmax(1) == labels).mean():.4f}")
        score(paths, labels, probs, fit, classes, args.truth, args.fit_weight)
        return
    if args.workspace is None:
        sys.exit("pass the workspace to cross-fit, or --from-probs with saved runs")

    ws = Workspace(args.workspace)
    try:
        info, df = ws.read(args.version)
    except FercurateError as exc:  # a missing workspace or an unknown version: its one line, exit 1
        sys.exit(str(exc))
    rows = F.active_rows(df)
    classes = sorted(rows[Col.LABEL].unique().tolist())
    labels = np.array([classes.index(c) for c in rows[Col.LABEL]], dtype=np.int64)
    groups = F.fold_groups(rows)
    plan = F.CROSS_FIT.get(args.preset)
    overrides = dict(plan.overrides if plan else {})
    for item in args.set:
        field, _, value = item.partition("=")
        overrides[field] = json.loads(value)
    config = make_config(args.preset, **overrides, seed=args.seed, num_threads=args.threads)
    folds_n = args.folds or F.cross_fit_folds(plan, len(rows), args.val_fraction)
    fit_n = F.fit_rows(len(rows), folds_n, args.val_fraction)
    config = F.cross_fit_config(plan, config, fit_n, folds_n, args.epochs)
    epochs = config.epochs

    x = load_pixels(ws, info, rows, size=config.image_size)
    folds = F.assign_folds(labels, groups, folds_n, args.seed)
    started, cpu = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as cache:  # flag's own cross-fitting, its fold cache thrown away
        probs, fit, _, _ = F.cross_fit(
            x,
            labels,
            groups,
            folds,
            classes,
            config,
            Path(cache),
            F.FlagParams(val_fraction=args.val_fraction, seed=args.seed),
            PrintProgress(),
        )
    print(
        f"{folds_n} folds x {epochs} epochs, val_fraction {args.val_fraction}, overrides {overrides}: "
        f"{time.perf_counter() - started:.0f} s wall, {time.process_time() - cpu:.0f} s CPU; "
        f"out-of-fold accuracy {(probs.argmax(1) == labels).mean():.4f}"
    )
    paths = rows[Col.PATH].to_numpy().astype(str)
    if args.save_probs:  # written whole or not at all
        tmp = args.save_probs.with_name(args.save_probs.name + ".tmp")
        with tmp.open("wb") as out:
            np.savez(out, probs=probs, fit=fit, labels=labels, folds=folds, paths=paths, classes=np.array(classes))
        tmp.replace(args.save_probs)
    score(paths, labels, probs, fit, classes, args.truth, args.fit_weight)


def averaged(runs: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, list[str]]:
    """Paths, labels, mean probabilities, mean fit (None if a run has none) and classes of runs saved
    with ``--save-probs`` (one set of rows)."""
    missing = [str(path) for path in runs if not path.is_file()]
    if missing:
        sys.exit(f"{', '.join(missing)}: not a file; pass .npz files written by --save-probs")
    saved = [np.load(path, allow_pickle=False) for path in runs]
    first = saved[0]
    for path, other in zip(runs[1:], saved[1:], strict=True):
        if not (np.array_equal(other["paths"], first["paths"]) and np.array_equal(other["labels"], first["labels"])):
            sys.exit(f"{path} holds other rows than {runs[0]}; average runs of one version only")
    probs = np.mean([z["probs"] for z in saved], axis=0)
    fit = np.mean([z["fit"] for z in saved], axis=0) if all("fit" in z for z in saved) else None
    return first["paths"], first["labels"], probs, fit, [str(c) for c in first["classes"]]


def score(
    paths: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    fit: np.ndarray | None,
    classes: list[str],
    truth_dir: Path,
    fit_weight: float,
) -> None:
    """Print bench_relabel's figures for the default filter and ranking, on all rows and the Training
    rows; with the fold models' fit, also those of flag's ranking (the blend, ``scoring.blend_fit``)."""
    truth = vote_truth(truth_dir / "ferplus_votes.csv", truth_dir / "fer4_index.csv")
    usage = pd.read_csv(truth_dir / "fer4_index.csv")[["path", "usage"]]
    index = pd.DataFrame({"path": paths, "row": np.arange(len(paths))}).merge(truth, on="path").merge(usage, on="path")
    is_error = np.array([classes[g] for g in labels[index["row"]]]) != index["true_label"].to_numpy()
    for name, part in (
        ("all rows", np.ones(len(index), bool)),
        ("Training rows", (index["usage"] == "Training").to_numpy()),
    ):
        rows = index["row"].to_numpy()[part]
        rankings = {"out-of-fold": None}
        if fit is not None:
            rankings[f"blend {fit_weight}"] = blend_fit(probs[rows], fit[rows], fit_weight)
        for ranking, rank_probs in rankings.items():
            s = score_labels(
                probs[rows],
                labels[rows],
                method=F.FlagParams.method,
                filter_by=F.FlagParams.filter_by,
                rank_probs=rank_probs,
            )
            m = metrics(s.ranked(), s.flagged, is_error[part])
            print(
                f"{name}, {ranking} ranking: p@100 {m['p@100']} p@500 {m['p@500']} p@1000 {m['p@1000']} "
                f"precision {m['precision']} recall {m['recall']} F1 {m['f1']}"
            )


if __name__ == "__main__":
    main()
