"""merge-affectnet: crop and resize, the balancing plan, skips, dedup, placement, the CLI, export."""

from __future__ import annotations

import hashlib
import io
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from fercurate.affectnet import (
    ADDED_COLUMNS,
    CSV_COLUMNS,
    MergeParams,
    allocate,
    convert_face,
    convert_faces,
    face_crop_box,
    merge_affectnet,
    parse_mapping,
    parse_target,
    read_source,
)
from fercurate.cli import app
from fercurate.dedup import DedupParams, dedup, plant
from fercurate.errors import DatasetError, InputError
from fercurate.manifest import Col
from fercurate.scan import ScanParams, scan
from fercurate.workspace import PixelCache, Workspace

runner = CliRunner()
ENV = {"COLUMNS": "120"}

#: Active rows per class in the small dataset: surprise at 60% of the largest, as in the real case.
DATASET_COUNTS = {"happy": 50, "neutral": 50, "sad": 45, "surprise": 30}
#: Usable images per AffectNet class in the official-layout source (besides the planted faults).
SOURCE_COUNTS = {"surprise": 30, "sad": 10, "happy": 8, "neutral": 8, "fear": 5, "contempt": 3, "anger": 3}
AFFECTNET_CODE = {
    name: i
    for i, name in enumerate(
        ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt", "none", "uncertain", "no-face")
    )
}


# -- generators ------------------------------------------------------------------------------------


def smooth_field(rng: np.random.Generator, side: int, cells: int = 6) -> np.ndarray:
    """A smooth random grayscale image: distinct for every draw, so no two count as duplicates."""
    coarse = rng.uniform(0, 255, (cells, cells)).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((side, side), Image.Resampling.BICUBIC), dtype=np.uint8)


