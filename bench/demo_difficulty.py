"""How hard the demo's faces are to learn next to real ones: the same trainer, the same number of
images, the same held-out share, on a demo and on real FER2013 faces.

python bench/demo_difficulty.py demo /tmp/demo                       # a folder written by `fercurate demo`
python bench/demo_difficulty.py real /tmp/real/fer2013/train --n 3000  # Kaggle layout, <class>/*.jpg
python bench/demo_difficulty.py real /tmp/real/fer2013/train --votes /tmp/real/sets/truth/ferplus_votes.csv

Demo: trains on the clean renders (no planted copies, bursts or invalid files) with their given,
10%-noisy labels and reports held-out accuracy against given and true labels. Real: a stratified
random ``--n`` images of the four classes, 75/25, accuracy against FER2013's labels and, with
``--votes`` (``bench/real/prepare.py``'s ``ferplus_votes.csv``), against the class at least 6 of the
10 FER+ annotators chose (the nearest real thing to the demo's true labels), on the held-out images
where one did.
The trainer is ``--preset`` with the overrides `fercurate demo --run` trains with.

``--alike`` trains nothing: it measures how alike different photos look to dedup's verifier, the best
band-passed NCC over shifts of up to 2 px (``fercurate.dedup.match``) of 40,000 random pairs of the
same images, whose upper quantiles say how often another photo comes near a duplicate's similarity.

python bench/demo_difficulty.py demo /tmp/demo --alike
python bench/demo_difficulty.py real /tmp/real/fer2013/train --alike
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from fercurate.demo.run import DemoRunParams
from fercurate.train import ArraySplit, make_config, predict_proba, train

CLASSES = ("happy", "neutral", "sad", "surprise")


def _load(paths: list[Path]) -> np.ndarray:
    out = []
    for p in paths:
        with Image.open(p) as img:
            out.append(np.asarray(img.convert("L").resize((48, 48), Image.Resampling.BILINEAR), np.uint8))
    return np.stack(out)


def _annotators(votes_csv: Path, folder: Path, paths: list[Path]) -> np.ndarray:
    """The FER+ majority class of each image (None where no class reached 6 of 10 votes)."""
    sys.path.insert(0, str(Path(__file__).parent / "real"))
    from scoring import FERPLUS_TO_CLASS, annotator_class

    if not votes_csv.is_file():
        sys.exit(f"{votes_csv} is missing; pass truth/ferplus_votes.csv written by bench/real/prepare.py")
    votes = pd.read_csv(votes_csv).set_index("source")[list(FERPLUS_TO_CLASS)]
    keys = [f"{folder.name}/{p.parent.name}/{p.name}" for p in paths]
    majority = annotator_class(votes.reindex(keys).fillna(0))  # an image FER+ dropped: no majority
    return majority.to_numpy(dtype=object)


def _alike(x: np.ndarray, rng: np.random.Generator, name: str, pairs: int = 40_000) -> None:
    """Quantiles of the verifier's similarity over random pairs of different images of ``x``."""
    from fercurate.dedup.match import blurs, ncc_over_shifts

    x = x[x.std(axis=(1, 2)) > 1]  # uniform files have no similarity to speak of
    a, b = rng.integers(0, len(x), pairs), rng.integers(0, len(x), pairs)
    a, b = a[a != b], b[a != b]
    band = blurs(x)[1]
    sim = ncc_over_shifts(band[a], band[b], 2)[0]
    q = np.quantile(sim, [0.5, 0.9, 0.99, 0.999])
    print(f"{name}: {len(a)} random pairs of {len(x)} images; similarity (band-passed NCC, shifts <= 2 px)")
    print("  median {:.3f}, 90% {:.3f}, 99% {:.3f}, 99.9% {:.3f}; share >= 0.8: {:.5f}".format(*q, (sim >= 0.8).mean()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["demo", "real"])
    parser.add_argument("path", type=Path)
    parser.add_argument("--n", type=int, default=3000, help="real: images drawn (demo: all clean renders)")
    parser.add_argument("--preset", default=DemoRunParams.preset)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--votes", type=Path, help="real: FER+ votes per image (truth/ferplus_votes.csv)")
    parser.add_argument("--alike", action="store_true", help="how alike random pairs look to dedup; no training")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    if args.kind == "demo":
        truth_path = args.path / "truth.parquet"
        if not truth_path.is_file():
            sys.exit(f"{truth_path} is missing; pass a folder written by `fercurate demo`")
        t = pd.read_parquet(truth_path)
        t = t[t.dup_of.isna() & t.burst_of.isna() & t.invalid_reason.isna()]
        paths = [args.path / "dataset" / p for p in t.path]
        given, true = t.given_label.to_numpy(), t.true_label.to_numpy()
    else:
        rows = [(p, c) for c in CLASSES for p in sorted((args.path / c).glob("*"))]
        if not rows:
            sys.exit(f"no images under {args.path}/<{'|'.join(CLASSES)}>/; pass the FER2013 train folder")
        pick = rng.choice(len(rows), size=min(args.n, len(rows)), replace=False)
        paths = [rows[i][0] for i in pick]
        given = true = np.array([rows[i][1] for i in pick])
        if args.votes:
            true = _annotators(args.votes, args.path, paths)
    x = _load(paths)
    if args.alike:
        _alike(x, rng, f"{args.kind} {args.path}")
        return
    y = np.array([CLASSES.index(c) for c in given])
    # -1: no class of the four reached the annotators' majority (left out of the "true" accuracy)
    y_true = np.array([CLASSES.index(c) if c in CLASSES else -1 for c in true])
    order = rng.permutation(len(y))
    cut = int(0.75 * len(y))
    tr, te = order[:cut], order[cut:]
    config = make_config(args.preset, **dict(DemoRunParams.train_overrides), seed=args.seed)
    start, cpu = time.perf_counter(), time.process_time()
    result = train(config, ArraySplit(x[tr], y[tr]), ArraySplit(x[te], y[te]), list(CLASSES))
    pred = predict_proba(result.model, x[te]).argmax(1)
    print(
        f"{args.kind} {args.path}: {len(tr)} train / {len(te)} held out, preset {args.preset} "
        f"{dict(DemoRunParams.train_overrides)}; {time.perf_counter() - start:.0f} s wall, "
        f"{time.process_time() - cpu:.0f} s CPU"
    )
    print(f"held-out accuracy vs given labels: {(pred == y[te]).mean():.3f}")
    per_class = {c: float((pred[y[te] == k] == k).mean()) for k, c in enumerate(CLASSES) if (y[te] == k).any()}
    print("  per given class (recall): " + ", ".join(f"{c} {v:.3f}" for c, v in per_class.items()))
    if args.kind == "demo" or args.votes:
        known = y_true[te] >= 0
        what = "true labels" if args.kind == "demo" else "FER+ majority (6 of 10)"
        print(
            f"held-out accuracy vs {what}: {(pred[known] == y_true[te][known]).mean():.3f} "
            f"({known.sum()} images); given label differs from it on {(y[te] != y_true[te])[known].mean():.1%}"
        )
    train_acc = (predict_proba(result.model, x[tr]).argmax(1) == y[tr]).mean()
    print(f"training accuracy: {train_acc:.3f}; best epoch {result.best_epoch}/{result.epochs_run}")


if __name__ == "__main__":
    main()
