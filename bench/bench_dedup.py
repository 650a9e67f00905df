"""Benchmarks of ``fercurate dedup``: quality on planted duplicates, speed, and large-scale search.

Usage (each part prints its numbers; docs/dedup.md quotes them)::

    python bench/bench_dedup.py quality [--n 8000] [--seed 1]   # precision/recall at the defaults
    python bench/bench_dedup.py speed [--n 20000] [--runs 3]    # scan + dedup wall time, vs imagededup
    python bench/bench_dedup.py speed --dedup-args "--max-zoom 0.15"  # ... with the re-crop search
    FERCURATE_BASE=/tmp/base python bench/bench_dedup.py speed  # ... and beside a checkout of the previous release
    python bench/bench_dedup.py recrop [--n 1500]               # re-crops, watermarks, tone curves, burst frames
    python bench/bench_dedup.py search [--n 1000000]            # candidate search over 1M hashes
    python bench/bench_dedup.py search --recrop                 # ... the re-crop search's views (radius 6)
    python bench/bench_dedup.py scale [--n 100000]              # scan + dedup of a large demo: time, memory
    python bench/bench_dedup.py all

Quality has two parts. (1) The demo's own ground truth (``fercurate.demo``: copies re-encoded,
brightened, contrast-changed, resized, shifted or exact, sometimes relabelled), scored on pairs of
members of one ``dup_group``. (2) Copies planted here on the demo's clean faces, one transform at a
time, with harder settings than the demo's (JPEG quality down to 20, brightness +-30% with clipping,
gamma, blur, noise, shift plus JPEG), among thousands of same-person different photos (the demo draws
about three images per identity): per-transform recall, precision over all found pairs, and plain
pHash thresholds 6 and 10 (imagededup's default) for comparison. Real FER data is not available
offline; nothing here measures it.

Speed writes ``--n`` 48x48 JPGs (demo faces), then runs ``fercurate scan`` and ``fercurate dedup``
(which writes version 1 and its reports) as separate processes of the installed console script,
``--runs`` times on a fresh workspace, and reports the median wall time of each and of their sum
(and of a dry-run dedup again, its hashes cached); then imagededup's ``PHash().find_duplicates`` on
the same files when it can be imported (``pip install --no-deps imagededup``; only its hashing module
is loaded, with stubs for the parts that need torch).

Search hashes ``--n`` random 64-bit values with 10,000 planted pairs at distances 0..radius, runs
:func:`fercurate.dedup.search.hamming_pairs` at several radii in a child process each and reports
wall time, peak memory (the child's max RSS) and the planted pairs' recall.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

WORK = Path(os.environ.get("FERCURATE_BENCH_DIR", "/tmp/fercurate-bench-dedup"))


# -- shared ----------------------------------------------------------------------------------------
def demo_dataset(dest: Path, n: int, seed: int) -> Path:
    """A demo dataset of about ``n`` images (generated once, reused while this version's drawing code
    made it: a demo left by older code measured another dataset)."""
    from fercurate.demo import DemoParams, generate_demo

    t = time.perf_counter()
    made = generate_demo(dest, DemoParams(n_images=n, seed=seed, n_affectnet=10), overwrite=True)
    if made.action != "reused":
        print(f"generated the demo ({n} images) in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return dest


def pr(found: set[tuple[int, int]], truth: set[tuple[int, int]]) -> dict[str, float]:
    tp = len(found & truth)
    return {
        "precision": tp / len(found) if found else 1.0,
        "recall": tp / len(truth) if truth else 1.0,
        "found": len(found),
        "true": len(truth),
        "false": len(found) - tp,
        "missed": len(truth) - tp,
    }


def group_pairs(groups: np.ndarray) -> set[tuple[int, int]]:
    """Every pair of positions sharing a group label (None/NaN: ungrouped)."""
    out: set[tuple[int, int]] = set()
    frame = pd.DataFrame({"g": groups}).dropna()
    for _, members in frame.groupby("g").groups.items():
        m = sorted(int(x) for x in members)
        out.update((a, b) for k, a in enumerate(m) for b in m[k + 1 :])
    return out


def closure(pairs: list[tuple[int, int]], n: int) -> set[tuple[int, int]]:
    """All pairs within the connected components of ``pairs`` (copies of one original are duplicates)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not pairs:
        return set()
    i, j = zip(*pairs, strict=True)
    _, comp = connected_components(coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)), directed=False)
    sizes = np.bincount(comp)
    return group_pairs(np.where(sizes[comp] > 1, comp.astype(float), np.nan))


