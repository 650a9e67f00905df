"""Build the real FER sets that the bench/real runner and docs/real-data.md measure on.

Usage::

    python bench/real/prepare.py --fer2013 /tmp/real/fer2013 --ferplus /tmp/real/ferplus --out /tmp/real/sets
    python bench/real/prepare.py ... --only fer4          # just the 4-class set (a minute)

Inputs are the folders ``bench/real/fetch.sh`` extracts from the public snapshots (see
docs/real-data.md): ``--fer2013`` is the Kaggle layout (``train/`` and ``test/``, seven emotion folders of
48x48 JPEGs), ``--ferplus`` the FER+ release (``fer2013new.csv`` and ``data/FER2013{Train,Valid,Test}/``).
Nothing here downloads anything, and nothing built here may be committed.

What it writes under ``--out`` (every part deterministic for a given ``--seed``, written to a temporary
name and renamed into place):

- ``fer4/{train,validation,test}/{happy,neutral,sad,surprise}/*.jpg``: the 4-class course derivative
  ("Facial_emotion_images") in its lopsided layout, files copied byte for byte from the Kaggle folders
  under their own names; then the marker file ``READY-fer4``. Surprise uses all 4,002 FER2013 surprise
  images; the other classes are drawn with a fixed seed from all FER2013 rows (Kaggle train and test
  folders), and each image's split is drawn at random (not from FER2013's Usage), so copies of one photo
  land in different splits as they do in the real course set. Given labels are FER2013's.
- ``truth/fer4_index.csv``: one row per fer4 image: ``path`` (in fer4), ``source`` (relative to the
  fer2013 root), ``label``, ``split``, ``usage`` (Training / PublicTest / PrivateTest, from the name).
- ``fer7``: a symlink to the Kaggle folder itself (``fercurate scan`` reads its ``train/`` and ``test/``).
- ``truth/ferplus_votes.csv``: the FER+ votes of each Kaggle JPEG, matched by pixels (see
  :func:`match_ferplus`), with the match distance and the second-best distance.
- ``fer2013/fer2013.csv`` (emotion, pixels, Usage as the original Kaggle CSV, one row per matched
  named row of ``fer2013new.csv``, in its order; rows FER+ dropped are missing) and a copy of
  ``fer2013new.csv`` beside it; ``truth/fer2013_rows.csv`` says which ``fer2013new.csv`` row (0-based,
  header not counted) and which Kaggle JPEG each CSV row is; ``truth/fer2013new_aligned.csv`` is
  fer2013new.csv cut to those rows (votes by CSV row position).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FER7_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # fer2013.csv codes 0..6
FER4_CLASSES = ("happy", "neutral", "sad", "surprise")
FER4_SPLITS = ("train", "validation", "test")
# Per-split class counts of the real course set (train 15,109 / validation 4,977 / test 128).
FER4_COUNTS: dict[str, dict[str, int]] = {
    "train": {"happy": 3976, "neutral": 3978, "sad": 3982, "surprise": 3173},
    "validation": {"happy": 1825, "neutral": 1216, "sad": 1139, "surprise": 797},
    "test": {"happy": 32, "neutral": 32, "sad": 32, "surprise": 32},
}
FERPLUS_FOLDERS = {"Training": "FER2013Train", "PublicTest": "FER2013Valid", "PrivateTest": "FER2013Test"}
VOTE_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF")


class PrepareError(Exception):
    """A bad path or input: printed as one line, exit 1."""


def usage_of(name: str) -> str:
    """FER2013 Usage from a Kaggle file name (``Training_123.jpg`` -> ``Training``)."""
    prefix = name.split("_", 1)[0]
    if prefix not in FERPLUS_FOLDERS:
        raise PrepareError(f"file name {name!r} does not start with Training_, PublicTest_ or PrivateTest_")
    return prefix


def kaggle_files(fer2013: Path) -> list[tuple[str, str]]:
    """All Kaggle JPEGs as (path relative to the fer2013 root, label), sorted by path."""
    rows = []
    for split in ("train", "test"):
        for label in FER7_CLASSES:
            folder = fer2013 / split / label
            if not folder.is_dir():
                raise PrepareError(
                    f"{folder} is missing; pass --fer2013 the Kaggle folder that holds train/ and test/ "
                    "(bench/real/fetch.sh extracts it)"
                )
            rows += [(f"{split}/{label}/{p.name}", label) for p in folder.iterdir() if p.suffix == ".jpg"]
    return sorted(rows)


def replace_dir(tmp: Path, dest: Path) -> None:
    """Move a finished temporary folder onto ``dest``, replacing any earlier build."""
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    elif dest.exists():
        old = dest.with_name(f".{dest.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
        shutil.rmtree(old)
    os.replace(tmp, dest)


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    """Write a CSV atomically (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.chmod(tmp, 0o644)  # mkstemp makes it private; the tables are shared read-only
    with os.fdopen(fd, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, path)


def fer4_plan(files: list[tuple[str, str]], seed: int) -> list[tuple[str, str, str]]:
    """Choose the fer4 images and their splits: (source, label, split), sorted by source.

    For each class, draw the class's total from its pool without replacement, shuffle, then cut the
    shuffled list into the course set's train / validation / test counts.
    """
    rng = np.random.default_rng(seed)
    plan = []
    for label in FER4_CLASSES:
        pool = sorted(src for src, lab in files if lab == label)
        counts = [FER4_COUNTS[split][label] for split in FER4_SPLITS]
        if sum(counts) > len(pool):
            raise PrepareError(f"class {label} has {len(pool)} images in --fer2013, fer4 needs {sum(counts)}")
        chosen = [pool[i] for i in rng.permutation(len(pool))[: sum(counts)]]
        start = 0
        for split, n in zip(FER4_SPLITS, counts, strict=True):
            plan += [(src, label, split) for src in chosen[start : start + n]]
            start += n
    return sorted(plan)


def build_fer4(fer2013: Path, out: Path, seed: int) -> dict:
    """Copy the fer4 images into ``out/fer4``, write its index, then the READY-fer4 marker."""
    marker = out / "READY-fer4"
    marker.unlink(missing_ok=True)
    plan = fer4_plan(kaggle_files(fer2013), seed)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".fer4."))
    tmp.chmod(0o755)  # mkdtemp makes it private; the set is shared read-only with other users
    index = []
    for src, label, split in plan:
        rel = f"{split}/{label}/{Path(src).name}"
        (tmp / split / label).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fer2013 / src, tmp / rel)
        index.append([rel, src, label, split, usage_of(Path(src).name)])
    replace_dir(tmp, out / "fer4")
    write_csv(out / "truth" / "fer4_index.csv", ["path", "source", "label", "split", "usage"], index)
    marker.write_text(f"fer4 complete: {len(index)} images, seed {seed}\n")
    counts = {s: sum(1 for r in index if r[3] == s) for s in FER4_SPLITS}
    return {"images": len(index), "per_split": counts}


