"""The demo's AffectNet-style source: larger colour images, one face box per CSV row, a few planted faults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from fercurate.demo.faces import (
    camera,
    draw_pose,
    expression_shape,
    landmarks,
    make_identity,
    render_head,
    soft_background,
)
from fercurate.demo.files import encode, map_tasks, write_files
from fercurate.demo.params import (
    AFFECTNET_CODES,
    AFFECTNET_COLUMNS,
    EXTRA_FACES,
    INTENSITY_RANGES,
    STREAM_AFFECTNET,
    VALENCE_AROUSAL,
    DemoParams,
)


@dataclass(frozen=True)
class _AffectTask:
    seed: int
    index: int
    expression: str  # an AffectNet code name
    intensity: float


@dataclass(frozen=True)
class _AffectImage:
    data: bytes
    width: int
    height: int
    box: tuple[int, int, int, int]
    landmarks: np.ndarray


def _render_affectnet_image(task: _AffectTask) -> _AffectImage:
    rng = np.random.default_rng([task.seed, STREAM_AFFECTNET, task.index])
    width, height = (int(v) for v in rng.integers(96, 161, size=2))
    box = int(rng.uniform(0.5, 0.68) * min(width, height))
    bx = int(rng.integers(max(1, int(0.08 * width)), width - box - max(1, int(0.08 * width)) + 1))
    by = int(rng.integers(max(1, int(0.05 * height)), height - box - max(1, int(0.12 * height)) + 1))
    who = make_identity(rng)
    pose = draw_pose(rng, tight=True)

    scene = soft_background(rng, width, height, "RGB", 20, 235)
    # Clothes below the head.
    clothes = tuple(int(v) for v in rng.integers(20, 221, size=3))
    ImageDraw.Draw(scene).ellipse((bx - 0.35 * box, by + 1.05 * box, bx + 1.35 * box, by + 2.6 * box), fill=clothes)

    if task.expression == "no-face":
        img = scene
        marks = np.zeros((68, 2))
    else:
        expression = task.expression
        if expression == "none":
            expression = str(rng.choice(EXTRA_FACES))
        elif expression == "uncertain":
            expression = "sad"
        shape = expression_shape(expression, task.intensity, rng)
        ss = 2
        base = Image.new("L", (width * ss, height * ss), 0)
        gray, mask, affine = render_head(base, ss, who, shape, pose, rng, float(box), (bx, by), with_mask=True)
        assert mask is not None  # asked for with_mask
        # Colour the gray head with the person's skin tint, then lay it on the scene.
        ramp = np.arange(256, dtype=np.float64)
        channels = [gray.point(np.clip(ramp * t, 0, 255).round().astype(int).tolist()) for t in who.skin_rgb]
        img = Image.composite(Image.merge("RGB", channels), scene, mask)
        unit = landmarks(who, shape, pose.yaw)
        marks = np.c_[unit, np.ones(len(unit))] @ affine.T
    # A light 3x3 smoothing stands in for lens blur: a Gaussian costs more than the face here.
    out = camera(np.asarray(img.filter(ImageFilter.SMOOTH), dtype=np.float32), rng)
    data = encode(out.round().astype(np.uint8), "JPEG", int(rng.integers(80, 96)))
    return _AffectImage(data, width, height, (bx, by, box, box), marks)


def _affectnet_plan(n: int, rng: np.random.Generator) -> list[str]:
    # Surprise is what balancing the demo set needs, so the source is rich in it.
    shares = {
        "surprise": 0.34,
        "happy": 0.12,
        "neutral": 0.12,
        "sad": 0.12,
        "fear": 0.07,
        "anger": 0.06,
        "contempt": 0.04,
        "disgust": 0.03,
        "none": 0.04,
        "uncertain": 0.03,
        "no-face": 0.03,
    }
    raw = np.array(list(shares.values())) * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(counts - raw)[: n - counts.sum()]:
        counts[i] += 1
    labels = np.repeat(list(shares), counts)
    return [str(v) for v in rng.permutation(labels)]


def write_affectnet(root: Path, p: DemoParams, workers: int) -> dict[str, int]:
    import pandas as pd

    rng = np.random.default_rng([p.seed, STREAM_AFFECTNET])
    labels = _affectnet_plan(p.n_affectnet, rng)
    tasks = []
    for j, label in enumerate(labels):
        lo, hi = INTENSITY_RANGES.get(label, (0.3, 0.8))
        tasks.append(_AffectTask(p.seed, j, label, float(rng.uniform(lo, hi))))
    images: list[_AffectImage] = map_tasks(_render_affectnet_image, tasks, workers)

    faults: list[str | None] = [None] * len(tasks)
    fault_kinds = ["missing_file", "missing_file", "box_outside", "corrupt"]
    for j, kind in zip(rng.choice(len(tasks), size=min(len(tasks), 4), replace=False), fault_kinds, strict=False):
        faults[int(j)] = kind

    image_dir = root / "Manually_Annotated_Images"
    csv_rows = []
    truth_rows = []
    files: list[tuple[Path, bytes]] = []
    for task, img, fault in zip(tasks, images, faults, strict=True):
        sub = int(rng.integers(1, 21))
        rel = f"{sub}/{rng.bytes(20).hex()}.jpg"
        x, y, bw, bh = img.box
        if fault == "box_outside":
            x = img.width - bw // 3  # the box runs off the right edge
        code = AFFECTNET_CODES.index(task.expression)
        va = VALENCE_AROUSAL.get(task.expression)
        if va is None:
            valence, arousal = rng.uniform(-0.3, 0.3, size=2)
        else:
            valence = va[0] * (0.4 + 0.6 * task.intensity) + rng.normal(0, 0.08)
            arousal = va[1] * (0.4 + 0.6 * task.intensity) + rng.normal(0, 0.08)
        landmarks = ";".join(f"{v:.2f}" for v in img.landmarks.ravel())
        csv_rows.append(
            (
                rel,
                x,
                y,
                bw,
                bh,
                landmarks,
                code,
                round(float(np.clip(valence, -1, 1)), 6),
                round(float(np.clip(arousal, -1, 1)), 6),
            )
        )
        truth_rows.append((rel, code, task.expression, task.intensity, fault))
        if fault == "missing_file":
            continue
        data = img.data
        if fault == "corrupt":
            data = data[:4] + rng.bytes(len(data) // 2)
        files.append((image_dir / rel, data))
    image_dir.mkdir(parents=True, exist_ok=True)
    write_files(files)
    pd.DataFrame(csv_rows, columns=list(AFFECTNET_COLUMNS)).to_csv(root / "training.csv", index=False)
    truth = pd.DataFrame(
        truth_rows, columns=["subDirectory_filePath", "expression", "true_label", "intensity", "fault"]
    )
    truth.to_parquet(root / "truth.parquet", index=False)
    return {"affectnet": len(csv_rows), "affectnet_faults": sum(f is not None for f in faults)}
