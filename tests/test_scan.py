from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import blob_image, jpeg_bytes, write_tree

from fercurate.errors import DatasetError, InputError
from fercurate.manifest import Col
from fercurate.scan import ScanParams, normalise_split, scan
from fercurate.workspace import PixelCache, Workspace, load_pixels


@pytest.fixture(scope="module")
def scanned(tree: tuple[Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory):
    root, expected = tree
    ws = Workspace(tmp_path_factory.mktemp("ws"))
    result = scan(ws, ScanParams(dataset=root))
    info, df = ws.read()
    return ws, result, df, expected


def test_every_file_becomes_a_row(scanned, tree) -> None:
    root, _ = tree
    ws, result, df, expected = scanned
    files = [p for p in root.rglob("*") if p.is_file()]
    assert len(df) == len(files) == result.rows
    assert result.version.version == "v0000"
    assert set(df[Col.SPLIT]) == {"train", "val", "test"}  # "validation" folder normalised
    assert df[Col.IMAGE_ID].is_unique


@pytest.mark.parametrize(
    "name", ["empty.jpg", "truncated.jpg", "text.jpg", "uniform.png", "near_uniform.png", "tiny.png"]
)
def test_bad_files_are_invalid_with_reason(scanned, name: str) -> None:
    _, _, df, expected = scanned
    path = next(p for p in expected if p.endswith(name))
    row = df[df[Col.PATH] == path].iloc[0]
    assert row[Col.STATUS] == "invalid"
    assert row[Col.REASON].startswith(expected[path])


def test_other_sizes_and_modes_are_kept(scanned) -> None:
    _, _, df, _ = scanned
    rgb = df[df[Col.PATH].str.endswith("rgb.jpg")].iloc[0]
    assert rgb[Col.STATUS] == "active" and rgb[Col.MODE] == "RGB"
    big = df[df[Col.PATH].str.endswith("big64.png")].iloc[0]
    assert big[Col.STATUS] == "active" and (big[Col.WIDTH], big[Col.HEIGHT]) == (64, 64)


def test_good_rows_are_active_and_labelled_by_folder(scanned) -> None:
    _, _, df, expected = scanned
    good = df[~df[Col.PATH].isin(expected)]
    assert (good[Col.STATUS] == "active").all()
    assert (good[Col.LABEL] == good[Col.PATH].str.split("/").str[1]).all()
    assert (good[Col.LABEL] == good[Col.LABEL_ORIGINAL]).all()
    assert (good[Col.SOURCE] == "original").all()


def test_pixels_are_cached_and_match_the_files(scanned, tree) -> None:
    root, _ = tree
    ws, _, df, _ = scanned
    info = ws.resolve()
    rows = df[df[Col.STATUS] == "active"].head(5)
    cached, missing = PixelCache(ws, 48).get(rows[Col.SHA256].tolist())
    assert missing == []
    from PIL import Image

    first = np.asarray(Image.open(root / rows[Col.PATH].iloc[0]).convert("L"))
    assert np.array_equal(cached[0], first)
    assert np.array_equal(load_pixels(ws, info, rows), cached)


def test_sha256_is_of_the_file_bytes(scanned, tree) -> None:
    import hashlib

    root, _ = tree
    _, _, df, _ = scanned
    row = df.iloc[3]
    assert row[Col.SHA256] == hashlib.sha256((root / row[Col.PATH]).read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "name, split",
    [
        ("Training", "train"),
        ("VALID", "val"),
        ("dev", "val"),
        ("PublicTest", "val"),
        ("PrivateTest", "test"),
        ("testing", "test"),
        ("happy", None),
    ],
)
def test_split_names_normalise(name: str, split: str | None) -> None:
    assert normalise_split(name) == split


def test_class_folders_without_splits_go_to_train(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for cls in ("Happiness", "sadness"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "data" / cls / f"{i}.jpg").write_bytes(jpeg_bytes(blob_image(rng, i)))
    result = scan(Workspace(tmp_path / "ws"), ScanParams(dataset=tmp_path / "data"))
    assert result.layout == "classes"
    assert result.by_split == {"train": 6}
    assert result.by_label == {"happy": 3, "sad": 3}
    assert any("fercurate split" in n for n in result.notes)


def test_wrapper_folder_is_descended(tmp_path: Path) -> None:
    write_tree(tmp_path / "zip" / "images", splits={"train": 2, "test": 1}, with_bad=False)
    result = scan(Workspace(tmp_path / "ws"), ScanParams(dataset=tmp_path / "zip"))
    assert result.layout == "splits" and result.rows == 12


def test_unknown_class_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    write_tree(tmp_path / "d", splits={"train": 1}, with_bad=False)
    (tmp_path / "d" / "train" / "happpy").mkdir()
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(DatasetError, match=r"'happpy' in train/ is not one of: .*classes.*ignore happpy"):
        scan(ws, ScanParams(dataset=tmp_path / "d"))
    assert ws.versions() == []  # nothing half-written
    result = scan(ws, ScanParams(dataset=tmp_path / "d", ignore=("happpy",)))
    assert result.rows == 4


def test_classes_option_restricts_and_admits(tmp_path: Path) -> None:
    write_tree(tmp_path / "d", splits={"train": 1}, classes=("happy", "sad", "pain"), with_bad=False)
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(DatasetError, match="pain"):
        scan(ws, ScanParams(dataset=tmp_path / "d"))
    result = scan(ws, ScanParams(dataset=tmp_path / "d", classes=("happy", "sad", "pain")))
    assert set(result.by_label) == {"happy", "sad", "pain"}


def test_stray_folder_beside_splits_is_an_error(tmp_path: Path) -> None:
    write_tree(tmp_path / "d", splits={"train": 1}, with_bad=False)
    (tmp_path / "d" / "extras").mkdir()
    with pytest.raises(DatasetError, match="ignore extras"):
        scan(Workspace(tmp_path / "ws"), ScanParams(dataset=tmp_path / "d"))


def test_missing_dataset_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        scan(Workspace(tmp_path / "ws"), ScanParams(dataset=tmp_path / "nope"))


def fer2013_csv(path: Path, n: int = 14) -> list[int]:
    rng = np.random.default_rng(3)
    codes = [i % 7 for i in range(n)]
    usages = ["Training"] * (n - 4) + ["PublicTest", "PublicTest", "PrivateTest", "PrivateTest"]
    pixels = [" ".join(map(str, blob_image(rng, c).ravel())) for c in codes]
    pixels[1] = "1 2 3"  # wrong length
    pixels[2] = " ".join(["77"] * 2304)  # uniform
    pd.DataFrame({"emotion": codes, "pixels": pixels, "Usage": usages}).to_csv(path, index=False)
    return codes


def test_fer2013_csv_becomes_stored_images(tmp_path: Path) -> None:
    csv = tmp_path / "fer2013.csv"
    fer2013_csv(csv)
    ws = Workspace(tmp_path / "ws")
    result = scan(ws, ScanParams(dataset=csv))
    info, df = ws.read()
    assert result.layout == "csv" and len(df) == 14
    assert df[Col.LABEL].tolist()[:7] == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    assert df[Col.SPLIT].tolist()[-4:] == ["val", "val", "test", "test"]
    assert df.loc[1, Col.STATUS] == "invalid" and df.loc[1, Col.REASON].startswith("bad_pixels")
    assert df.loc[2, Col.REASON] == "uniform"
    stored = ws.resolve_image_path(df.loc[0, Col.PATH], info.dataset_root)
    assert df.loc[0, Col.PATH].startswith("@store/") and stored.exists()
    from PIL import Image

    assert Image.open(stored).size == (48, 48)


def test_csv_classes_filter_and_bad_code(tmp_path: Path) -> None:
    csv = tmp_path / "fer.csv"
    fer2013_csv(csv)
    result = scan(Workspace(tmp_path / "ws"), ScanParams(dataset=csv, classes=("happy", "sad", "surprise", "neutral")))
    assert set(result.by_label) <= {"happy", "sad", "surprise", "neutral"}
    assert any("skipped" in n for n in result.notes)
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"emotion": [9], "pixels": ["1 2"], "Usage": ["Training"]}).to_csv(bad, index=False)
    with pytest.raises(DatasetError, match="emotion '9' is not a code 0-6"):
        scan(Workspace(tmp_path / "ws2"), ScanParams(dataset=bad))
    cols = tmp_path / "cols.csv"
    pd.DataFrame({"label": [1], "pix": ["1 2"]}).to_csv(cols, index=False)
    with pytest.raises(DatasetError, match="lacks column"):
        scan(Workspace(tmp_path / "ws3"), ScanParams(dataset=cols))


