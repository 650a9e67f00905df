"""The reference for dedup on real FER data: every same-photo pair, found slowly and thoroughly.

Usage::

    python bench/real/dedup_truth.py candidates|verify|truth   # the reference, step by step
    python bench/real/dedup_truth.py score [--mirror] [--max-zoom 0] [--max-residual 0.3] [--rows all4]
    # (writes $RECROP_DIR/missed-ROWS.csv/.png and false-ROWS.parquet/.png: contact sheets of a, a
    # aligned onto b, b and their difference)

Writes ``/tmp/real/sets/truth/same_photo_pairs.csv`` (``a``, ``b``: paths relative to the fer2013
root, ``kind``: exact | near | mirror | recrop, ``ncc``: best normalised cross-correlation over
scale and shift of the band-passed images, ``scale``, ``shift`` ("dy,dx" in pixels), ``band``: the
pair's band by best NCC over small shifts at scale 1, as in issue 12, ``how``: which candidate
signal proposed the pair) and, beside it, every verified candidate with all its measures
(``/tmp/recrop/truth_candidates.parquet``) for the contact sheets and the bench.

How the reference is built (independent of ``fercurate dedup``'s hashes; ``--rows train4``: the
FER2013 Training rows of the four classes, ``all4``: their test rows too):

1. **Candidates, generously.** Each image is lightly blurred and sampled on a 16x16 grid over its
   central 36x36 pixels; the query side is sampled again zoomed by 0.85..1.15 (7 zooms) and moved by
   0 or +-3 pixels on each axis (5 moves), also flipped (3 zooms); every zero-mean unit-norm query
   vector is correlated with every image's plain vector (dense matrix products, 20K x 20K per
   variant), and each image keeps its 12 best partners (3 flipped) by the best correlation over
   variants, plus any partner above 0.93. ``verify --min-desc 0.85`` takes those at 0.85 or more.
2. **Verification, exhaustively.** Every candidate pair is aligned by searching scale 0.85..1.15
   (step 0.05, then 0.01 around the best) and every integer shift up to 7 pixels (FFT), correlating
   the band-passed images (``ncc``) over a 34x34 window, flipped where proposed so.
3. **Decision** (:func:`same_photo`). At the best alignment, brightness and contrast are fitted and
   the local residual is measured robustly (the worst 10% of pixels are left out, so a watermark on
   one copy does not count; then the worst 8x8 window relative to an average one). Thresholds were
   set by looking at contact sheets of pairs in each band (:func:`sheet`), see docs/dedup.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path("/tmp/real/fer2013")
OUT = Path("/tmp/real/sets/truth/same_photo_pairs.csv")
WORK = Path(os.environ.get("RECROP_DIR", "/tmp/recrop"))
CLASSES = ("happy", "neutral", "sad", "surprise")
SIZE = 48
CENTER = (SIZE - 1) / 2


def truth_file(rows: str) -> Path:
    """The reference of ``rows``: ``same_photo_pairs.csv`` for the Training rows, ``-all4`` beside it for all."""
    return OUT if rows == "train4" else OUT.with_name(f"{OUT.stem}-{rows}{OUT.suffix}")


# -- data ------------------------------------------------------------------------------------------
def load(root: Path, rows: str) -> tuple[list[str], np.ndarray]:
    """Relative paths and (N, 48, 48) uint8 pixels of the chosen rows (cached in WORK)."""
    from PIL import Image

    cache = WORK / f"pixels-{rows}.npz"
    if cache.exists():
        z = np.load(cache, allow_pickle=False)
        return list(z["paths"]), z["pixels"]
    splits = ["train"] if rows == "train4" else ["train", "test"]  # all4: test rows too
    paths = sorted(
        f"{s}/{c}/{f}" for s in splits for c in CLASSES for f in os.listdir(root / s / c) if f.endswith(".jpg")
    )
    pixels = np.stack([np.asarray(Image.open(root / p).convert("L").resize((SIZE, SIZE))) for p in paths])
    WORK.mkdir(parents=True, exist_ok=True)
    np.savez(cache, paths=np.array(paths), pixels=pixels)
    return paths, pixels


# -- geometry --------------------------------------------------------------------------------------
def sample_matrix(positions: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Bilinear interpolation of a length-``size`` signal at ``positions`` (clamped) as a matrix."""
    p = np.clip(positions, 0, size - 1)
    lo = np.floor(p).astype(int)
    hi = np.minimum(lo + 1, size - 1)
    w = p - lo
    m = np.zeros((len(p), size))
    m[np.arange(len(p)), lo] += 1 - w
    m[np.arange(len(p)), hi] += w
    return m


