from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from fercurate.errors import InputError
from fercurate.export import ExportParams, export
from fercurate.history import diff, log
from fercurate.manifest import Col
from fercurate.scan import ScanParams, scan
from fercurate.workspace import Workspace


@pytest.fixture(scope="module")
def ws(tree, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    ws = Workspace(tmp_path_factory.mktemp("ws"))
    scan(ws, ScanParams(dataset=tree[0]))
    info, df = ws.read()
    df = df.copy()
    act = df.index[df[Col.STATUS] == "active"]
    df.loc[act[:3], Col.LABEL] = "sad"  # relabel 3 rows
    df.loc[act[3:5], Col.STATUS] = "removed"
    df.loc[act[3:5], Col.REASON] = "duplicate_of:x"
    df.loc[act[5:9], Col.SPLIT] = "test"
    extra = df.iloc[:1].copy()
    extra[Col.IMAGE_ID] = "f" * 16
    extra[Col.SOURCE] = "affectnet"
    extra[Col.STATUS] = "active"
    extra[Col.PATH] = df.loc[act[10], Col.PATH]
    extra[Col.SPLIT] = "train"
    extra[Col.LABEL] = df.loc[act[10], Col.LABEL]
    df = pd.concat([df, extra], ignore_index=True)
    with ws.lock("test"):
        ws.commit(df, stage="edit", parent=info, params={"why": "test"})
    return ws


def test_log_lists_versions_with_required_fields(ws: Workspace) -> None:
    entries = log(ws)
    assert [e["version"] for e in entries] == ["v0000", "v0001"]
    for key in ("version", "stage", "parent", "path", "created", "rows"):
        assert key in entries[1]
    assert entries[1]["parent"] == "v0000" and entries[1]["stage"] == "edit"
    assert Path(entries[1]["path"]).is_absolute()
    assert entries[1]["rows"] == entries[0]["rows"] + 1


def test_diff_counts_every_kind_of_change(ws: Workspace) -> None:
    d = diff(ws, "v0000", "v0001")
    assert d.added == 1 and d.removed == 0
    assert d.status_changes == {"active->removed": 2}
    _, before = ws.read("v0000")
    relabelled = before[before[Col.STATUS] == "active"].head(3)
    expected = relabelled[relabelled[Col.LABEL] != "sad"][Col.LABEL].value_counts()
    assert d.relabels == {f"{label}->sad": int(n) for label, n in expected.items()}
    assert sum(n for k, n in d.split_moves.items() if k.endswith("->test")) >= 1
    assert d.before.loc[:, "total"].sum() - 2 + 1 == d.after.loc[:, "total"].sum()
    as_json = d.to_dict()
    assert as_json["class_by_split_after"]["sad"]["total"] == int(d.after.loc["sad", "total"])


def test_export_folders_layout_and_prefix(ws: Workspace, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    result = export(ws, ExportParams(version="latest", dest=dest))
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    _, df = ws.read()
    assert len(files) == result.files == int((df[Col.STATUS] == "active").sum())
    assert all(f.split("/")[0] in {"train", "val", "test"} for f in files)
    assert sum(1 for f in files if Path(f).name.startswith("affectnet_")) == 1
    with pytest.raises(InputError, match="not empty; pass overwrite"):
        export(ws, ExportParams(version="latest", dest=dest))
    export(ws, ExportParams(version="v0000", dest=dest, overwrite=True))
    assert not any(p.name.startswith("affectnet_") for p in dest.rglob("*"))


def test_export_links(ws: Workspace, tmp_path: Path) -> None:
    export(ws, ExportParams(version="v0000", dest=tmp_path / "h", mode="hardlink"))
    export(ws, ExportParams(version="v0000", dest=tmp_path / "s", mode="symlink"))
    hard = next(p for p in (tmp_path / "h").rglob("*.jpg"))
    assert os.stat(hard).st_nlink >= 2
    assert all(p.is_symlink() for p in (tmp_path / "s").rglob("*.jpg"))


def test_export_csv_is_fer2013_style(ws: Workspace, tmp_path: Path) -> None:
    export(ws, ExportParams(version="v0000", dest=tmp_path / "c", format="csv"))
    table = pd.read_csv(tmp_path / "c" / "fer2013.csv")
    assert list(table.columns) == ["emotion", "pixels", "Usage"]
    assert set(table["Usage"]) <= {"Training", "PublicTest", "PrivateTest"}
    assert all(len(p.split()) == 48 * 48 for p in table["pixels"])
    assert set(table["emotion"]) <= {3, 4, 5, 6}


def test_export_rejects_bad_options(ws: Workspace, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="mode 'move'"):
        export(ws, ExportParams(version="latest", dest=tmp_path / "x", mode="move"))
    with pytest.raises(InputError, match="format"):
        export(ws, ExportParams(version="latest", dest=tmp_path / "x", format="zip"))
    assert not (tmp_path / "x").exists()


def test_export_csv_writes_the_file_named(ws: Workspace, tmp_path: Path) -> None:
    dest = tmp_path / "cleaned.csv"
    result = export(ws, ExportParams(version="v0000", dest=dest, format="csv"))
    assert dest.is_file() and result.dest == dest  # the file itself, not a folder called cleaned.csv
    assert len(pd.read_csv(dest)) == result.files
    assert [p.name for p in tmp_path.iterdir()] == ["cleaned.csv"]  # no temp file left beside it
    with pytest.raises(InputError, match="exists; pass overwrite"):
        export(ws, ExportParams(version="v0000", dest=dest, format="csv"))
    export(ws, ExportParams(version="v0001", dest=dest, format="csv", overwrite=True))
    assert (
        len(pd.read_csv(dest))
        == export(ws, ExportParams(version="v0001", dest=tmp_path / "again.csv", format="csv")).files
    )
    # a folder DEST (new or existing and empty) gets fer2013.csv inside
    folder = tmp_path / "folder"
    folder.mkdir()
    assert export(ws, ExportParams(version="v0000", dest=folder, format="csv")).dest == folder / "fer2013.csv"
    assert (folder / "fer2013.csv").is_file()


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_exports_and_reports_get_umask_modes(ws: Workspace, tmp_path: Path, umask: int) -> None:
    from fercurate.manifest import atomic_write_text

    old = os.umask(umask)
    try:
        export(ws, ExportParams(version="v0000", dest=tmp_path / "out"))
        export(ws, ExportParams(version="v0000", dest=tmp_path / "c.csv", format="csv"))
        atomic_write_text(tmp_path / "reports" / "report.md", "# report\n")
    finally:
        os.umask(old)
    dirs = [tmp_path / "out", *(p for p in (tmp_path / "out").rglob("*") if p.is_dir())]
    assert {os.stat(d).st_mode & 0o777 for d in dirs} == {0o777 & ~umask}  # 0755 under 022, not 0700
    for written in (tmp_path / "c.csv", tmp_path / "reports" / "report.md"):
        assert os.stat(written).st_mode & 0o777 == 0o666 & ~umask  # 0644 under 022, not 0600


def test_log_shows_each_lineage(tree, tmp_path: Path) -> None:
    fresh = Workspace(tmp_path / "ws")
    scan(fresh, ScanParams(dataset=tree[0]))
    info, df = fresh.read()
    with fresh.lock("test"):
        fresh.commit(df, stage="edit", parent=info, params={})
    scan(fresh, ScanParams(dataset=tree[0], new_lineage=True))
    entries = log(fresh)
    assert [(e["version"], e["parent"], e["lineage"]) for e in entries] == [
        ("v0000", None, "v0000"),
        ("v0001", "v0000", "v0000"),
        ("v0002", None, "v0002"),
    ]