def phash_pairs(hashes: np.ndarray, radius: int) -> set[tuple[int, int]]:
    from fercurate.dedup.search import hamming_pairs

    found = hamming_pairs(hashes, radius)
    return set(zip(found.query.tolist(), found.database.tolist(), strict=True))


def related_scores(
    dup: set[tuple[int, int]],
    related: set[tuple[int, int]],
    sitting: np.ndarray,
    photo: np.ndarray,
    bursts: list[tuple[int, int]],
    n: int,
) -> dict[str, object]:
    """Related links against the truth: a link is right when both images come from one sitting
    (``sitting``: the same id), and ``same photo`` when they are copies of one photo (a duplicate the
    verifier missed, kept together all the same). Recall: burst pairs that dedup did not join as
    duplicates and that the related and duplicate links connect (a burst frame linked to a copy of
    its frame keeps it beside the frame in ``split --group-by related``)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    def components(pairs: set[tuple[int, int]]) -> np.ndarray:
        i = np.array([a for a, _ in pairs], dtype=np.int64)
        j = np.array([b for _, b in pairs], dtype=np.int64)
        return connected_components(coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)), directed=False)[1]

    right = int(sum(sitting[a] == sitting[b] for a, b in related))
    copies = int(sum(photo[a] == photo[b] for a, b in related))
    by_dup, by_both = components(dup), components(dup | related)
    rest = [(a, b) for a, b in bursts if by_dup[a] != by_dup[b]]
    linked = int(sum(by_both[a] == by_both[b] for a, b in rest))
    return {
        "links": len(related),
        "precision (same sitting)": round(right / len(related), 4) if related else 1.0,
        "of which same photo (missed duplicates)": copies,
        "false links": len(related) - right,
        "burst pairs": len(bursts),
        "joined as duplicates (false pairs)": len(bursts) - len(rest),
        "recall (of the others)": round(linked / len(rest), 4) if rest else 1.0,
    }


# -- quality ---------------------------------------------------------------------------------------
def quality_demo(n: int, seed: int) -> dict[str, object]:
    """The demo's planted duplicates, found through the real flow: scan, then dedup."""
    from fercurate.dedup import DedupParams, dedup
    from fercurate.dedup.hashers import from_hex
    from fercurate.scan import ScanParams, scan
    from fercurate.workspace import Workspace

    dest = demo_dataset(WORK / f"demo-{n}-{seed}", n, seed)
    ws_dir = WORK / f"ws-quality-{n}-{seed}"
    shutil.rmtree(ws_dir, ignore_errors=True)
    ws = Workspace(ws_dir)
    scan(ws, ScanParams(dataset=dest / "dataset"))
    t = time.perf_counter()
    result = dedup(ws, DedupParams(dry_run=False))
    seconds = time.perf_counter() - t
    _, df = ws.read()
    truth = pd.read_parquet(dest / "truth.parquet")
    # the manifest path is relative to the dataset root, as truth's is (split folder names kept)
    active = df[df["status"].isin(["active", "removed"]) & df["phash"].notna()].reset_index(drop=True)
    pos = {p: k for k, p in enumerate(active["path"])}
    planted = truth[truth["dup_of"].notna()]
    links = [(pos[p], pos[o]) for p, o in zip(planted["path"], planted["dup_of"], strict=True) if p in pos and o in pos]
    true_pairs = closure([(min(a, b), max(a, b)) for a, b in links], len(active))
    found = group_pairs(active["dup_group"].to_numpy(dtype=object))
    hashes = from_hex(active["phash"].tolist())
    by_transform = {}
    for kind, rows in planted.groupby("dup_transform"):
        want = {
            (min(pos[p], pos[o]), max(pos[p], pos[o]))
            for p, o in zip(rows["path"], rows["dup_of"], strict=True)
            if p in pos and o in pos
        }
        by_transform[str(kind)] = round(len(want & found) / max(1, len(want)), 4)
    # related links (other frames of one sitting) against the demo's burst frames: a photo is what
    # dup_of leads to, a sitting what dup_of and burst_of lead to
    dup_of = dict(zip(planted["path"], planted["dup_of"], strict=True))
    bursts_of = truth[truth["burst_of"].notna()]
    burst_of = dict(zip(bursts_of["path"], bursts_of["burst_of"], strict=True))

    def root(p: str, links: list[dict[str, str]]) -> str:
        for _ in range(10):
            nxt = next((m[p] for m in links if p in m), None)
            if nxt is None:
                break
            p = nxt
        return p

    paths = active["path"].tolist()
    sitting = np.array([root(p, [dup_of, burst_of]) for p in paths])
    photo = np.array([root(p, [dup_of]) for p in paths])
    ids = {i: k for k, i in enumerate(active["image_id"])}
    table = pd.read_parquet(result.reports["related"])
    related = {tuple(sorted((ids[a], ids[b]))) for a, b in zip(table["image_id_a"], table["image_id_b"], strict=True)}
    pairs = pd.read_parquet(result.reports["pairs"])
    dup = {tuple(sorted((ids[a], ids[b]))) for a, b in zip(pairs["image_id_a"], pairs["image_id_b"], strict=True)}
    bursts = [(pos[p], pos[o]) for p, o in burst_of.items() if p in pos and o in pos]
    return {
        "images": len(active),
        "planted copies": len(links),
        "dedup (defaults)": pr(found, true_pairs),
        "related links (burst frames)": related_scores(dup, related, sitting, photo, bursts, len(active)),
        "recall by transform": by_transform,
        "pHash <= 6": pr(phash_pairs(hashes, 6), true_pairs),
        "pHash <= 10": pr(phash_pairs(hashes, 10), true_pairs),
        "dedup seconds": round(seconds, 2),
        "groups": result.groups,
    }