def encode(arr: np.ndarray, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buf.getvalue()


def affectnet_image(rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """An RGB photo of 96-128 px with a colourful 'face' inside a box, and that box."""
    width, height = (int(v) for v in rng.integers(96, 129, size=2))
    side = int(rng.uniform(0.5, 0.7) * min(width, height))
    x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
    scene = np.stack([smooth_field(rng, max(width, height), 4)[:height, :width] for _ in range(3)], axis=-1)
    face = smooth_field(rng, side)
    tint = rng.uniform(0.7, 1.0, size=3)
    scene[y : y + side, x : x + side] = np.clip(face[..., None] * tint, 0, 255).astype(np.uint8)
    return scene, (x, y, side, side)


def write_dataset(root: Path, counts: dict[str, int], seed: int = 1) -> dict[str, list[Path]]:
    """A split/class tree of distinct 48x48 PNGs, each class split 80/10/10."""
    rng = np.random.default_rng(seed)
    files: dict[str, list[Path]] = {}
    for label, n in counts.items():
        for split, k in zip(("train", "val", "test"), allocate(n, (80, 10, 10)), strict=True):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(k):
                path = folder / f"{label}_{split}_{i}.png"
                path.write_bytes(encode(smooth_field(rng, 48), "PNG"))
                files.setdefault(label, []).append(path)
    return files


def write_official(
    root: Path, counts: dict[str, int], *, faults: bool = True, seed: int = 2, dataset_copy: np.ndarray | None = None
) -> pd.DataFrame:
    """An AffectNet-style source: Manually_Annotated_Images/<n>/<name>.jpg plus training.csv.

    With ``faults``: 2 missing files, 2 boxes off the image, 1 corrupt file (all surprise), two rows
    each of codes 8-10, and one happy image stored twice (PNG and JPEG: a duplicate within the
    source). ``dataset_copy`` (a dataset image) is planted upscaled to RGB as a surprise image.
    """
    rng = np.random.default_rng(seed)
    images = root / "Manually_Annotated_Images"
    rows: list[tuple] = []

    def add(label: str, data: bytes | None, box: tuple[int, int, int, int], fmt: str = "jpg") -> str:
        rel = f"{len(rows) % 7 + 1}/{hashlib.sha1(str(len(rows)).encode()).hexdigest()}.{fmt}"
        if data is not None:
            (images / rel).parent.mkdir(parents=True, exist_ok=True)
            (images / rel).write_bytes(data)
        rows.append((rel, *box, "1.0;2.0", AFFECTNET_CODE[label], 0.1, 0.2))
        return rel

    for label, n in counts.items():
        for _ in range(n):
            img, box = affectnet_image(rng)
            add(label, encode(img), box)
    if faults:
        for code in ("none", "uncertain", "no-face"):
            for _ in range(2):
                img, box = affectnet_image(rng)
                add(code, encode(img), box)
        for _ in range(2):
            add("surprise", None, (10, 10, 60, 60))  # missing file
        for _ in range(2):
            img, (x, y, w, h) = affectnet_image(rng)
            add("surprise", encode(img), (img.shape[1] - w // 3, y, w, h))  # box runs off the right edge
        add("surprise", b"\xff\xd8\xff\xe0" + rng.bytes(3000), (5, 5, 50, 50))  # corrupt JPEG
        img, box = affectnet_image(rng)
        add("happy", encode(img, "PNG"), box, fmt="png")
        add("happy", encode(img, "JPEG"), box)
    if dataset_copy is not None:
        big = np.asarray(Image.fromarray(dataset_copy).resize((120, 120), Image.Resampling.BICUBIC))
        rgb = np.stack([big, big, np.clip(big.astype(int) + 8, 0, 255).astype(np.uint8)], axis=-1)
        add("surprise", encode(rgb), (0, 0, 120, 120))
    csv = pd.DataFrame(rows, columns=list(CSV_COLUMNS))
    csv.to_csv(root / "training.csv", index=False)
    return csv


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A scanned dataset (workspace template) and an official-layout AffectNet source."""
    root = tmp_path_factory.mktemp("affectnet")
    files = write_dataset(root / "dataset", DATASET_COUNTS)
    ws = Workspace(root / "ws")
    scan(ws, ScanParams(dataset=root / "dataset", workers=1))
    planted = np.asarray(Image.open(files["surprise"][0]))
    write_official(root / "source", SOURCE_COUNTS, dataset_copy=planted)
    return {"root": root, "ws": root / "ws", "source": root / "source", "dataset": root / "dataset"}


@pytest.fixture()
def ws(base: dict[str, Path], tmp_path: Path) -> Workspace:
    """A fresh copy of the scanned workspace (v0000)."""
    shutil.copytree(base["ws"], tmp_path / "ws")
    return Workspace(tmp_path / "ws")


def params(base: dict[str, Path], **kw: object) -> MergeParams:
    kw.setdefault("workers", 1)
    return MergeParams(source=base["source"], **kw)  # type: ignore[arg-type]


def shares(df: pd.DataFrame) -> pd.Series:
    act = df[df[Col.STATUS] == "active"]
    return act[Col.LABEL].value_counts(normalize=True)


# -- conversion ------------------------------------------------------------------------------------


def test_face_crop_box_squares_the_box_with_margin_and_stays_inside() -> None:
    assert face_crop_box(200, 200, (50, 60, 40, 40), 0.0) == (50, 60, 90, 100)
    assert face_crop_box(200, 200, (50, 60, 40, 40), 0.25) == (40, 50, 100, 110)
    # a tall box is squared around its centre
    assert face_crop_box(200, 200, (50, 50, 20, 40), 0.0) == (40, 50, 80, 90)
    # near the corner the square is shifted inside, still holding the box
    left, top, right, bottom = face_crop_box(100, 100, (0, 0, 50, 50), 0.5)  # type: ignore[misc]
    assert (left, top) == (0, 0) and right - left == bottom - top == 100
    # larger than the image: shrunk to the image's short side
    left, top, right, bottom = face_crop_box(120, 80, (30, 5, 70, 70), 0.5)  # type: ignore[misc]
    assert right - left == bottom - top == 80 and 0 <= left and right <= 120
    # off the image, empty, or mostly outside
    assert face_crop_box(100, 100, (80, 10, 60, 60), 0.1) is None
    assert face_crop_box(100, 100, (10, 10, 0, 30), 0.1) is None
    # a box a pixel past the edge is clipped and used
    assert face_crop_box(100, 100, (41, 10, 60, 60), 0.0) == (40, 10, 100, 70)
    # no box: the centred square
    assert face_crop_box(120, 80, None, 0.1) == (20, 0, 100, 80)


@given(
    width=st.integers(20, 400),
    height=st.integers(20, 400),
    data=st.data(),
    margin=st.floats(0, 1),
)
def test_face_crop_box_always_holds_the_box(width: int, height: int, data: st.DataObject, margin: float) -> None:
    w = data.draw(st.integers(1, width))
    h = data.draw(st.integers(1, height))
    x = data.draw(st.integers(0, width - w))
    y = data.draw(st.integers(0, height - h))
    left, top, right, bottom = face_crop_box(width, height, (x, y, w, h), margin)  # type: ignore[misc]
    eps = 1e-6
    assert abs((right - left) - (bottom - top)) < eps
    assert -eps <= left and right <= width + eps and -eps <= top and bottom <= height + eps
    if max(w, h) <= min(width, height):  # else no square inside the image can hold the box
        assert left <= x + eps and right + eps >= x + w and top <= y + eps and bottom + eps >= y + h


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_box_around_a_pattern_yields_the_pattern(fmt: str) -> None:
    rng = np.random.default_rng(5)
    pattern = smooth_field(rng, 200)
    scene = np.stack([rng.integers(0, 256, (420, 380), dtype=np.uint8)] * 3, axis=-1)
    scene[150:350, 100:300] = pattern[..., None]  # box x=100, y=150, 200x200
    rec = convert_face(encode(scene, fmt), (100, 150, 200, 200), 48, 0.0)
    assert rec["ok"], rec
    got = np.frombuffer(rec["pixels"], np.uint8).reshape(48, 48).astype(float)
    expected = np.asarray(Image.fromarray(pattern).resize((48, 48), Image.Resampling.LANCZOS), dtype=float)
    assert np.abs(got - expected).mean() < (1.0 if fmt == "PNG" else 4.0)
    # the PNG stored is the face, and its sha256 names it
    stored = np.asarray(Image.open(io.BytesIO(rec["png"])))
    assert stored.shape == (48, 48) and (stored == got).all()
    assert rec["sha256"] == hashlib.sha256(rec["png"]).hexdigest()


def test_conversion_antialiases() -> None:
    # a one-pixel checkerboard must come out mid-grey, not as aliasing stripes
    board = ((np.indices((192, 192)).sum(axis=0) % 2) * 255).astype(np.uint8)
    board[:2] = 0  # keep it from being exactly uniform after averaging
    rec = convert_face(encode(np.stack([board] * 3, axis=-1), "PNG"), None, 48, 0.0)
    face = np.frombuffer(rec["pixels"], np.uint8).reshape(48, 48) if rec["ok"] else None
    if face is None:  # averaged to a flat field: exactly what antialiasing should do
        assert rec["reason"] in ("uniform", "near_uniform")
    else:
        assert abs(float(face[4:].mean()) - 127.5) < 8 and float(face[4:].std()) < 8


def test_conversion_records_why_an_image_is_unusable(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    img, box = affectnet_image(rng)
    (tmp_path / "ok.jpg").write_bytes(encode(img))
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0" + rng.bytes(500))
    (tmp_path / "half.jpg").write_bytes(encode(img)[:300])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "flat.png").write_bytes(encode(np.full((100, 100, 3), 90, np.uint8), "PNG"))
    items = [
        (str(tmp_path / "ok.jpg"), box),
        (str(tmp_path / "gone.jpg"), box),
        (str(tmp_path / "bad.jpg"), box),
        (str(tmp_path / "half.jpg"), box),
        (str(tmp_path / "empty.jpg"), box),
        (str(tmp_path / "ok.jpg"), (img.shape[1] - 5, 0, 40, 40)),
        (str(tmp_path / "flat.png"), (10, 10, 50, 50)),
        (str(tmp_path / "ok.jpg"), (2, 2, 10, 10)),
    ]
    reasons = [r["reason"] if not r["ok"] else "ok" for r in convert_faces(items, 48, 0.1)]
    assert reasons == [
        "ok",
        "missing_file",
        "corrupt",
        "corrupt",
        "corrupt",
        "box_outside_image",
        "uniform",
        "too_small",
    ]


# -- plan helpers ----------------------------------------------------------------------------------


@given(n=st.integers(0, 5000), ratios=st.lists(st.integers(0, 100), min_size=3, max_size=3).filter(lambda r: sum(r)))
def test_allocate_is_exact_and_proportional(n: int, ratios: list[int]) -> None:
    parts = allocate(n, ratios)
    assert sum(parts) == n
    for part, r in zip(parts, ratios, strict=True):
        assert abs(part - n * r / sum(ratios)) < 1


def test_option_parsers_reject_bad_values() -> None:
    assert parse_mapping("surprised=surprise, anger=angry") == {"surprised": "surprise", "anger": "angry"}
    assert parse_target("equal") is None and parse_target("400") == 400
    for bad in ("surprise", "a=b=c", "=happy", "a=b,a=c"):
        with pytest.raises(InputError):
            parse_mapping(bad)
    for bad in ("0", "-3", "lots", "1.5"):
        with pytest.raises(InputError, match="target"):
            parse_target(bad)


# -- the stage -------------------------------------------------------------------------------------


def test_equal_target_balances_within_two_points(ws: Workspace, base: dict[str, Path]) -> None:
    before_store = {p for p in ws.store_dir.rglob("*")} if ws.store_dir.exists() else set()
    result = merge_affectnet(ws, params(base))
    assert result.version is not None and result.version.stage == "merge-affectnet"
    info, df = ws.read(result.version.version)
    assert info.parent == "v0000"
    assert all(abs(s - 0.25) <= 0.02 for s in shares(df)), shares(df)
    plan = result.plan
    assert plan.loc["surprise", "need"] == 20 and plan.loc["sad", "need"] == 5
    assert plan.loc["happy", "need"] == 0 and plan.loc["neutral", "need"] == 0
    assert (plan["added"] == plan["need"]).all() and result.added == 25
    # only what the plan needed was converted (a round's overshoot, not the whole source)
    assert plan["examined"].sum() < len(pd.read_csv(base["source"] / "training.csv"))

    new = df[df[Col.SOURCE] == "affectnet"]
    old = df[df[Col.SOURCE] != "affectnet"]
    assert len(new) == 25 and set(new[Col.LABEL]) == {"surprise", "sad"}
    assert (new[Col.LABEL] == new[Col.LABEL_ORIGINAL]).all() and (new[Col.SPLIT] == new[Col.SPLIT_ORIGINAL]).all()
    assert set(new["source_label"]) == {"surprise", "sad"}
    assert new["face_x"].notna().all() and new["face_width"].notna().all()
    for col in ADDED_COLUMNS:
        assert old[col].isna().all()
    for _, row in new.iterrows():
        assert (base["source"] / row["source_path"]).is_file()
        assert row[Col.PATH].startswith("@store/affectnet/")
        stored = ws.resolve_image_path(row[Col.PATH], None)
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == row[Col.SHA256]
        assert Image.open(stored).size == (48, 48)
    pixels, missing = PixelCache(ws, 48).get(new[Col.SHA256].tolist())
    assert not missing and pixels.std() > 0
    # placement: 80/10/10 within each class
    for label, group in new.groupby(Col.LABEL):
        got = [int((group[Col.SPLIT] == s).sum()) for s in ("train", "val", "test")]
        assert got == allocate(len(group), (80, 10, 10)), (label, got)
    # report files
    assert result.chart_path is not None and result.chart_path.read_bytes()[:4] == b"\x89PNG"
    assert result.skipped_path is not None and result.skipped_path.exists()
    assert result.after.loc["surprise", "total"] == 50
    assert result.before.loc["surprise", "total"] == 30
    assert before_store <= {p for p in ws.store_dir.rglob("*")}
    json.dumps(result.to_dict())


def test_target_n_counts_every_skip_and_drops_duplicates(ws: Workspace, base: dict[str, Path]) -> None:
    # 100 per class needs more than the source has, so every candidate is examined
    result = merge_affectnet(ws, params(base, target="100"))
    skipped = result.skipped
    assert skipped["missing_file"] == 2
    assert skipped["box_outside_image"] == 2
    assert skipped["corrupt"] == 1
    assert skipped["expression_none"] == skipped["expression_uncertain"] == skipped["expression_no_face"] == 2
    assert skipped["unmapped_class"] == SOURCE_COUNTS["fear"] + SOURCE_COUNTS["contempt"] + SOURCE_COUNTS["anger"]
    assert skipped["duplicate_of_dataset"] == 1
    assert skipped["duplicate_within_source"] == 1
    listed = pd.read_parquet(result.skipped_path)
    assert len(listed) == sum(skipped.values())
    assert set(listed.columns) >= {"source_path", "source_label", "reason", "detail"}
    planted = listed[listed["reason"] == "duplicate_of_dataset"]
    assert planted["source_label"].tolist() == ["surprise"]
    plan = result.plan
    assert plan.loc["surprise", "added"] == SOURCE_COUNTS["surprise"]  # the planted copy is not added
    assert plan.loc["happy", "added"] == SOURCE_COUNTS["happy"] + 1  # one of the twin pair
    assert plan.loc["sad", "added"] == SOURCE_COUNTS["sad"]
    assert (plan["shortfall"] == plan["need"] - plan["added"]).all() and plan["shortfall"].gt(0).all()
    _, df = ws.read(result.version.version)  # type: ignore[union-attr]
    assert df[Col.IMAGE_ID].is_unique and df[Col.SHA256].notna().all()
    assert any("no more usable images" in n for n in result.notes)


def test_new_faces_are_matched_with_the_lineage_dedup_tolerances(
    ws: Workspace, base: dict[str, Path], tmp_path: Path
) -> None:
    # a re-crop of a dataset image (zoom 1.12, moved): dedup's defaults do not look for re-crops, so
    # only a dataset deduplicated with --max-zoom turns it away, as its own dedup run would have
    _, df = ws.read("v0000")
    original = df[df[Col.LABEL] == "sad"].sort_values(Col.IMAGE_ID).iloc[0]
    face = np.asarray(Image.open(base["dataset"] / original[Col.PATH]).convert("L"))
    source = tmp_path / "source"
    write_official(
        source, {"surprise": 4}, faults=False, seed=5, dataset_copy=plant.crop(face, 1.12, -1.0, 1.5, frac=1.0)
    )
    merge = MergeParams(source=source, target="100", workers=1)

    plain = merge_affectnet(ws, replace(merge, version="v0000"))
    assert plain.matched_as == "dedup's defaults"
    assert "duplicate_of_dataset" not in plain.skipped and plain.plan.loc["surprise", "added"] == 5

    deduped = dedup(ws, DedupParams(version="v0000", max_zoom=0.15))
    assert deduped.version is not None
    merged = merge_affectnet(ws, replace(merge, version=deduped.version.version))
    assert merged.matched_as == f"{deduped.version.version}'s dedup (--max-zoom 0.15)"
    assert merged.skipped["duplicate_of_dataset"] == 1 and merged.plan.loc["surprise", "added"] == 4
    listed = pd.read_parquet(merged.skipped_path)
    turned = listed[listed["reason"] == "duplicate_of_dataset"]
    assert turned["detail"].str.startswith(str(original[Col.IMAGE_ID])).all()
    assert merged.version is not None
    assert merged.version.extra["merge_affectnet"]["matched_as"] == merged.matched_as
    dry = merge_affectnet(ws, replace(merge, version=deduped.version.version, dry_run=True))
    assert dry.matched_as == merged.matched_as


def test_target_fraction_brings_classes_to_a_share_of_the_largest(ws: Workspace, base: dict[str, Path]) -> None:
    result = merge_affectnet(ws, params(base, target_fraction=0.8))
    assert result.plan["target"].eq(40).all()
    assert result.plan.loc["surprise", "added"] == 10 and result.plan.loc["sad", "added"] == 0
    with pytest.raises(InputError, match="either"):
        merge_affectnet(ws, params(base, target="70", target_fraction=0.8))


def test_the_same_seed_gives_the_same_merge(base: dict[str, Path], tmp_path: Path) -> None:
    picked = []
    for i, seed in enumerate((3, 3, 4)):
        shutil.copytree(base["ws"], tmp_path / f"ws{i}")
        ws = Workspace(tmp_path / f"ws{i}")
        result = merge_affectnet(ws, params(base, seed=seed, workers=2 if i == 1 else 1))
        _, df = ws.read(result.version.version)  # type: ignore[union-attr]
        new = df[df[Col.SOURCE] == "affectnet"]
        picked.append(sorted(zip(new[Col.IMAGE_ID], new[Col.SPLIT], new[Col.SHA256], strict=True)))
    assert picked[0] == picked[1]
    assert picked[0] != picked[2]


def test_dry_run_writes_nothing(ws: Workspace, base: dict[str, Path]) -> None:
    before = tree_digest(ws.root)
    result = merge_affectnet(ws, params(base, dry_run=True))
    assert result.version is None and result.dry_run
    assert tree_digest(ws.root) == before
    assert result.plan.loc["surprise", "planned"] == 20 and result.plan.loc["sad", "planned"] == 5
    assert result.after.loc["surprise", "total"] == 50
    assert result.after.loc["surprise", "train"] == result.before.loc["surprise", "train"] + 16


def test_the_source_is_left_byte_for_byte(ws: Workspace, base: dict[str, Path]) -> None:
    before = tree_digest(base["source"])
    merge_affectnet(ws, params(base, target="60"))
    assert tree_digest(base["source"]) == before


def test_train_only_placement_balances_train_and_keeps_val_test_original(ws: Workspace, base: dict[str, Path]) -> None:
    result = merge_affectnet(ws, params(base, splits="train"))
    _, df = ws.read(result.version.version)  # type: ignore[union-attr]
    new = df[df[Col.SOURCE] == "affectnet"]
    assert set(new[Col.SPLIT]) == {"train"}
    train = df[(df[Col.SPLIT] == "train") & (df[Col.STATUS] == "active")][Col.LABEL].value_counts()
    assert train.nunique() == 1  # every class at the largest train class
    for split in ("val", "test"):
        rows = df[df[Col.SPLIT] == split]
        assert (rows[Col.SOURCE] == "original").all()
    assert result.added_by_split == {"train": len(new), "val": 0, "test": 0}


def test_custom_ratios_and_a_second_merge_keep_ids_unique(ws: Workspace, base: dict[str, Path]) -> None:
    first = merge_affectnet(ws, params(base, ratios=(50, 50, 0)))
    _, df = ws.read(first.version.version)  # type: ignore[union-attr]
    new = df[df[Col.SOURCE] == "affectnet"]
    assert set(new[Col.SPLIT]) <= {"train", "val"}
    second = merge_affectnet(ws, params(base, target="60"))
    assert second.parent == first.version.version  # type: ignore[union-attr]
    assert second.skipped.get("already_in_dataset") == first.added
    _, df2 = ws.read(second.version.version)  # type: ignore[union-attr]
    assert df2[Col.IMAGE_ID].is_unique and df2["face_x"].dtype == "Int32"


def test_class_folders_with_splits_and_name_folding(ws: Workspace, tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    src = tmp_path / "affect_folders"
    layout = {"train/Surprised": 15, "val/surprise": 10, "train/Sadness": 6, "train/anger": 4, "train/Contempt": 3}
    for folder, n in layout.items():
        (src / folder).mkdir(parents=True)
        for i in range(n):
            img, _ = affectnet_image(rng)
            (src / folder / f"{i}.jpg").write_bytes(encode(img))
    result = merge_affectnet(ws, MergeParams(source=src, workers=1))
    assert result.layout == "split-folders"
    assert result.mapping == {
        "anger": None,
        "contempt": None,
        "sadness": "sad",
        "surprise": "surprise",
        "surprised": "surprise",
    }
    assert result.plan.loc["surprise", "added"] == 20 and result.plan.loc["sad", "added"] == 5
    _, df = ws.read(result.version.version)  # type: ignore[union-attr]
    new = df[df[Col.SOURCE] == "affectnet"]
    assert set(new["source_label"]) <= {"surprised", "surprise", "sadness"}
    assert new["face_x"].isna().all()
    assert all((src / p).is_file() for p in new["source_path"])
    # --map overrides the folding: contempt counts as sad here
    remapped = merge_affectnet(
        ws, MergeParams(source=src, version="v0000", mapping={"contempt": "sad"}, workers=1, dry_run=True)
    )
    assert remapped.mapping["contempt"] == "sad" and remapped.plan.loc["sad", "available"] == 9


def test_errors_name_the_problem(ws: Workspace, base: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    pd.read_csv(base["source"] / "training.csv").drop(columns=["face_width", "expression"]).to_csv(
        bad / "training.csv", index=False
    )
    with pytest.raises(DatasetError, match="face_width, expression"):
        read_source(bad)
    with pytest.raises(InputError, match="not a class of the dataset"):
        merge_affectnet(ws, params(base, mapping={"surprise": "joy"}, dry_run=True))
    with pytest.raises(InputError, match="not a class of the source"):
        merge_affectnet(ws, params(base, mapping={"ecstatic": "happy"}, dry_run=True))
    with pytest.raises(InputError, match="splits"):
        merge_affectnet(ws, params(base, splits="val"))


# -- the command line ------------------------------------------------------------------------------


def one_line_error(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("error:"), output
    return lines[0]


def test_cli_errors_exit_1_with_one_line(ws: Workspace, base: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "missing_cols"
    bad.mkdir()
    pd.read_csv(base["source"] / "training.csv").drop(columns=["face_x", "expression"]).to_csv(
        bad / "training.csv", index=False
    )
    res = runner.invoke(app, ["merge-affectnet", str(bad), "-w", str(ws.root)], env=ENV)
    assert res.exit_code == 1
    line = one_line_error(res.output)
    assert "face_x, expression" in line and "training.csv" in line

    only_other = tmp_path / "other_classes"
    write_official(only_other, {"fear": 3, "contempt": 2}, faults=False)
    res = runner.invoke(app, ["merge-affectnet", str(only_other), "-w", str(ws.root)], env=ENV)
    assert res.exit_code == 1
    line = one_line_error(res.output)
    assert "none of which is a dataset class" in line and "--map" in line

    for args, expect in (
        (["--target", "most"], "--target"),
        (["--map", "surprise"], "--map"),
        (["--ratios", "80,20"], "--ratios"),
    ):
        res = runner.invoke(app, ["merge-affectnet", str(base["source"]), "-w", str(ws.root), *args], env=ENV)
        assert res.exit_code == 1, res.output
        assert expect in one_line_error(res.output)


def test_cli_dry_run_and_json(ws: Workspace, base: dict[str, Path]) -> None:
    res = runner.invoke(
        app, ["merge-affectnet", str(base["source"]), "-w", str(ws.root), "--dry-run", "--workers", "1"], env=ENV
    )
    assert res.exit_code == 0, res.output
    assert "dry run" in res.output and "would add 25 faces" in res.output
    assert len(ws.versions()) == 1
    res = runner.invoke(
        app,
        [
            "merge-affectnet",
            str(base["source"]),
            "-w",
            str(ws.root),
            "--json",
            "--workers",
            "1",
            "--map",
            "surprised=surprise",
            "--splits",
            "train",
            "--seed",
            "2",
        ],
        env=ENV,
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["version"] == "v0001" and data["splits"] == "train"
    assert data["added"] == data["added_by_split"]["train"] > 0
    assert data["plan"]["surprise"]["added"] == data["plan"]["surprise"]["need"]
    assert data["matched_as"] == "dedup's defaults"
    res = runner.invoke(
        app, ["merge-affectnet", str(base["source"]), "-w", str(ws.root), "--workers", "1", "--target", "55"], env=ENV
    )
    assert res.exit_code == 0, res.output
    assert "merge-affectnet into v0001" in res.output and "Skipped source rows by reason" in res.output
    assert "copies of dataset images looked for with dedup's defaults" in res.output


# -- end to end ------------------------------------------------------------------------------------


def test_export_names_affectnet_files_with_their_prefix(ws: Workspace, base: dict[str, Path], tmp_path: Path) -> None:
    from fercurate.export import ExportParams, export

    result = merge_affectnet(ws, params(base))
    out = tmp_path / "exported"
    export(ws, ExportParams(version=result.version.version, dest=out))  # type: ignore[union-attr]
    files = [p for p in out.rglob("*") if p.is_file()]
    prefixed = [p for p in files if p.name.startswith("affectnet_")]
    assert len(prefixed) == result.added
    assert len(files) == sum(DATASET_COUNTS.values()) + result.added
    assert {p.parent.name for p in prefixed} == {"surprise", "sad"}


def test_demo_affectnet_source_merges(tmp_path: Path) -> None:
    demo = pytest.importorskip("fercurate.demo")
    generated = demo.generate_demo(tmp_path / "demo", demo.DemoParams(n_images=240, n_affectnet=160), workers=2)
    ws = Workspace(tmp_path / "ws")
    scan(ws, ScanParams(dataset=generated.dataset_dir, workers=2))
    result = merge_affectnet(ws, MergeParams(source=generated.affectnet_dir, workers=2))
    assert result.layout == "official"
    assert result.added > 0 and result.plan.loc["surprise", "added"] > 0
    _, df = ws.read(result.version.version)  # type: ignore[union-attr]
    share = shares(df)
    enough = (result.plan["shortfall"] == 0).all()
    if enough:
        assert (share - 1 / len(share)).abs().max() <= 0.02, share
    assert math.isclose(share.sum(), 1.0)
    assert {"expression_none", "expression_uncertain", "expression_no_face", "unmapped_class"} <= set(result.skipped)