def test_scanning_into_a_workspace_with_versions_needs_new_lineage(tmp_path: Path, tree) -> None:
    root, _ = tree
    ws = Workspace(tmp_path / "ws")
    scan(ws, ScanParams(dataset=root))
    with pytest.raises(InputError, match="pass new_lineage") as caught:
        scan(ws, ScanParams(dataset=root))
    assert "\n" not in str(caught.value)
    assert [v.version for v in ws.versions()] == ["v0000"]  # nothing written
    second = scan(ws, ScanParams(dataset=root, new_lineage=True))
    # a second root, not a child of the first: no later command mistakes it for a step of the first
    assert second.version.version == "v0001" and second.version.parent is None
    assert ws.versions()[0].content_hash == ws.versions()[1].content_hash
    assert [v.version for v in ws.lineage("latest")] == ["v0001"]


def _all_invalid_tree(root: Path) -> None:
    folder = root / "train" / "happy"
    folder.mkdir(parents=True)
    for k in range(5):
        (folder / f"{k}.jpg").write_bytes(b"not an image at all\n" * 4)
    for k in range(2):
        (folder / f"e{k}.jpg").write_bytes(b"")


def test_a_scan_where_every_file_is_invalid_stops_and_writes_nothing(tmp_path: Path) -> None:
    _all_invalid_tree(tmp_path / "d")
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(DatasetError) as caught:
        scan(ws, ScanParams(dataset=tmp_path / "d"))
    message = str(caught.value)
    assert "all 7 files" in message and "not_an_image 5" in message and "empty_file 2" in message
    assert message.index("not_an_image") < message.index("empty_file")  # commonest first
    assert not ws.root.exists()  # the workspace this scan would have created is not left behind