def recrop_set(n: int, seed: int) -> tuple[np.ndarray, list[tuple[int, int, str]], list[tuple[int, int]]]:
    """The planted re-crop set of :func:`quality_recrop`: pixels, (a, b, kind) copies, (a, burst) pairs."""
    from fercurate.dedup.plant import crop, recrop_pair, tone_curve, watermark
    from fercurate.demo.faces import make_identity, render_face
    from fercurate.demo.faults import visible_change
    from fercurate.demo.params import EXPRESSIONS

    rng = np.random.default_rng(seed)
    images: list[np.ndarray] = []
    truth: list[tuple[int, int, str]] = []
    bursts: list[tuple[int, int]] = []
    while len(truth) < n:
        who = make_identity(rng)
        face_seed = int(rng.integers(2**32))
        first, *others = rng.permutation(len(EXPRESSIONS))
        source = render_face(np.random.default_rng(face_seed), EXPRESSIONS[first], 0.9, 64, identity=who)
        # some expression pairs draw alike on some faces (faint expressions): a burst frame must show
        # another expression, the first other one that does; a face on which all draw alike is skipped
        for second in others:
            other = render_face(np.random.default_rng(face_seed), EXPRESSIONS[second], 0.9, 64, identity=who)
            if visible_change(crop(source, 1.0, 0, 0), crop(other, 1.0, 0, 0)):
                break
        else:
            continue
        # another exposure: the frame has its own sensor noise
        other = render_face(np.random.default_rng(face_seed), EXPRESSIONS[second], 0.9, 64, identity=who, exposure=1)
        a, b, _, _ = recrop_pair(source, rng, 0.15, 4.0)
        how = "recrop"
        if rng.random() < 0.4:
            b, how = watermark(b, rng), how + "+watermark"
        if rng.random() < 0.4:
            b, how = tone_curve(b, rng), how + "+tone"
        base = len(images)
        images += [_encode_decode(a, 90), _encode_decode(b, 90), _encode_decode(crop(other, 1.0, 0, 0), 90)]
        truth.append((base, base + 1, how))
        bursts += [(base, base + 2), (base + 1, base + 2)]  # the burst frame beside either copy
    for _ in range(n):
        images.append(_encode_decode(crop(render_face(rng, str(rng.choice(EXPRESSIONS)), 0.9, 64), 1.0, 0, 0), 90))
    return np.stack(images), truth, bursts