def zoom_matrix(scale: float, shift: float = 0.0, size: int = SIZE) -> np.ndarray:
    """Rows sample ``x(c + scale * (u - c) + shift)`` for u in 0..size-1 (c the centre)."""
    u = np.arange(size)
    return sample_matrix(CENTER + scale * (u - CENTER) + shift, size)


def apply(op_rows: np.ndarray, x: np.ndarray, op_cols: np.ndarray | None = None) -> np.ndarray:
    """``R @ X @ C.T`` for every image of a batch ``x`` (N, H, W)."""
    op_cols = op_rows if op_cols is None else op_cols
    n, h, w = x.shape
    y = (x.reshape(-1, w) @ op_cols.T.astype(np.float32)).reshape(n, h, -1)
    return np.einsum("ij,njk->nik", op_rows.astype(np.float32), y, optimize=True)


def gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(x.astype(np.float32), (0, sigma, sigma), mode="nearest")


# -- 1. candidates ---------------------------------------------------------------------------------
GRID = CENTER + (np.arange(16) - 7.5) * 2.25  # 16 points over the central 36 pixels
ZOOMS = (0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15)
MOVES = ((0, 0), (-3, 0), (3, 0), (0, -3), (0, 3))


def descriptors(blurred: np.ndarray, zoom: float, dy: float, dx: float, flip: bool) -> np.ndarray:
    rows = sample_matrix(CENTER + zoom * (GRID - CENTER) + dy)
    cols = sample_matrix(CENTER + zoom * (GRID - CENTER) + dx)
    x = blurred[:, :, ::-1] if flip else blurred
    d = apply(rows, np.ascontiguousarray(x), cols).reshape(len(x), -1)
    d -= d.mean(axis=1, keepdims=True)
    d /= np.linalg.norm(d, axis=1, keepdims=True) + 1e-6
    return d.astype(np.float32)


def candidates(pixels: np.ndarray, top: int = 12, floor: float = 0.93) -> pd.DataFrame:
    """Pairs (a < b, flip) proposed by the best descriptor correlation over zooms, moves and flips."""
    n = len(pixels)
    blurred = gaussian(pixels, 1.2)
    base = descriptors(blurred, 1.0, 0, 0, False)
    variants = [(z, dy, dx, False) for z in ZOOMS for dy, dx in MOVES]
    mirrored = [(z, 0, 0, True) for z in (0.9, 1.0, 1.1)]
    queries = {v: descriptors(blurred, *v) for v in variants + mirrored}
    out = []
    t = time.perf_counter()
    for s in range(0, n, 2048):
        rows = np.arange(s, min(s + 2048, n))
        for flip, group, keep in ((False, variants, top), (True, mirrored, 3)):
            best = np.full((len(rows), n), -1.0, dtype=np.float32)
            for v in group:
                np.maximum(best, queries[v][rows] @ base.T, out=best)
            best[np.arange(len(rows)), rows] = -1
            idx = np.argpartition(-best, keep, axis=1)[:, :keep]
            a = np.repeat(rows, keep)
            b = idx.ravel()
            hi_r, hi_b = np.nonzero(best >= floor)
            a = np.concatenate([a, rows[hi_r]])
            b = np.concatenate([b, hi_b])
            out.append(
                pd.DataFrame({"a": np.minimum(a, b), "b": np.maximum(a, b), "flip": flip, "desc": best[a - s, b]})
            )
        print(f"  rows {s + len(rows)}/{n} {time.perf_counter() - t:.0f} s", file=sys.stderr)
    frame = pd.concat(out, ignore_index=True)
    return frame.groupby(["a", "b", "flip"], as_index=False)["desc"].max()


