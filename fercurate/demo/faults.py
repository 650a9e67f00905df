"""Planting the faults of a real FER dataset: wrong labels, near-duplicates across splits, burst
frames, invalid files."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fercurate.demo.files import Row, class_counts, encode, split_counts
from fercurate.demo.params import (
    BURST_MIN_CHANGE,
    BURST_SHARE,
    BURST_SHIFT_PX,
    BURST_ZOOM_CHANGE,
    DUP_RELABEL_SHARE,
    DUP_TRANSFORM_WEIGHTS,
    DUP_TRANSFORMS,
    INTENSITY_RANGES,
    INVALID_REASONS,
    NOT_AN_IMAGE,
    RECROP_MIN_ZOOM_CHANGE,
    RECROP_SHIFT_PX,
    RECROP_ZOOM,
    SAD_NEUTRAL_FLIP_SHARE,
    SPLIT_FRACTIONS,
    SPLITS,
    TONE_GAMMA,
    TONE_MIN_CHANGE,
    WATERMARK_ALPHA,
    WATERMARK_WORDS,
    DemoParams,
)


def _flip(rows: list[Row], rate: float, classes: Sequence[str], rng: np.random.Generator) -> None:
    """Give ``rate`` of the rows a wrong folder, mostly sad <-> neutral near their boundary."""
    n_flip = round(rate * len(rows))
    if n_flip == 0:
        return
    flipped: set[int] = set()
    pair = {"sad": "neutral", "neutral": "sad"}
    if "sad" in classes and "neutral" in classes:
        pool = [i for i, r in enumerate(rows) if r.true_label in pair]
        # Prefer the ambiguous middle of the sadness axis, but not only it.
        w = np.array([np.exp(-((((rows[i].intensity or 0.0) - 0.45) / 0.15) ** 2)) + 0.25 for i in pool])
        take = min(len(pool), round(n_flip * SAD_NEUTRAL_FLIP_SHARE))
        for i in rng.choice(pool, size=take, replace=False, p=w / w.sum()):
            rows[i].given_label = pair[str(rows[i].true_label)]
            flipped.add(int(i))
    pool = [i for i in range(len(rows)) if i not in flipped]
    # Subtle expressions are the ones annotators get wrong.
    w = np.array([1.2 - (rows[i].intensity or 0.0) for i in pool])
    take = min(len(pool), n_flip - len(flipped))
    for i in rng.choice(pool, size=take, replace=False, p=w / w.sum()):
        true = str(rows[i].true_label)
        others = [c for c in classes if c != true and pair.get(true) != c]
        rows[i].given_label = str(rng.choice(others or [c for c in classes if c != true]))


def plan_originals(p: DemoParams, rng: np.random.Generator) -> list[Row]:
    counts = class_counts(p.n_images, p.classes, rng)
    n_ids = max(1, p.n_images // 3)
    rows: list[Row] = []
    for label, n in counts.items():
        lo, hi = INTENSITY_RANGES[label]
        splits = split_counts(n)
        split_of = np.repeat(list(splits), list(splits.values()))
        for split, intensity in zip(split_of, rng.uniform(lo, hi, size=n), strict=True):
            rows.append(Row(0, str(split), label, label, float(intensity), int(rng.integers(n_ids))))
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    _flip(rows, p.mislabel_rate, p.classes, rng)
    # A few RGB files and a few PNGs among the gray JPEGs.
    n_odd = max(2, round(0.008 * len(rows))) if len(rows) >= 20 else 0
    odd = rng.choice(len(rows), size=min(len(rows), 2 * n_odd), replace=False)
    for i in odd[:n_odd]:
        rows[i].mode = "RGB"
    for i in odd[n_odd:]:
        rows[i].fmt = "PNG"
    return rows


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img)


def _away_from_one(rng: np.random.Generator, lo: float, hi: float, min_change: float) -> float:
    """A factor in [lo, hi] at least ``min_change`` away from 1 (no invisible edits)."""
    while True:
        value = float(rng.uniform(lo, hi))
        if abs(value - 1.0) >= min_change:
            return value


def _watermark(arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blend a semi-transparent stock-photo word over ``arr`` (float, HxW or HxWxC), drawn 4x
    supersampled, as large as the crop is wide, often diagonal."""
    h, w = arr.shape[:2]
    ss = 4
    word = str(rng.choice(WATERMARK_WORDS))
    layer = Image.new("L", (w * ss, h * ss), 0)
    draw = ImageDraw.Draw(layer)
    probe = draw.textbbox((0, 0), word, font=ImageFont.load_default(size=100))
    size = max(8, round(100 * rng.uniform(0.8, 1.2) * w * ss / (probe[2] - probe[0])))
    font = ImageFont.load_default(size=size)
    left, top, right, bottom = draw.textbbox((0, 0), word, font=font)
    x = (w * ss - (right - left)) / 2 + rng.uniform(-0.1, 0.1) * w * ss - left
    y = (h * ss - (bottom - top)) / 2 + rng.uniform(-0.3, 0.3) * h * ss - top
    draw.text((x, y), word, fill=255, font=font)
    if rng.random() < 0.6:
        layer = layer.rotate(float(rng.choice([-1, 1]) * rng.uniform(20, 40)), Image.Resampling.BICUBIC)
    cover = np.asarray(layer.reduce(ss), dtype=np.float32) / 255 * np.float32(rng.uniform(*WATERMARK_ALPHA))
    if arr.ndim == 3:
        cover = cover[..., None]
    out: np.ndarray = arr * (1 - cover) + 255 * cover
    return out