def test_a_scan_where_every_file_is_invalid_keeps_an_existing_workspace(tmp_path: Path, tree) -> None:
    _all_invalid_tree(tmp_path / "d")
    ws = Workspace(tmp_path / "ws")
    scan(ws, ScanParams(dataset=tree[0]))
    with pytest.raises(DatasetError, match="all 7 files"):
        scan(ws, ScanParams(dataset=tmp_path / "d", new_lineage=True))
    assert [v.version for v in ws.versions()] == ["v0000"]


def test_source_images_are_not_modified(tmp_path: Path) -> None:
    src = tmp_path / "d"
    write_tree(src, splits={"train": 2, "val": 1})
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    scan(Workspace(tmp_path / "ws"), ScanParams(dataset=src))
    after = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    assert before == after
    shutil.rmtree(tmp_path / "ws")


def test_discovery_skips_hidden_and_littered_files_in_path_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    data = tmp_path / "d"
    happy = data / "train" / "happy"
    wanted = ["X.jpg", "b.jpg", "sub/s.jpg", "x/y.jpg", "x-1.jpg"]  # path order: "x/y" before "x-1"
    litter = [".DS_Store", "Thumbs.db", ".hid/h.jpg", "__MACOSX/m.jpg", "sub/.ipynb_checkpoints/c.jpg", "sub/.h.jpg"]
    for name in wanted + litter:
        (happy / name).parent.mkdir(parents=True, exist_ok=True)
        (happy / name).write_bytes(jpeg_bytes(blob_image(rng, 0)))
    (data / "train" / "sad").mkdir()
    (data / "train" / "sad" / "1.jpg").write_bytes(jpeg_bytes(blob_image(rng, 2)))
    (data / "train" / "stray.jpg").write_bytes(jpeg_bytes(blob_image(rng, 1)))
    (data / "train" / ".hidden.jpg").write_bytes(b"")
    (data / ".git").mkdir()  # a hidden folder beside the splits is not a stray folder
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "o.jpg").write_bytes(jpeg_bytes(blob_image(rng, 3)))
    (happy / "linked").symlink_to(outside)  # a symlinked sub-folder is not followed
    ws = Workspace(tmp_path / "ws")
    result = scan(ws, ScanParams(dataset=data))
    _, df = ws.read()
    assert df[Col.PATH].tolist() == [f"train/happy/{n}" for n in wanted] + ["train/sad/1.jpg"]
    assert result.notes == ["1 file(s) directly in train/ have no class folder: skipped"]
    assert (df[Col.STATUS] == "active").all()