# -- 2. verification -------------------------------------------------------------------------------
MARGIN = 7  # shifts searched: up to 7 px (15% of the side); the correlated window is 34x34
COARSE = np.round(np.arange(0.85, 1.1501, 0.05), 3)


def _warp(x: np.ndarray, scale: float) -> np.ndarray:
    return apply(zoom_matrix(scale), x)


def align(band_a: np.ndarray, band_b: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, ...]:
    """Best NCC over per-pair candidate ``scales`` (P, K) and all shifts up to MARGIN."""
    from fercurate.dedup.match import ncc_over_shifts

    p = len(band_a)
    best = np.full(p, -2.0)
    best_s = np.ones(p)
    best_dy = np.zeros(p, dtype=int)
    best_dx = np.zeros(p, dtype=int)
    for k in range(scales.shape[1]):
        col = scales[:, k]
        for value in np.unique(col):
            rows = np.nonzero(col == value)[0]
            ncc, dy, dx = ncc_over_shifts(_warp(band_a[rows], float(value)), band_b[rows], MARGIN)
            better = ncc > best[rows]
            r = rows[better]
            best[r], best_s[r], best_dy[r], best_dx[r] = ncc[better], value, dy[better], dx[better]
    return best, best_s, best_dy, best_dx


def residuals(fine_a: np.ndarray, fine_b: np.ndarray, scale: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> dict:
    """Robust local residual of the aligned pairs once brightness and contrast are fitted."""
    p = len(fine_a)
    m, c = MARGIN, SIZE - 2 * MARGIN
    wa = np.empty((p, c, c), dtype=np.float32)
    for value in np.unique(scale):
        rows = np.nonzero(scale == value)[0]
        wa[rows] = _warp(fine_a[rows], float(value))[:, m : m + c, m : m + c]
    r_idx = np.arange(p)[:, None, None]
    yy = (m + dy)[:, None, None] + np.arange(c)[None, :, None]
    xx = (m + dx)[:, None, None] + np.arange(c)[None, None, :]
    wb = fine_b[r_idx, yy, xx].astype(np.float32)
    fa = wa - wa.mean(axis=(1, 2), keepdims=True)
    fb = wb - wb.mean(axis=(1, 2), keepdims=True)
    alpha = (fa * fb).sum(axis=(1, 2)) / np.maximum((fa * fa).sum(axis=(1, 2)), 1e-6)
    res = fb - alpha[:, None, None] * fa
    var_b = (fb * fb).mean(axis=(1, 2))
    r2 = (res * res).reshape(p, -1)
    cut = np.quantile(r2, 0.9, axis=1)
    kept = r2 <= cut[:, None]
    trimmed = np.where(kept, r2, 0).reshape(p, c, c)
    win = 8
    corners = np.arange(0, c - win + 1, 4)
    sums = np.stack([trimmed[:, i : i + win, j : j + win].sum(axis=(1, 2)) for i in corners for j in corners], 1)
    plain = np.stack([(res * res)[:, i : i + win, j : j + win].sum(axis=(1, 2)) for i in corners for j in corners], 1)
    avg = var_b * win * win
    return {
        "alpha": alpha,
        "rms": np.sqrt(r2.mean(axis=1) / np.maximum(var_b, 1e-6)),
        "rms_trim": np.sqrt((r2 * kept).sum(axis=1) / kept.sum(axis=1) / np.maximum(var_b, 1e-6)),
        "tile": plain.max(axis=1) / np.maximum(avg, 1e-6),
        "tile_trim": sums.max(axis=1) / np.maximum(avg, 1e-6),
    }


#: The scales a found pair the reference never proposed is judged over (real re-crops reach 1.2).
WIDE = np.round(np.arange(0.8, 1.2501, 0.05), 3)


def verify(pixels: np.ndarray, pairs: pd.DataFrame, chunk: int = 4096, coarse: np.ndarray = COARSE) -> pd.DataFrame:
    """Best scale, shift and NCC of every candidate pair, then its residual measures."""
    from fercurate.dedup.match import blurs

    fine, band = blurs(pixels)
    out = []
    t = time.perf_counter()
    for s in range(0, len(pairs), chunk):
        part = pairs.iloc[s : s + chunk]
        a, b, flip = part["a"].to_numpy(), part["b"].to_numpy(), part["flip"].to_numpy()
        ba, fa = band[a].copy(), fine[a].copy()
        ba[flip], fa[flip] = ba[flip][:, :, ::-1], fa[flip][:, :, ::-1]
        bb, fb = band[b], fine[b]
        p = len(part)
        ncc, sc, dy, dx = align(ba, bb, np.tile(coarse, (p, 1)))
        fine_scales = np.clip(sc[:, None] + np.arange(-0.02, 0.0201, 0.01)[None, :], 0.75, 1.3).round(3)
        ncc, sc, dy, dx = align(ba, bb, fine_scales)
        # the plain measure of issue 12: best NCC over shifts up to 2 px at scale 1
        from fercurate.dedup.match import ncc_over_shifts

        ncc1 = ncc_over_shifts(ba, bb, 2)[0]
        res = residuals(fa, fb, sc, dy, dx)
        out.append(
            pd.DataFrame(
                {
                    "a": a,
                    "b": b,
                    "flip": flip,
                    "desc": part["desc"].to_numpy(),
                    "ncc": ncc,
                    "ncc_small": ncc1,
                    "scale": sc,
                    "dy": dy,
                    "dx": dx,
                    **res,
                }
            )
        )
        print(f"  verified {s + p}/{len(pairs)} {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return pd.concat(out, ignore_index=True)


# -- contact sheets --------------------------------------------------------------------------------
def aligned_copy(pixels: np.ndarray, a: int, b: int, flip: bool, scale: float, dy: int, dx: int) -> np.ndarray:
    """Image ``a`` warped onto ``b`` (scale, then the shift found), for showing a pair aligned."""
    x = pixels[a][:, ::-1] if flip else pixels[a]
    rows = zoom_matrix(scale, -dy)
    cols = zoom_matrix(scale, -dx)
    w = apply(rows, x[None].astype(np.float32), cols)[0]
    # the shift found says where b matched a's crop: b(u + d) ~ warped a(u), so warped a moves by +d
    ry = sample_matrix(np.arange(SIZE) - dy)
    cx = sample_matrix(np.arange(SIZE) - dx)
    w = apply(ry, apply(zoom_matrix(scale), x[None].astype(np.float32)), cx)[0]
    return np.clip(w, 0, 255).astype(np.uint8)


def sheet(pixels: np.ndarray, rows: pd.DataFrame, path: Path, title: str, limit: int = 40) -> None:
    """Pairs as (a, a aligned onto b, b, |difference|), four images a pair, two pairs a row."""
    from fercurate.images import contact_sheet

    images, captions, groups = [], [], []
    for k, r in enumerate(rows.head(limit).itertuples()):
        w = aligned_copy(pixels, r.a, r.b, bool(r.flip), float(r.scale), int(r.dy), int(r.dx))
        diff = np.clip(np.abs(w.astype(int) - pixels[r.b].astype(int)) * 2, 0, 255).astype(np.uint8)
        images += [pixels[r.a], w, pixels[r.b], diff]
        captions += [f"n{r.ncc:.3f}", f"s{r.scale:.2f} {r.dy},{r.dx}", f"t{r.tile_trim:.2f}", f"r{r.rms_trim:.2f}"]
        groups += [k] * 4
    img = contact_sheet(images, captions, columns=8, scale=3, title=title, groups=groups)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


# -- 3. decision -----------------------------------------------------------------------------------
BANDS = (0.90, 0.92, 0.95, 0.97, 0.99)
BAND_NAMES = ("<0.90", "0.90-0.92", "0.92-0.95", "0.95-0.97", "0.97-0.99", ">=0.99")


def same_photo(v: pd.DataFrame) -> np.ndarray:
    """The reference's decision, set by looking at contact sheets of each band (docs/dedup.md).

    NCC >= 0.95 at the best zoom and shift: every pair looked at was the same photo (watermarks and
    tone curves included). 0.90-0.95: the same photo when the trimmed local residual is small
    (<= 0.12); above it, a mix of watermarked copies and other frames. 0.85-0.90: mostly strong tone
    changes of the same photo when the residual is <= 0.08.
    """
    ncc, tile = v["ncc"].to_numpy(), v["tile_trim"].to_numpy()
    return ((ncc >= 0.95) & (tile <= 0.3)) | ((ncc >= 0.90) & (tile <= 0.12)) | ((ncc >= 0.85) & (tile <= 0.08))


def classify(pixels: np.ndarray, v: pd.DataFrame) -> pd.DataFrame:
    """kind and band of verified pairs."""
    a, b = v["a"].to_numpy(), v["b"].to_numpy()
    exact = (pixels[a] == pixels[b]).all(axis=(1, 2))
    moved = (np.abs(v["scale"].to_numpy() - 1) > 0.02) | (np.maximum(np.abs(v["dy"]), np.abs(v["dx"])) > 2)
    kind = np.where(exact, "exact", np.where(v["flip"], "mirror", np.where(moved, "recrop", "near")))
    band = np.array(BAND_NAMES)[np.digitize(v["ncc_small"].to_numpy(), BANDS)]
    return v.assign(kind=kind, band=band)


def build_truth(paths: list[str], pixels: np.ndarray, rows: str) -> pd.DataFrame:
    v = pd.read_parquet(WORK / f"verified-{rows}.parquet")
    # a pair proposed both as is and flipped keeps its better reading, the unflipped one on a tie
    v = v.sort_values(["a", "b", "ncc", "flip"], ascending=[True, True, False, True]).drop_duplicates(["a", "b"])
    v = classify(pixels, v[same_photo(v)])
    p = np.array(paths)
    out = pd.DataFrame(
        {
            "a": p[v["a"]],
            "b": p[v["b"]],
            "kind": v["kind"],
            "ncc": v["ncc"].round(4),
            "scale": v["scale"].round(3),
            "shift": [f"{y},{x}" for y, x in zip(v["dy"], v["dx"], strict=True)],
            "band": v["band"],
            "how": "descriptor kNN >= 0.85 (35 zoom/shift variants, 3 mirrored); scale+shift search",
        }
    )
    dest = truth_file(rows)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    out.to_csv(tmp, index=False)
    tmp.replace(dest)
    return out


def score(paths: list[str], pixels: np.ndarray, rows: str, **params: float) -> dict[str, object]:
    """``find_duplicate_pairs`` against the reference: recall per kind and band, precision by re-verifying."""
    from fercurate.dedup import DedupParams, find_duplicate_pairs

    truth = pd.read_csv(truth_file(rows))
    pos = {q: k for k, q in enumerate(paths)}
    ta = truth["a"].map(pos).to_numpy()
    tb = truth["b"].map(pos).to_numpy()
    t = time.perf_counter()
    c = time.process_time()
    found = find_duplicate_pairs(pixels, DedupParams(**params))  # type: ignore[arg-type]
    seconds, cpu = time.perf_counter() - t, time.process_time() - c
    # recall: truth pairs whose images dedup put in one group (grouping is transitive)
    parent = np.arange(len(pixels))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in zip(found["i"], found["j"], strict=True):
        parent[root(i)] = root(j)
    hit = np.array([root(i) == root(j) for i, j in zip(ta, tb, strict=True)])
    direct = set(zip(np.minimum(ta, tb).tolist(), np.maximum(ta, tb).tolist(), strict=True))
    pairs = set(zip(found["i"].tolist(), found["j"].tolist(), strict=True))
    # precision: found pairs the reference lists, plus found pairs it never proposed, judged by the
    # reference's own verifier and decision
    unknown = sorted(pairs - direct)
    judged = 0
    if unknown:
        mirrored = set(
            zip(found.loc[found["kind"] == "mirror", "i"], found.loc[found["kind"] == "mirror", "j"], strict=True)
        )
        u = pd.DataFrame(
            {
                "a": [a for a, _ in unknown],
                "b": [b for _, b in unknown],
                "flip": [pair in mirrored for pair in unknown],  # judged as found: flipped or not
                "desc": np.nan,
            }
        )
        v = verify(pixels, u, coarse=WIDE)
        judged = int(same_photo(v).sum())
        v[~same_photo(v)].to_parquet(WORK / f"false-{rows}.parquet")
        sheet(pixels, v[~same_photo(v)], WORK / f"false-{rows}.png", "found pairs the reference rejects")
    true_found = len(pairs & direct) + judged
    per_kind = {
        k: f"{hit[truth['kind'] == k].mean():.3f} of {(truth['kind'] == k).sum()}"
        for k in sorted(truth["kind"].unique())
    }
    per_band = {
        b: f"{hit[truth['band'] == b].mean():.3f} of {(truth['band'] == b).sum()}"
        for b in BAND_NAMES
        if (truth["band"] == b).any()
    }
    missed = truth[~hit]
    missed.to_csv(WORK / f"missed-{rows}.csv", index=False)
    if len(missed):  # a contact sheet of a random 40, aligned as the reference aligns them
        pick = missed.sample(min(40, len(missed)), random_state=0)
        m = pd.DataFrame(
            {"a": pick["a"].map(pos), "b": pick["b"].map(pos), "flip": pick["kind"] == "mirror", "desc": np.nan}
        )
        sheet(pixels, verify(pixels, m, coarse=WIDE), WORK / f"missed-{rows}.png", "reference pairs dedup missed")
    return {
        "images": len(pixels),
        "reference pairs": len(truth),
        "recall (same group)": round(float(hit.mean()), 4),
        "recall without mirror pairs": round(float(hit[truth["kind"] != "mirror"].mean()), 4),
        "found pairs": len(pairs),
        "precision": round(true_found / max(1, len(pairs)), 4),
        "false pairs": len(pairs) - true_found,
        "recall by kind": per_kind,
        "recall by band": per_band,
        "found kinds": found["kind"].value_counts().to_dict(),
        "seconds": round(seconds, 2),
        "cpu seconds": round(cpu, 2),
        "load": open("/proc/loadavg").read().split()[:3],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["candidates", "verify", "truth", "score"])
    ap.add_argument("--min-desc", type=float, default=0.8)
    ap.add_argument("--mirror", action="store_true", help="score: dedup with --mirror")
    ap.add_argument("--max-zoom", type=float, default=None, help="score: dedup's --max-zoom (default 0.15)")
    ap.add_argument("--max-residual", type=float, default=None, help="score: dedup's --max-residual (default 0.15)")
    ap.add_argument("--rows", default="train4")
    ap.add_argument("--root", type=Path, default=ROOT)
    args = ap.parse_args()
    paths, pixels = load(args.root, args.rows)
    if args.what == "candidates":
        t = time.perf_counter()
        c = candidates(pixels)
        c.to_parquet(WORK / f"cands-{args.rows}.parquet")
        print(len(paths), len(c), f"{time.perf_counter() - t:.0f} s")
    if args.what == "verify":
        c = pd.read_parquet(WORK / f"cands-{args.rows}.parquet")
        c = c[c["desc"] >= args.min_desc].reset_index(drop=True)
        v = verify(pixels, c)
        v.to_parquet(WORK / f"verified-{args.rows}.parquet")
    if args.what == "truth":
        t = build_truth(paths, pixels, args.rows)
        print(len(t), t["kind"].value_counts().to_dict(), t["band"].value_counts().to_dict())
    if args.what == "score":
        import json

        extra: dict[str, float] = {"mirror": True} if args.mirror else {}
        extra["max_zoom"] = 0.15 if args.max_zoom is None else args.max_zoom
        if args.max_residual is not None:
            extra["max_residual"] = args.max_residual
        print(json.dumps(score(paths, pixels, args.rows, **extra), indent=2))


if __name__ == "__main__":
    main()
