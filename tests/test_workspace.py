from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_tree

from fercurate.errors import WorkspaceError
from fercurate.manifest import Col
from fercurate.scan import ScanParams, scan
from fercurate.workspace import Workspace


@pytest.fixture()
def ws(tmp_path: Path, tree) -> Workspace:
    ws = Workspace(tmp_path / "ws")
    scan(ws, ScanParams(dataset=tree[0]))
    return ws


def test_version_record_describes_the_version(ws: Workspace) -> None:
    info = ws.resolve("v0000")
    assert info.stage == "scan" and info.parent is None
    assert info.params["image_size"] == 48
    assert info.counts["status"]["invalid"] == 6
    assert sum(info.counts["split"].values()) == info.counts["status"]["active"]
    assert len(info.content_hash) == 16 and info.fercurate_version
    assert Path(info.path).is_absolute() and Path(info.path).exists()


def test_resolve_accepts_ids_numbers_latest_and_offsets(ws: Workspace) -> None:
    info, df = ws.read()
    df2 = df.copy()
    df2.loc[0, Col.LABEL] = "sad"
    with ws.lock("test"):
        ws.commit(df2, stage="test", parent=info, params={"x": Path("/a")})
    assert ws.resolve("0").version == "v0000"
    assert ws.resolve("v0001").version == ws.resolve("latest").version == ws.resolve("-0").version == "v0001"
    assert ws.resolve("-1").version == "v0000"
    assert [i.version for i in ws.lineage()] == ["v0000", "v0001"]
    assert ws.resolve("1").params == {"x": "/a"}
    with pytest.raises(WorkspaceError, match="unknown version 'v0009'.*v0000, v0001"):
        ws.resolve("v0009")


def test_empty_workspace_says_to_scan_first(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="run `fercurate scan DATASET` first"):
        Workspace(tmp_path / "nothing").read()


def test_a_live_lock_refuses_a_second_writer(ws: Workspace) -> None:
    with ws.lock("fercurate dedup"):
        with pytest.raises(WorkspaceError, match=r"locked by `fercurate dedup` \(pid"):
            with ws.lock("fercurate split"):
                pass
    with ws.lock("again"):  # released after the block
        pass
    assert not (ws.root / ".lock").exists()


def test_a_lock_left_by_a_killed_process_is_taken_over(ws: Workspace) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    (ws.root / ".lock").write_text(
        json.dumps({"pid": dead.pid, "host": socket.gethostname(), "command": "fercurate scan", "since": 0})
    )
    with ws.lock("fercurate split"):
        assert json.loads((ws.root / ".lock").read_text())["pid"] == os.getpid()


def test_a_kill_mid_commit_leaves_the_workspace_usable(ws: Workspace) -> None:
    # a Parquet file without its record is what a kill between the two writes leaves
    info, df = ws.read()
    orphan = ws.versions_dir / "v0001.parquet"
    orphan.write_bytes(b"half written")
    assert [i.version for i in ws.versions()] == ["v0000"]
    with ws.lock("next"):
        new = ws.commit(df, stage="again", parent=info, params={})
    assert new.version == "v0001" and ws.read("v0001")[1].shape == df.shape


def test_killing_a_scan_leaves_no_version_and_no_lock_blocking(tmp_path: Path) -> None:
    data = tmp_path / "d"
    write_tree(data, splits={"train": 150, "val": 20, "test": 10}, with_bad=False)
    env = {**os.environ, "FERCURATE_WORKSPACE": str(tmp_path / "ws")}
    proc = subprocess.Popen([sys.executable, "-m", "fercurate", "scan", str(data), "--workers", "1"], env=env)
    import time

    deadline = time.time() + 30
    while not (tmp_path / "ws" / ".lock").exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    ws = Workspace(tmp_path / "ws")
    assert all(Path(i.path).exists() for i in ws.versions())  # any version present is complete
    result = scan(ws, ScanParams(dataset=data))  # the stale lock does not block
    assert result.rows == 720