def link_fer7(fer2013: Path, out: Path) -> None:
    """``out/fer7`` -> the Kaggle folder (no copy: scan reads its train/ and test/ as splits)."""
    link = out / "fer7"
    tmp = out / ".fer7.link"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(fer2013.resolve(), target_is_directory=True)
    os.replace(tmp, link)


def load_gray(paths: list[Path]) -> np.ndarray:
    """Decode 48x48 grayscale images into one (n, 48, 48) uint8 array."""
    from PIL import Image

    out = np.empty((len(paths), 48, 48), dtype=np.uint8)
    for i, path in enumerate(paths):
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L"))
        if arr.shape != (48, 48):
            raise PrepareError(f"{path} is {arr.shape[1]}x{arr.shape[0]}, not 48x48; pass the FER2013 / FER+ folders")
        out[i] = arr
    return out


def coarse(pixels: np.ndarray) -> np.ndarray:
    """8x8 block means of 48x48 images, (n, 64) float32: the cheap candidate signature."""
    n = len(pixels)
    return pixels.reshape(n, 8, 6, 8, 6).mean(axis=(2, 4), dtype=np.float32).reshape(n, 64)


def match_ferplus(
    queries: np.ndarray,
    query_keys: list[str],
    targets: np.ndarray,
    target_keys: list[str],
    max_distance: float,
    candidates: int = 8,
    chunk: int = 2048,
) -> dict[str, np.ndarray]:
    """Match each query image to one target slot by pixels, one to one, within equal keys.

    Here queries are the Kaggle JPEGs and targets the named rows of ``fer2013new.csv`` (a PNG can back
    more than one row), keyed by Usage. Targets with identical pixels form a group. Each query's
    candidates are the ``candidates`` groups nearest by a coarse 8x8 signature (brute force), scored
    by the exact mean absolute difference of the 48x48 arrays; pairs within ``max_distance`` are
    edges. Within each connected set of queries and slots, a minimum-cost one-to-one assignment
    (Hungarian) picks the matches, so near-identical rows (FER2013 holds many) are not both given
    one slot; queries left over (FER+ dropped their row) stay unmatched.

    Returns arrays over queries: ``slot`` (target index or -1), ``distance`` (to the matched row, or
    to the nearest group when unmatched), ``second`` (to the nearest candidate group with other
    pixels than the match, or the second-nearest when unmatched; inf if none), ``group_size`` (slots
    with the matched pixels), ``ambiguous`` (matched in a group of several slots, or beside another
    query with the same pixels: which row is which cannot be told by pixels).
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from sklearn.neighbors import NearestNeighbors

    n = len(queries)
    slot = np.full(n, -1, dtype=np.int64)
    distance = np.full(n, np.inf)
    second = np.full(n, np.inf)
    group_size = np.zeros(n, dtype=np.int64)
    ambiguous = np.zeros(n, dtype=bool)
    q_keys, t_keys = np.asarray(query_keys), np.asarray(target_keys)
    _, q_pixel_group = np.unique(queries.reshape(n, -1), axis=0, return_inverse=True)
    q_pixel_group = q_pixel_group.reshape(-1)
    cand_of: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # query -> (candidate groups, exact distances)
    for key in sorted(set(query_keys)):
        q_idx = np.flatnonzero(q_keys == key)
        t_idx = np.flatnonzero(t_keys == key)
        if len(t_idx) == 0:
            continue
        groups, inverse = np.unique(targets[t_idx].reshape(len(t_idx), -1), axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        slots_of = [np.flatnonzero(inverse == g) for g in range(len(groups))]  # local target indices
        k = min(candidates, len(groups))
        nn = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(coarse(groups.reshape(-1, 48, 48)))
        edge_q, edge_t, edge_d = [], [], []
        for start in range(0, len(q_idx), chunk):
            rows = q_idx[start : start + chunk]
            cand = nn.kneighbors(coarse(queries[rows]), return_distance=False)
            q = queries[rows].reshape(len(rows), -1).astype(np.int16)
            exact = np.abs(q[:, None, :] - groups[cand].astype(np.int16)).mean(axis=2)
            ranked = np.sort(exact, axis=1)
            distance[rows] = ranked[:, 0]  # replaced by the matched row's distance below
            if k > 1:
                second[rows] = ranked[:, 1]
            for i, (c_row, d_row) in enumerate(zip(cand, exact, strict=True)):
                cand_of[q_idx[start + i]] = (c_row, d_row)
                for g, d in zip(c_row, d_row, strict=True):
                    if d <= max_distance:
                        for s in slots_of[g]:
                            edge_q.append(start + i)
                            edge_t.append(s)
                            edge_d.append(d)
        if not edge_q:
            continue
        nq, nt = len(q_idx), len(t_idx)
        eq, et, ed = np.array(edge_q), np.array(edge_t), np.array(edge_d)
        graph = coo_matrix((np.ones(len(eq)), (eq, nq + et)), shape=(nq + nt, nq + nt))
        _, comp = connected_components(graph, directed=False)
        for c in np.unique(comp[eq]):
            mine = comp[eq] == c
            cq, ct = np.unique(eq[mine]), np.unique(et[mine])
            cost = np.full((len(cq), len(ct)), 1e9)
            cost[np.searchsorted(cq, eq[mine]), np.searchsorted(ct, et[mine])] = ed[mine]
            rows, cols = linear_sum_assignment(cost)
            for r, col in zip(rows, cols, strict=True):
                if cost[r, col] > max_distance:
                    continue
                qi, ti = q_idx[cq[r]], ct[col]
                slot[qi] = t_idx[ti]
                distance[qi] = cost[r, col]
                c_row, d_row = cand_of[qi]
                second[qi] = d_row[c_row != inverse[ti]].min(initial=np.inf)
                group_size[qi] = len(slots_of[inverse[ti]])
                twins = np.sum(q_pixel_group[q_idx[cq]] == q_pixel_group[qi]) > 1
                ambiguous[qi] = group_size[qi] > 1 or twins
    return {"slot": slot, "distance": distance, "second": second, "group_size": group_size, "ambiguous": ambiguous}


# Mean absolute pixel difference (0-255 scale) under which a Kaggle JPEG is the re-encoding of a FER+ PNG.
# Measured on the snapshots: matches sit at 0.3-1.6 (JPEG noise); the nearest JPEG left unmatched is at 8.6.
MATCH_DISTANCE = 4.0


def read_ferplus_rows(ferplus: Path) -> list[tuple[int, str, str, list[int]]]:
    """Named rows of fer2013new.csv as (row index, Usage, image name, 10 votes)."""
    path = ferplus / "fer2013new.csv"
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        if header[:2] != ["Usage", "Image name"] or tuple(header[2:]) != VOTE_COLUMNS:
            raise PrepareError(f"{path} header is {header}, not Usage,Image name,{','.join(VOTE_COLUMNS)}")
        return [(i, r[0], r[1], [int(v) for v in r[2:]]) for i, r in enumerate(reader) if r[1]]


def build_votes(fer2013: Path, ferplus: Path, out: Path) -> dict:
    """Match every Kaggle JPEG to its fer2013new.csv row by pixels; write truth/ferplus_votes.csv."""
    files = kaggle_files(fer2013)
    queries = load_gray([fer2013 / src for src, _ in files])
    rows = read_ferplus_rows(ferplus)
    targets = load_gray([ferplus / "data" / FERPLUS_FOLDERS[usage] / name for _, usage, name, _ in rows])
    m = match_ferplus(
        queries,
        [usage_of(Path(src).name) for src, _ in files],
        targets,
        [usage for _, usage, _, _ in rows],
        max_distance=MATCH_DISTANCE,
    )
    table = []
    for q, (src, label) in enumerate(files):
        s = int(m["slot"][q])
        if s < 0:
            continue
        row, usage, name, votes = rows[s]
        table.append(
            [src, label, usage, row, name, FERPLUS_FOLDERS[usage].removeprefix("FER2013"), *votes]
            + [f"{m['distance'][q]:.3f}", f"{m['second'][q]:.3f}", int(m["group_size"][q]), int(m["ambiguous"][q])]
        )
    header = ["source", "label", "usage", "ferplus_row", "ferplus_name", "ferplus_folder", *VOTE_COLUMNS]
    header += ["distance", "second_distance", "group_size", "ambiguous"]
    write_csv(out / "truth" / "ferplus_votes.csv", header, table)
    matched = m["slot"] >= 0
    d = m["distance"][matched]
    unmatched_rows = len(rows) - len(set(m["slot"][matched].tolist()))
    return {
        "kaggle_images": len(files),
        "ferplus_named_rows": len(rows),
        "matched": int(matched.sum()),
        "kaggle_unmatched": int((~matched).sum()),
        "ferplus_rows_unmatched": unmatched_rows,
        "ambiguous": int(m["ambiguous"].sum()),
        "distance_percentiles_0_50_99_100": [round(float(x), 3) for x in np.percentile(d, [0, 50, 99, 100])],
        "nearest_unmatched_distance": round(float(m["distance"][~matched].min()), 3) if (~matched).any() else None,
        "second_below_threshold": int((m["second"][matched] <= MATCH_DISTANCE).sum()),
    }


def build_csv(ferplus: Path, out: Path) -> dict:
    """Rebuild fer2013.csv (emotion, pixels, Usage) from the FER+ PNGs and the matched Kaggle labels.

    One row per named row of fer2013new.csv that a Kaggle JPEG matched, in its order, so the CSV's
    rows are a subset of fer2013new.csv's in the same order. A row FER+ dropped (empty name) has no
    pixels and is missing; so is a named row no JPEG matched (on the snapshots: two rows whose name
    repeats another row's PNG, of which Kaggle holds one copy). The emotion is the Kaggle label of
    the JPEG matched to the row (``truth/ferplus_votes.csv``, built by the votes part).
    """
    votes_path = out / "truth" / "ferplus_votes.csv"
    if not votes_path.exists():
        raise PrepareError(f"{votes_path} is missing; run with --only votes first (the CSV takes its labels from it)")
    with votes_path.open(newline="") as f:
        matched = {int(r["ferplus_row"]): (r["label"], r["source"]) for r in csv.DictReader(f)}
    label_of = {row: label for row, (label, _) in matched.items()}
    rows = read_ferplus_rows(ferplus)
    missing = [row for row, *_ in rows if row not in label_of]
    pixels = load_gray([ferplus / "data" / FERPLUS_FOLDERS[usage] / name for _, usage, name, _ in rows])
    table = [
        [FER7_CLASSES.index(label_of[row]), " ".join(map(str, pixels[i].reshape(-1))), usage]
        for i, (row, usage, _, _) in enumerate(rows)
        if row in label_of
    ]
    dest = out / "fer2013"
    dest.mkdir(parents=True, exist_ok=True)
    write_csv(dest / "fer2013.csv", ["emotion", "pixels", "Usage"], table)
    kept = [(row, name) for row, _, name, _ in rows if row in label_of]
    write_csv(
        out / "truth" / "fer2013_rows.csv",
        ["csv_row", "ferplus_row", "ferplus_name", "source"],
        [[i, row, name, matched[row][1]] for i, (row, name) in enumerate(kept)],
    )
    write_aligned_votes(ferplus, out, [row for row, _ in kept])
    shutil.copyfile(ferplus / "fer2013new.csv", dest / ".fer2013new.csv.tmp")
    os.replace(dest / ".fer2013new.csv.tmp", dest / "fer2013new.csv")
    return {"rows": len(table), "ferplus_rows_without_match": len(missing), "path": str(dest / "fer2013.csv")}


def write_aligned_votes(ferplus: Path, out: Path, kept_rows: list[int]) -> None:
    """``truth/fer2013new_aligned.csv``: fer2013new.csv cut to the rebuilt CSV's rows, one per CSV row.

    For scripts that pair votes with CSV rows by position (``bench/bench_relabel.py --ferplus``).
    """
    with (ferplus / "fer2013new.csv").open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        body = list(reader)
    write_csv(out / "truth" / "fer2013new_aligned.csv", header, [body[row] for row in kept_rows])


PARTS = ("fer4", "fer7", "votes", "csv")


def check_inputs(args: argparse.Namespace, parts: list[str]) -> None:
    """One-line errors for missing inputs, before anything is written."""
    if not args.fer2013.is_dir():
        raise PrepareError(f"--fer2013 {args.fer2013} is not a folder; pass the Kaggle folder with train/ and test/")
    if {"votes", "csv"} & set(parts):
        if args.ferplus is None:
            raise PrepareError("--ferplus is missing; pass the FER+ folder holding fer2013new.csv and data/")
        for need in ("fer2013new.csv", "data/FER2013Train/label.csv"):
            if not (args.ferplus / need).exists():
                raise PrepareError(f"{args.ferplus / need} is missing; pass --ferplus the FER+ folder (fetch.sh)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fer2013", type=Path, required=True, help="Kaggle FER2013 folder (train/, test/)")
    parser.add_argument("--ferplus", type=Path, help="FER+ folder (fer2013new.csv, data/)")
    parser.add_argument("--out", type=Path, required=True, help="where the sets and truth tables go")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {', '.join(PARTS)}")
    parser.add_argument("--seed", type=int, default=4, help="seed of the fer4 draw (default 4)")
    args = parser.parse_args(argv)
    parts = [p for p in args.only.split(",") if p]
    try:
        bad = [p for p in parts if p not in PARTS]
        if bad:
            raise PrepareError(f"--only {','.join(bad)} is not one of: {', '.join(PARTS)}")
        check_inputs(args, parts)
        args.out.mkdir(parents=True, exist_ok=True)
        summary: dict = {}
        for part in PARTS:
            if part not in parts:
                continue
            start = time.perf_counter()
            if part == "fer4":
                summary["fer4"] = build_fer4(args.fer2013, args.out, args.seed)
            elif part == "fer7":
                link_fer7(args.fer2013, args.out)
                summary["fer7"] = {"link": str(args.out / "fer7"), "to": str(args.fer2013.resolve())}
            elif part == "votes":
                summary["votes"] = build_votes(args.fer2013, args.ferplus, args.out)
            elif part == "csv":
                summary["csv"] = build_csv(args.ferplus, args.out)
            summary[part]["seconds"] = round(time.perf_counter() - start, 1)
            print(f"{part}: {json.dumps(summary[part])}", flush=True)
    except PrepareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