def _transform_copy(original: Row, transform: str, rng: np.random.Generator) -> tuple[bytes, str]:
    """Re-make an original's file the way a scraper or an editor would. Returns (bytes, format)."""
    if transform == "exact":
        return original.data, original.fmt
    arr = _decode(original.data).astype(np.float32)
    h, w = arr.shape[:2]
    quality = int(rng.integers(75, 96))
    if transform == "reencode":
        quality = int(rng.choice([q for q in range(40, 96, 5) if abs(q - quality) > 10]))
    elif transform == "brightness":
        arr = arr * (1 + rng.choice([-1, 1]) * rng.uniform(0.10, 0.25))
    elif transform == "contrast":
        factor = rng.uniform(0.7, 0.85) if rng.random() < 0.5 else rng.uniform(1.15, 1.35)
        arr = (arr - arr.mean()) * factor + arr.mean()
    elif transform == "resize":
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        if rng.random() < 0.4:
            img = img.resize((64, 64), Image.Resampling.BICUBIC)
        else:
            mid = int(rng.choice([40, 44, 56]))
            img = img.resize((mid, mid), Image.Resampling.BILINEAR).resize((w, h), Image.Resampling.BICUBIC)
        arr = np.asarray(img, dtype=np.float32)
    elif transform == "shift":
        dy, dx = (int(v) * int(rng.choice([-1, 1])) for v in rng.integers(1, 3, size=2))
        pad = [(2, 2), (2, 2)] + [(0, 0)] * (arr.ndim - 2)
        padded = np.pad(arr, pad, mode="edge")
        arr = padded[2 + dy : 2 + dy + h, 2 + dx : 2 + dx + w]
    elif transform == "watermark":
        arr = _watermark(arr, rng)
    elif transform == "tone":
        gamma = _away_from_one(rng, *TONE_GAMMA, TONE_MIN_CHANGE)
        arr = 255.0 * (np.clip(arr, 0, 255) / 255.0) ** gamma
    return encode(np.clip(arr, 0, 255).round().astype(np.uint8), original.fmt, quality), original.fmt


def _pick_sources(rows: list[Row], n: int, rng: np.random.Generator) -> list[tuple[int, str]]:
    """Choose (original, split of its copy) pairs that keep the split fractions intact.

    The copy's split is drawn from the split fractions first; its original then comes from
    another split 80% of the time, so most duplicates leak across splits.
    """
    by_split = {s: [i for i, r in enumerate(rows) if r.split == s] for s in SPLITS}
    used: set[int] = set()
    picks: list[tuple[int, str]] = []
    # One leak from the tiny test split is worth showing: a test image copied into train.
    if by_split["test"]:
        picks.append((by_split["test"][0], "train"))
        used.add(by_split["test"][0])
    fractions = np.array([SPLIT_FRACTIONS[s] for s in SPLITS])
    while len(picks) < n:
        split = str(rng.choice(SPLITS, p=fractions))
        cross = rng.random() < 0.8
        pool = [s for s in SPLITS if (s != split) == cross and by_split[s]]
        if not pool:
            continue
        weights = np.array([len(by_split[s]) for s in pool], dtype=float)
        source_split = pool[int(rng.choice(len(pool), p=weights / weights.sum()))]
        candidate = int(rng.choice(by_split[source_split]))
        if candidate not in used:
            used.add(candidate)
            picks.append((candidate, split))
    return picks