def quality_recrop(n: int, seed: int, out: Path) -> dict[str, object]:
    """Re-cropped copies (zoom 0.85-1.15, shifts up to 4 px, watermark, tone curve) among burst frames.

    Demo faces are rendered at 64x64 so that two face boxes can be cut from one: the plain box and
    one zoomed and shifted (``fercurate.dedup.plant``), each JPEG-encoded at 48x48; 40% of the copies
    get a stock watermark, 40% another tone curve. Hard negatives: for every planted pair, the same
    face, pose, light and background with another expression (a burst frame), cut with the plain
    box (counted beside either copy); distractors: other faces. Contact sheets of misses and false pairs go to ``out``.
    """
    from fercurate.dedup import DedupParams
    from fercurate.dedup.match import blurs, find_pairs, ncc_over_shifts
    from fercurate.images import contact_sheet

    pixels, truth, bursts = recrop_set(n, seed)
    t = time.perf_counter()
    pairs, related = find_pairs(pixels, DedupParams(max_zoom=0.15))
    seconds = time.perf_counter() - t
    # each face's two copies and its burst frame are one sitting; the other faces are their own
    sitting = np.arange(len(pixels))
    photo = np.arange(len(pixels))
    for a, b, _ in truth:
        sitting[b] = sitting[b + 1] = photo[b] = a
    found = set(zip(pairs["i"].tolist(), pairs["j"].tolist(), strict=True))
    want = {(a, b) for a, b, _ in truth}
    # the band of each planted pair: its best NCC over shifts up to 2 px at scale 1, as issue 12 measures
    a_idx = np.array([a for a, _, _ in truth])
    b_idx = np.array([b for _, b, _ in truth])
    small = ncc_over_shifts(blurs(pixels[a_idx])[1], blurs(pixels[b_idx])[1], 2)[0]
    bands = np.digitize(small, [0.90, 0.92, 0.95, 0.97, 0.99])
    names = ["<0.90", "0.90-0.92", "0.92-0.95", "0.95-0.97", "0.97-0.99", ">=0.99"]
    hit = np.array([(a, b) in found for a, b, _ in truth])
    by_band = {
        names[k]: f"{hit[bands == k].mean():.3f} of {(bands == k).sum()}" for k in range(6) if (bands == k).any()
    }
    by_kind = {}
    for how in sorted({h for _, _, h in truth}):
        m = np.array([h == how for _, _, h in truth])
        by_kind[how] = f"{hit[m].mean():.3f} of {m.sum()}"
    false = sorted(found - want)
    burst_false = len(set(bursts) & found)
    missed = [(a, b) for (a, b, _), h in zip(truth, hit, strict=True) if not h]
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("planted_missed", missed), ("planted_false", false)):
        ims = [pixels[i] for pair in rows[:48] for i in pair]
        caps = [f"{i}" for pair in rows[:48] for i in pair]
        contact_sheet(
            ims, caps, columns=8, title=f"{name} ({len(rows)})", groups=[k // 2 for k in range(len(ims))]
        ).save(out / f"{name}.png")
    return {
        "images": len(pixels),
        "planted pairs": len(want),
        "dedup --max-zoom 0.15": pr(found, want),
        "recall by kind": by_kind,
        "recall by band (NCC over small shifts)": by_band,
        "burst frames found (false)": f"{burst_false} of {len(bursts)}",
        "related links": related_scores(
            found,
            set(zip(related["i"].tolist(), related["j"].tolist(), strict=True)),
            sitting,
            photo,
            bursts,
            len(pixels),
        ),
        "found kinds": pairs["kind"].value_counts().to_dict(),
        "seconds": round(seconds, 2),
    }


def _encode_decode(arr: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip, then what scan does to a file (fercurate.images.to_gray)."""
    from PIL import Image

    from fercurate.images import to_gray

    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        im.load()
        return to_gray(im, 48)


def _resized(arr: np.ndarray, mid: int, back: int | None = 48) -> np.ndarray:
    from PIL import Image

    im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).resize((mid, mid), Image.Resampling.BILINEAR)
    if back:
        im = im.resize((back, back), Image.Resampling.BICUBIC)
    return np.asarray(im, dtype=np.float64)


def _shifted(arr: np.ndarray, dy: int, dx: int) -> np.ndarray:
    padded = np.pad(arr, 2, mode="edge")
    return padded[2 - dy : 2 - dy + 48, 2 - dx : 2 - dx + 48]


def planted_transforms(rng: np.random.Generator) -> dict[str, object]:
    """name -> function(original float array) -> copy as scan would see it."""

    def shift(a: np.ndarray, q: int) -> np.ndarray:
        dy, dx = (int(v) * int(rng.choice([-1, 1])) for v in rng.integers(0, 3, size=2))
        return _encode_decode(_shifted(a, dy or 1, dx), q)

    return {
        "reencode q40-95": lambda a: _encode_decode(a, int(rng.integers(40, 96))),
        "reencode q20": lambda a: _encode_decode(a, 20),
        "brightness +-10-30%": lambda a: _encode_decode(a * (1 + rng.choice([-1, 1]) * rng.uniform(0.1, 0.3)), 90),
        "contrast x0.6-1.35": lambda a: _encode_decode((a - a.mean()) * rng.uniform(0.6, 1.35) + a.mean(), 90),
        "gamma 0.7-1.4": lambda a: _encode_decode(255 * (a / 255) ** rng.uniform(0.7, 1.4), 90),
        "resized via 32-44 px": lambda a: _encode_decode(_resized(a, int(rng.choice([32, 36, 40, 44]))), 90),
        "stored at 64x64": lambda a: _encode_decode(_resized(a, 64, None), 90),
        "shift 1-2 px": lambda a: shift(a, 90),
        "shift 1-2 px + q50": lambda a: shift(a, 50),
        "blur 1 px": lambda a: _encode_decode(_resized(_resized(a, 36), 48), 90),
        "noise sd 8": lambda a: _encode_decode(a + rng.normal(0, 8, a.shape), 90),
        "exact": lambda a: None,
        "mirror": lambda a: _encode_decode(a[:, ::-1], 90),
    }


def quality_planted(n: int, seed: int, per_transform: int) -> dict[str, object]:
    """Copies planted on the demo's clean faces, one transform each, found by find_duplicate_pairs."""
    from fercurate.dedup import DedupParams, find_duplicate_pairs
    from fercurate.dedup.hashers import PHash
    from fercurate.images import load_gray_files

    dest = demo_dataset(WORK / f"demo-{n}-{seed}", n, seed)
    truth = pd.read_parquet(dest / "truth.parquet")
    clean = truth[truth["dup_of"].isna() & truth["invalid_reason"].isna()]
    originals = load_gray_files([str(dest / "dataset" / p) for p in clean["path"]], 48)
    rng = np.random.default_rng(seed)
    transforms = planted_transforms(rng)
    copies, pairs, kinds = [], [], []
    sources = rng.choice(len(originals), size=(len(transforms), per_transform), replace=False)
    for (name, fn), src in zip(transforms.items(), sources, strict=True):
        for s in src:
            out = fn(originals[s].astype(np.float64))
            copies.append(originals[s] if out is None else out)
            pairs.append((int(s), len(originals) + len(copies) - 1))
            kinds.append(name)
    pixels = np.concatenate([originals, np.stack(copies).astype(np.uint8)])
    hashes = PHash().hash(pixels)
    results: dict[str, object] = {"originals": len(originals), "copies": len(copies)}
    for mirror in (False, True):
        t = time.perf_counter()
        found_pairs = find_duplicate_pairs(pixels, DedupParams(mirror=mirror), hashes)
        seconds = time.perf_counter() - t
        groups_found = closure(list(zip(found_pairs["i"], found_pairs["j"], strict=True)), len(pixels))
        wanted = [(p, k) for p, k in zip(pairs, kinds, strict=True) if mirror or k != "mirror"]
        true_pairs = closure([p for p, _ in wanted], len(pixels))
        per = {}
        for name in transforms:
            want = {p for p, k in wanted if k == name}
            if want:
                per[name] = {
                    "dedup": round(len(want & groups_found) / len(want), 4),
                    "pHash<=6": round(len(want & phash_pairs(hashes, 6)) / len(want), 4),
                    "pHash<=10": round(len(want & phash_pairs(hashes, 10)) / len(want), 4),
                }
        results["--mirror" if mirror else "defaults"] = {
            "dedup": pr(groups_found, true_pairs),
            "pHash <= 6": pr(phash_pairs(hashes, 6), true_pairs),
            "pHash <= 10": pr(phash_pairs(hashes, 10), true_pairs),
            "recall by transform": per,
            "seconds": round(seconds, 2),
        }
    return results


# -- speed -----------------------------------------------------------------------------------------
def _wall(cmd: list[str], cpu: list[float] | None = None) -> float:
    """Wall seconds of one command; its CPU seconds (user + system, children included) go to ``cpu``."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    now = resource.getrusage(resource.RUSAGE_CHILDREN)
    if cpu is not None:
        cpu.append(now.ru_utime - used.ru_utime + now.ru_stime - used.ru_stime)
    return wall


def _console_script() -> str:
    """The installed ``fercurate`` script beside this interpreter (what a venv's PATH finds), rather
    than a version manager's shim in front of it (pyenv's costs ~0.1 s a call)."""
    beside = Path(sys.executable).with_name("fercurate")
    return str(beside) if beside.exists() else "fercurate"


def speed(n: int, runs: int, seed: int, dedup_args: list[str] | None = None) -> dict[str, object]:
    dest = demo_dataset(WORK / f"demo-{n}-{seed}", int(n * 0.945), seed)  # duplicates and bad files on top
    dataset = dest / "dataset"
    files = sum(1 for p in dataset.rglob("*") if p.is_file())
    scans, dedups, again = [], [], []
    cpu_scan: list[float] = []
    cpu_dedup: list[float] = []
    fercurate = _console_script()
    base = os.environ.get("FERCURATE_BASE")  # a checkout of the previous release, run beside this one
    launch = f"import sys; sys.path.insert(0, {base!r}); from fercurate.cli import main; main()"
    base_cmd = [sys.executable, "-c", launch]
    base_scans: list[float] = []
    base_dedups: list[float] = []
    base_cpu: list[float] = []
    for r in range(runs):
        ws = WORK / f"ws-speed-{r}"
        shutil.rmtree(ws, ignore_errors=True)
        scans.append(_wall([fercurate, "scan", str(dataset), "-w", str(ws)], cpu_scan))
        extra = dedup_args or []
        dedups.append(_wall([fercurate, "dedup", "-w", str(ws), *extra], cpu_dedup))  # writes v0001 and its reports
        again.append(_wall([fercurate, "dedup", "-w", str(ws), "--version", "v0000", "--dry-run", *extra]))
        if base:
            shutil.rmtree(ws, ignore_errors=True)
            base_scans.append(_wall([*base_cmd, "scan", str(dataset), "-w", str(ws)], base_cpu))
            base_dedups.append(_wall([*base_cmd, "dedup", "-w", str(ws)], base_cpu))
    out: dict[str, object] = {
        "files": files,
        "cpus": len(os.sched_getaffinity(0)),
        "dedup options": " ".join(dedup_args or []) or "(defaults)",
        "load average before": os.getloadavg()[0],
        "scan s (median)": round(statistics.median(scans), 2),
        "dedup s (median)": round(statistics.median(dedups), 2),
        "scan + dedup s (median)": round(statistics.median(s + d for s, d in zip(scans, dedups, strict=True)), 2),
        "dedup again, hashes cached, s (median)": round(statistics.median(again), 2),
        # CPU time suffers less than wall time from other work on a shared machine
        "scan CPU s (median)": round(statistics.median(cpu_scan), 2),
        "dedup CPU s (median)": round(statistics.median(cpu_dedup), 2),
        "runs": {"scan": [round(x, 2) for x in scans], "dedup": [round(x, 2) for x in dedups]},
    }
    if base:
        both = [s + d for s, d in zip(base_scans, base_dedups, strict=True)]
        out["previous release: scan + dedup s (median)"] = round(statistics.median(both), 2)
        out["previous release: scan + dedup CPU s (median)"] = round(
            statistics.median(a + b for a, b in zip(base_cpu[::2], base_cpu[1::2], strict=True)), 2
        )
        out["ratio to the previous release (wall)"] = round(out["scan + dedup s (median)"] / statistics.median(both), 2)  # type: ignore[operator]
    code = (
        "import sys, types, os, time\n"
        "import imagededup\n"
        "root = os.path.dirname(imagededup.__file__)\n"
        "for sub in ('methods', 'utils'):  # their __init__ imports torch; load only the hashing parts\n"
        "    m = types.ModuleType('imagededup.' + sub); m.__path__ = [os.path.join(root, sub)]\n"
        "    sys.modules['imagededup.' + sub] = m\n"
        "from imagededup.methods.hashing import PHash\n"
        "t = time.perf_counter()\n"
        f"d = PHash(verbose=False).find_duplicates(image_dir={str(dataset)!r}, max_distance_threshold=10,"
        " recursive=True)\n"
        "print(time.perf_counter() - t, sum(len(v) for v in d.values()) // 2)\n"
    )
    walls = []
    for _ in range(runs):
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if proc.returncode != 0:
            out["imagededup"] = f"not run: {proc.stderr.strip().splitlines()[-1] if proc.stderr else proc.returncode}"
            break
        walls.append(time.perf_counter() - t)
    if walls:
        out["imagededup PHash.find_duplicates s (median, incl. start-up)"] = round(statistics.median(walls), 2)
        out["speed-up vs imagededup"] = round(statistics.median(walls) / out["scan + dedup s (median)"], 1)  # type: ignore[operator]
    out["load average after"] = os.getloadavg()[0]
    return out


# -- scale -----------------------------------------------------------------------------------------
def _wall_and_peak(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak memory (MB, max RSS) of one command, run from a fresh child."""
    probe = (
        "import resource, subprocess, sys\n"
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", probe, *cmd], check=True, capture_output=True, text=True)
    return time.perf_counter() - t, int(proc.stdout.strip()) / 1024


def scale(n: int, seed: int) -> dict[str, object]:
    """``fercurate scan`` and ``fercurate dedup`` (which writes a version) on a demo of about ``n`` images."""
    dataset = demo_dataset(WORK / f"demo-{n}-{seed}", int(n * 0.945), seed) / "dataset"
    ws = WORK / "ws-scale"
    shutil.rmtree(ws, ignore_errors=True)
    fercurate = _console_script()
    scan_s, scan_mb = _wall_and_peak([fercurate, "scan", str(dataset), "-w", str(ws)])
    dedup_s, dedup_mb = _wall_and_peak([fercurate, "dedup", "-w", str(ws)])
    record = json.loads((ws / "versions" / "v0001.json").read_text())
    return {
        "files": sum(1 for p in dataset.rglob("*") if p.is_file()),
        "load average before": os.getloadavg()[0],
        "scan s": round(scan_s, 2),
        "scan peak MB": round(scan_mb),
        "dedup s": round(dedup_s, 2),
        "dedup peak MB": round(dedup_mb),
        "dedup result": record.get("extra", {}),
    }


# -- search ----------------------------------------------------------------------------------------
#: Pairs each search bench plants among its random hashes.
PLANTED = 10_000


def _planted_pairs(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """:data:`PLANTED` (source, copy) pairs of distinct positions in ``range(n)``, no position twice."""
    src = rng.choice(n, PLANTED, replace=False)
    return src, rng.permutation(np.setdiff1d(np.arange(n), src))[:PLANTED]


def _near(value: np.uint64, radius: int, rng: np.random.Generator) -> np.uint64:
    """``value`` with up to ``radius`` of its 64 bits flipped."""
    flips = rng.choice(64, int(rng.integers(0, radius + 1)), replace=False)
    return value ^ np.uint64(sum(1 << int(f) for f in flips))


def _peak_mb() -> int:
    """This process's peak resident memory so far."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _search_child(n: int, radius: int, seed: int) -> None:
    """Run in a child: time one search and report its peak memory as JSON on stdout."""
    from fercurate.dedup.search import hamming_pairs, plan_mih

    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    src, dst = _planted_pairs(n, rng)
    for a, b in zip(src, dst, strict=True):
        hashes[b] = _near(hashes[a], radius, rng)
    t = time.perf_counter()
    found = hamming_pairs(hashes, radius)
    seconds = time.perf_counter() - t
    got = set(zip(found.query.tolist(), found.database.tolist(), strict=True))
    recall = np.mean([(min(a, b), max(a, b)) in got for a, b in zip(src, dst, strict=True)])
    plan = plan_mih(hashes, hashes, radius, self_join=True)
    print(
        json.dumps(
            {
                "radius": radius,
                "seconds": round(seconds, 2),
                "peak MB": _peak_mb(),
                "pairs": len(found),
                "planted recall": float(recall),
                "plan": f"{plan.widths} sub-radii {plan.radii}" if plan else "brute force",
            }
        )
    )


def _recrop_search_child(n: int, radius: int, seed: int) -> None:
    """Run in a child: the re-crop search's Hamming step (``recrop_candidates``) over ``n`` images of
    random hashes, each with its views at ``--max-zoom 0.15`` as queries and its centre windows as
    the database; :data:`PLANTED` pairs (a view of one image within ``radius`` of a centre of
    another). Reports time and peak memory as JSON on stdout."""
    from fercurate.dedup.match import recrop_centres, recrop_views
    from fercurate.dedup.search import hamming_pairs

    rng = np.random.default_rng(seed)
    n_views = sum(len(offs) for _, offs in recrop_views(48, 0.15))
    n_centres = len(recrop_centres(48))
    views = rng.integers(0, 2**64 - 1, (n, n_views), dtype=np.uint64, endpoint=True)
    centres = rng.integers(0, 2**64 - 1, (n, n_centres), dtype=np.uint64, endpoint=True)
    a, b = _planted_pairs(n, rng)
    which_view = rng.integers(0, n_views, PLANTED)
    which_centre = rng.integers(0, n_centres, PLANTED)
    for i in range(PLANTED):
        views[b[i], which_view[i]] = _near(centres[a[i], which_centre[i]], radius, rng)
    t = time.perf_counter()
    found = hamming_pairs(views.ravel(), radius, centres.ravel(), keep=lambda q, d: q // n_views != d // n_centres)
    seconds = time.perf_counter() - t
    got = set(zip((found.query // n_views).tolist(), (found.database // n_centres).tolist(), strict=True))
    recall = np.mean([(int(y), int(x)) in got for x, y in zip(a, b, strict=True)])
    print(
        json.dumps(
            {
                "radius": radius,
                "images": n,
                "queries (views)": n * n_views,
                "database (centres)": n * n_centres,
                "seconds": round(seconds, 2),
                "peak MB": _peak_mb(),
                "pairs": len(found),
                "planted recall": float(recall),
            }
        )
    )


def search(n: int, radii: list[int], seed: int, recrop: bool = False) -> list[dict[str, object]]:
    out = []
    child = "_recrop_search_child" if recrop else "_search_child"
    for r in radii:
        proc = subprocess.run(
            [sys.executable, __file__, child, "--n", str(n), "--radius", str(r), "--seed", str(seed)],
            capture_output=True,
            text=True,
            check=True,
        )
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(out[-1], file=sys.stderr)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "part",
        choices=["quality", "recrop", "speed", "search", "scale", "all", "_search_child", "_recrop_search_child"],
    )
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--per-transform", type=int, default=300)
    parser.add_argument(
        "--radius", type=int, nargs="*", default=None, help="search: radii (default 4 8 10 12; with --recrop, 6)"
    )
    parser.add_argument(
        "--recrop", action="store_true", help="search: the re-crop search's views against centres (radius 6)"
    )
    parser.add_argument(
        "--dedup-args", default="", help="speed: options for this version's dedup, e.g. '--max-zoom 0.15'"
    )
    args = parser.parse_args()
    if args.radius is None:
        args.radius = [6] if args.recrop else [4, 8, 10, 12]
    if args.part in ("search", "_search_child", "_recrop_search_child") and args.n is not None and args.n < 2 * PLANTED:
        parser.error(f"--n {args.n}: search plants {PLANTED:,} pairs between distinct hashes; pass --n 20000 or more")
    WORK.mkdir(parents=True, exist_ok=True)
    if args.part == "_search_child":
        _search_child(args.n, args.radius[0], args.seed)
        return
    if args.part == "_recrop_search_child":
        _recrop_search_child(args.n, args.radius[0], args.seed)
        return
    report: dict[str, object] = {}
    if args.part in ("quality", "all"):
        n = args.n or 8000
        report["quality: demo ground truth"] = quality_demo(n, args.seed)
        report["quality: planted transforms"] = quality_planted(n, args.seed, args.per_transform)
    if args.part in ("recrop", "all"):
        report["quality: re-crops and burst frames"] = quality_recrop(args.n or 1500, args.seed, Path("/tmp/recrop"))
    if args.part in ("speed", "all"):
        n_speed = args.n if args.part == "speed" and args.n else 20000
        report["speed"] = speed(n_speed, args.runs, args.seed + 1, shlex.split(args.dedup_args))
    if args.part in ("scale", "all"):
        report["scale"] = scale(args.n if args.part == "scale" and args.n else 100_000, args.seed + 2)
    if args.part in ("search", "all"):
        n_search = args.n if args.part == "search" and args.n else 1_000_000
        report["search"] = search(n_search, args.radius, args.seed, recrop=args.recrop)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
