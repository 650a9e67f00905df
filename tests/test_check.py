"""Damaged workspaces: ``fercurate check``, and ``log`` and the other commands around damaged files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import write_tree
from typer.testing import CliRunner

from fercurate.check import check
from fercurate.cli import app
from fercurate.history import log
from fercurate.scan import ScanParams, scan
from fercurate.workspace import PixelCache, Workspace

runner = CliRunner()


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace of three versions (scan, then two edits) with a pixel cache, never changed."""
    data = tmp_path_factory.mktemp("data")
    write_tree(data, splits={"train": 4, "val": 2}, with_bad=False)
    ws = Workspace(tmp_path_factory.mktemp("clean") / "ws")
    scan(ws, ScanParams(dataset=data, workers=1))
    info, df = ws.read()
    with ws.lock("test"):
        v1 = ws.commit(df.iloc[:-1], stage="edit", parent=info, params={})
        ws.commit(df.iloc[:-2], stage="edit", parent=v1, params={})
    return ws.root


@pytest.fixture
def ws(clean: Path, tmp_path: Path) -> Workspace:
    shutil.copytree(clean, tmp_path / "ws")
    return Workspace(tmp_path / "ws")


def _cli(ws: Workspace, *args: str) -> tuple[int, str]:
    res = runner.invoke(app, list(args), env={"FERCURATE_WORKSPACE": str(ws.root), "COLUMNS": "200"})
    return res.exit_code, res.output


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_a_sound_workspace_checks_clean(ws: Workspace) -> None:
    result = check(ws)
    assert not result.damaged
    assert [f.name for f in result.findings if f.kind == "version"] == ["v0000", "v0001", "v0002"]
    assert any(f.kind == "cache" and f.name.startswith("cache/pixels-48/") for f in result.findings)
    code, text = _cli(ws, "check")
    assert code == 0 and "0 damaged" in text


def test_check_names_every_damaged_version_report_and_cache_entry(ws: Workspace) -> None:
    _truncate(ws.versions_dir / "v0001.json")
    _truncate(ws.versions_dir / "v0002.parquet")
    chunk = sorted(PixelCache(ws).dir.glob("*.arrow"))[0]
    _truncate(chunk)
    with pytest.raises(RuntimeError), ws.report("v0000"):
        raise RuntimeError("killed")
    damaged = {(f.kind, f.name): f.problem for f in check(ws).damaged}
    assert set(damaged) == {
        ("version", "v0001"),
        ("version", "v0002"),
        ("report", "reports/v0000"),
        ("cache", f"cache/pixels-48/{chunk.name}"),
    }
    assert "v0001.json" in str(damaged["version", "v0001"]) and "v0002.parquet" in str(damaged["version", "v0002"])
    assert [e["report_incomplete"] for e in log(ws)] == [True, False, False]
    assert "(report incomplete)" in _cli(ws, "log")[1]
    code, text = _cli(ws, "check", "--json")
    assert code == 1 and json.loads(text)["damaged"] == 4
    code, text = _cli(ws, "check")
    assert code == 1 and "4 damaged" in text and "Traceback" not in text


def test_records_without_a_hash_are_unverified_not_damaged(ws: Workspace) -> None:
    record = ws.versions_dir / "v0000.json"
    data = json.loads(record.read_text())
    del data["file_sha256"]
    record.write_text(json.dumps(data))
    states = {f.name: f.state for f in check(ws).findings if f.kind == "version"}
    assert states == {"v0000": "unverified", "v0001": "ok", "v0002": "ok"}
    assert _cli(ws, "check")[0] == 0


def test_log_marks_a_truncated_record_and_lists_the_rest(ws: Workspace) -> None:
    _truncate(ws.versions_dir / "v0001.json")
    entries = log(ws)
    assert [(e["version"], e["state"]) for e in entries] == [("v0000", "ok"), ("v0001", "damaged"), ("v0002", "ok")]
    code, text = _cli(ws, "log")
    assert code == 0 and "Traceback" not in text
    assert [line for line in text.splitlines() if line.startswith("v0001 damaged:")]
    # commands that do not need v0001 work; one that needs it gets one line
    assert _cli(ws, "diff", "v0000", "v0002")[0] == 0
    code, text = _cli(ws, "diff", "v0001", "v0002")
    assert code == 1 and "version v0001 is damaged" in text and len(text.strip().splitlines()) <= 3


def test_log_marks_a_truncated_parquet_file(ws: Workspace) -> None:
    _truncate(ws.versions_dir / "v0002.parquet")
    entries = {e["version"]: e for e in log(ws)}
    assert entries["v0002"]["state"] == "damaged" and "v0002.parquet" in entries["v0002"]["problem"]
    assert entries["v0001"]["state"] == "ok"
    code, text = _cli(ws, "log")
    assert code == 0 and "v0002 damaged:" in text
    code, text = _cli(ws, "export", "v0002", str(ws.root.parent / "out"))
    assert code == 1 and "v0002.parquet" in text


def test_a_cache_value_array_file_and_checkpoint_are_checked(ws: Workspace) -> None:
    folder = ws.cache_dir / "relabel-oof" / "k"
    folder.mkdir(parents=True)
    with open(folder / "fold-0.npy", "wb") as fh:
        np.save(fh, np.ones((100, 4)))
    _truncate(folder / "fold-0.npy")
    (ws.cache_dir / "models").mkdir()
    (ws.cache_dir / "models" / "m.pt").write_bytes(b"PK\x03\x04 not really a zip")
    names = {f.name for f in check(ws).damaged}
    assert names == {"cache/relabel-oof/k/fold-0.npy", "cache/models/m.pt"}