def test_symlink_loops_and_dangling_links_are_invalid_rows(tmp_path: Path) -> None:
    root = tmp_path / "d"
    write_tree(root, splits={"train": 4}, with_bad=False)
    happy = root / "train" / "happy"
    (happy / "a.jpg").symlink_to("b.jpg")
    (happy / "b.jpg").symlink_to("a.jpg")
    (happy / "self.jpg").symlink_to("self.jpg")
    (happy / "dangling.jpg").symlink_to("gone.jpg")
    (happy / "linked.jpg").symlink_to(sorted(happy.glob("*.jpg"))[0].name)
    result = scan(Workspace(tmp_path / "ws"), ScanParams(dataset=root))
    _, df = Workspace(tmp_path / "ws").read()
    reasons = dict(zip(df[Col.PATH], df[Col.REASON], strict=True))
    for name in ("a.jpg", "b.jpg", "self.jpg"):
        assert reasons[f"train/happy/{name}"].startswith("symlink_loop"), name
    assert reasons["train/happy/dangling.jpg"].startswith("dangling_symlink")
    assert result.invalid_reasons == {"symlink_loop": 3, "dangling_symlink": 1}
    assert set(df.loc[df[Col.REASON].isna(), Col.STATUS]) == {"active"}  # the link to a real file is a row


def test_images_over_the_pixel_cap_are_invalid_before_decoding(tmp_path: Path) -> None:
    root = tmp_path / "d"
    write_tree(root, splits={"train": 3}, with_bad=False)
    big = np.tile(blob_image(np.random.default_rng(1), 0), (3, 3))  # 144 x 144
    (root / "train" / "sad" / "big.jpg").write_bytes(jpeg_bytes(big))
    ws = Workspace(tmp_path / "ws")
    result = scan(ws, ScanParams(dataset=root, max_pixels=100 * 100))
    info, df = ws.read()
    row = df[df[Col.PATH] == "train/sad/big.jpg"].iloc[0]
    assert row[Col.STATUS] == "invalid" and row[Col.REASON].startswith("too_large_144x144")
    assert result.invalid_reasons == {"too_large": 1} and info.params["max_pixels"] == 100 * 100
    with pytest.raises(InputError, match="max_pixels 0 is below"):
        scan(ws, ScanParams(dataset=root, max_pixels=0))


def test_a_scan_streams_pixels_to_cache_chunks_with_the_same_result(
    tree: tuple[Path, dict[str, str]], scanned, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fercurate.scan as scan_module
    from fercurate.images import load_gray_files

    root, _ = tree
    ws0, _, df0, _ = scanned
    monkeypatch.setattr(scan_module, "FILES_PER_BATCH", 4)
    monkeypatch.setattr(scan_module, "CACHE_CHUNK_ROWS", 5)  # a chunk every two batches or so
    ws = Workspace(tmp_path / "ws")
    scan(ws, ScanParams(dataset=root, workers=2))
    info, df = ws.read()
    assert info.content_hash == ws0.versions()[0].content_hash  # the same manifest as one big chunk
    pd.testing.assert_frame_equal(df, df0)
    folder = ws.cache_dir / "pixels-48"
    decoded = df[df[Col.STATUS] != "invalid"]
    assert len(list(folder.glob("*.arrow"))) >= len(decoded) // 8 > 1
    got, missing = PixelCache(ws, 48).get(decoded[Col.SHA256].tolist())
    assert missing == []
    assert np.array_equal(got, load_gray_files([str(root / p) for p in decoded[Col.PATH]]))