def plant_duplicates(rows: list[Row], p: DemoParams, rng: np.random.Generator) -> list[Row]:
    n_dup = min(round(p.duplicate_rate * len(rows)), len(rows) // 2)
    if n_dup == 0:
        return []
    # A few originals get two copies: duplicate groups of three.
    n_triples = min(n_dup // 2, max(1, round(0.08 * n_dup)) if n_dup >= 3 else 0)
    picks = _pick_sources(rows, n_dup - n_triples, rng)
    for src, split in picks[-n_triples:] if n_triples else []:
        others = [s for s in SPLITS if s not in (split, "test")]
        picks.append((src, str(rng.choice(others))))
    transforms = rng.choice(DUP_TRANSFORMS, size=len(picks), p=DUP_TRANSFORM_WEIGHTS)
    copies: list[Row] = []
    for (src, split), transform in zip(picks, transforms, strict=True):
        original = rows[src]
        label = original.given_label
        if rng.random() < DUP_RELABEL_SHARE:
            label = str(rng.choice([c for c in p.classes if c != label]))
        box: tuple[float, float, float] | None = None
        if transform == "recrop":
            # Another face box on the same photo: redrawn by the renderer (see generate), not resampled.
            zoom = _away_from_one(rng, *RECROP_ZOOM, RECROP_MIN_ZOOM_CHANGE)
            dx, dy = (float(v) for v in rng.uniform(-RECROP_SHIFT_PX, RECROP_SHIFT_PX, size=2))
            box, data, fmt = (zoom, dx, dy), b"", original.fmt
        else:
            data, fmt = _transform_copy(original, str(transform), rng)
        copies.append(
            Row(
                0,
                split,
                label,
                original.true_label,
                original.intensity,
                original.identity,
                fmt=fmt,
                mode=original.mode,
                dup_of=src,
                dup_transform=str(transform),
                box=box,
                data=data,
            )
        )
    return copies


def plant_bursts(
    rows: list[Row], p: DemoParams, rng: np.random.Generator, draw: Callable[[int, str, float], np.ndarray]
) -> list[Row]:
    """Burst frames: for a few originals, the same person, pose, light and backdrop with another,
    clearly shown expression and the camera a pixel off. Not duplicates: the rows to redraw (their
    ``box`` set, their ``data`` empty) with their own, correct label.

    ``draw(row, expression, intensity)`` renders row ``row``'s photo (its own box) with another
    expression. A frame must differ visibly from its original (:func:`visible_change`): a faint face
    can draw alike under another, faint expression, and two such frames are one photo to any eye.
    Each original tries the other classes in random order; one on which none shows is passed over.
    """
    n = round(BURST_SHARE * len(rows))
    fractions = np.array([SPLIT_FRACTIONS[s] for s in SPLITS])
    frames: list[Row] = []
    for src in rng.permutation(len(rows)):
        if len(frames) == n:
            break
        original = rows[int(src)]
        if original.true_label is None:
            continue
        before = draw(int(src), original.true_label, float(original.intensity or 0.0))
        for expression in rng.permutation([c for c in p.classes if c != original.true_label]):
            expression = str(expression)
            lo, hi = INTENSITY_RANGES[expression]
            # Far from the other class on the sadness axis, so the frame really shows another expression.
            intensity = rng.uniform(0.0, 0.2) if expression == "neutral" else rng.uniform((lo + hi) / 2, hi)
            if visible_change(before, draw(int(src), expression, float(intensity))):
                break
        else:
            continue
        zoom = 1.0 + float(rng.uniform(-BURST_ZOOM_CHANGE, BURST_ZOOM_CHANGE))
        dx, dy = (float(v) for v in rng.uniform(-BURST_SHIFT_PX, BURST_SHIFT_PX, size=2))
        frames.append(
            Row(
                0,
                str(rng.choice(SPLITS, p=fractions)),
                expression,
                expression,
                float(intensity),
                original.identity,
                fmt=original.fmt,
                mode=original.mode,
                burst_of=int(src),
                box=(zoom, dx, dy),
            )
        )
    return frames


def visible_change(first: np.ndarray, second: np.ndarray) -> bool:
    """Whether two renders of one photo differ visibly: at least ``BURST_MIN_CHANGE[1]`` pixels per
    48x48 whose grey level differs by more than ``BURST_MIN_CHANGE[0]``."""
    levels, pixels = BURST_MIN_CHANGE
    changed = np.abs(first.astype(np.int16) - second.astype(np.int16)) > levels
    return int(changed.sum()) >= pixels * first.size / (48 * 48)


def plant_invalid(p: DemoParams, donor: bytes, rng: np.random.Generator) -> list[Row]:
    rows: list[Row] = []
    for k in range(p.n_invalid):
        reason = INVALID_REASONS[k % len(INVALID_REASONS)]
        split = "train" if rng.random() < 0.72 else "validation"
        label = str(rng.choice(p.classes))
        mode: str | None = "L"
        size = p.image_size
        if reason == "empty":
            data, mode = b"", None
        elif reason == "truncated":
            data = donor[: int(len(donor) * rng.uniform(0.35, 0.6))]
        elif reason == "not_image":
            data, mode = NOT_AN_IMAGE, None
        elif reason == "uniform":
            data = encode(np.full((size, size), int(rng.integers(0, 256)), np.uint8), "JPEG", 90)
        elif reason == "near_uniform":
            base = rng.uniform(30, 220) + rng.normal(0, 0.7, size=(size, size))
            data = encode(np.clip(base, 0, 255).round().astype(np.uint8), "PNG", 0)
        else:
            data = encode(np.full((1, 1), int(rng.integers(0, 256)), np.uint8), "JPEG", 90)
        fmt = "PNG" if reason == "near_uniform" else "JPEG"
        rows.append(Row(0, split, label, None, None, -1, fmt=fmt, mode=mode, invalid_reason=reason, data=data))
    return rows
