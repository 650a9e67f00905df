from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_tree
from PIL import Image

from fercurate.errors import WorkspaceError
from fercurate.manifest import Col
from fercurate.scan import ScanParams, scan
from fercurate.workspace import PixelCache, Workspace, load_pixels, mapped_array, release_pages


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
    assert (ws.root / ".lock").read_text() == ""  # the file stays (never deleted), naming nobody


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
    lock = tmp_path / "ws" / ".lock"
    while not (lock.exists() and str(proc.pid) in lock.read_text()) and time.time() < deadline:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    ws = Workspace(tmp_path / "ws")
    assert all(Path(i.path).exists() for i in ws.versions())  # any version present is complete
    result = scan(ws, ScanParams(dataset=data))  # the stale lock does not block
    assert result.rows == 720


def test_the_next_lock_holder_removes_temp_files_killed_writers_left(ws: Workspace) -> None:
    litter = [ws.versions_dir / ".v0001.parquet.abc123.tmp", ws.versions_dir / ".v0001.json.x9.tmp"]
    for path in litter:
        path.write_bytes(b"half")
    keep = ws.versions_dir / "notes.txt"
    keep.write_text("mine")
    assert all(p.exists() for p in litter)  # reading never deletes: a live writer may own them
    ws.read()
    assert all(p.exists() for p in litter)
    with ws.lock("fercurate split"):
        assert not any(p.exists() for p in litter)
    assert keep.exists() and [i.version for i in ws.versions()] == ["v0000"]


def test_a_parquet_file_that_is_not_the_recorded_one_is_refused(ws: Workspace) -> None:
    info, df = ws.read()
    assert info.file_sha256 is not None and len(info.file_sha256) == 64
    with ws.lock("t"):
        other = ws.commit(df.iloc[:5], stage="t", parent=info, params={})
    # what two unlocked writers left: v0001's record next to another commit's Parquet file
    shutil.copyfile(info.path, other.path)
    with pytest.raises(WorkspaceError, match=r"v0001\.parquet .* is not the file its record .*v0001\.json") as err:
        ws.read("v0001")
    assert "\n" not in str(err.value)
    assert ws.verify(ws.resolve("v0001")) is not None and ws.verify(ws.resolve("v0000")) is None


def test_records_without_a_file_hash_stay_readable(ws: Workspace) -> None:
    record = ws.versions_dir / "v0000.json"
    data = json.loads(record.read_text())
    del data["file_sha256"]  # as fercurate wrote it before recording the hash
    record.write_text(json.dumps(data))
    info, df = ws.read()
    assert info.file_sha256 is None and len(df) == info.rows and ws.verify(info) is None


def test_a_truncated_record_is_reported_and_the_other_versions_work(ws: Workspace) -> None:
    info, df = ws.read()
    with ws.lock("t"):
        ws.commit(df, stage="a", parent=info, params={})
        v2 = ws.commit(df, stage="b", parent=ws.resolve("v0001"), params={})
    record = ws.versions_dir / "v0001.json"
    record.write_text(record.read_text()[: len(record.read_text()) // 2])
    assert [i.version for i in ws.versions()] == ["v0000", "v0002"]
    [bad] = ws.damaged()
    assert bad.version == "v0001" and "not a readable version record" in bad.problem
    assert ws.read("v0002")[0] == v2 and ws.read()[0] == v2  # commands that do not need v0001 work
    with pytest.raises(WorkspaceError, match=r"version v0001 is damaged: .*v0001\.json") as err:
        ws.read("v0001")
    assert "\n" not in str(err.value)
    with ws.lock("t"):  # the damaged version is never overwritten
        assert ws.commit(df, stage="c", parent=v2, params={}).version == "v0003"
    # a damaged newest record is not silently replaced by an older version as "latest"
    newest = ws.versions_dir / "v0003.json"
    newest.write_text("{")
    with pytest.raises(WorkspaceError, match="version v0003 is damaged"):
        ws.read()


def test_a_report_is_marked_incomplete_until_written(ws: Workspace) -> None:
    with pytest.raises(RuntimeError), ws.report("v0000") as folder:
        (folder / "pairs.parquet").write_bytes(b"part")
        assert ws.report_incomplete("v0000")
        raise RuntimeError("killed mid-report")
    assert ws.report_incomplete("v0000")  # the half report says so
    with ws.report("v0000") as folder:
        (folder / "pairs.parquet").write_bytes(b"all")
    assert not ws.report_incomplete("v0000") and (ws.reports_dir / "v0000" / "pairs.parquet").exists()


# -- sha256-keyed caches ---------------------------------------------------------------------------
def _pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8), dtype=np.uint8)


def _chunks(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.arrow"))


def _read(chunk: Path) -> pa.Table:
    with pa.memory_map(str(chunk)) as source:
        return pa.ipc.open_file(source).read_all()


def test_pixel_cache_round_trip_in_the_fixed_size_format(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    pixels = _pixels(5)
    PixelCache(ws, 8).add([f"s{i}" for i in range(5)], pixels)
    (chunk,) = _chunks(ws.cache_dir / "pixels-8")
    assert _read(chunk).schema.field("pixels").type == pa.binary(64)
    assert chunk.stat().st_size > pixels.nbytes  # uncompressed: read back in place
    got, missing = PixelCache(ws, 8).get(["s3", "nope", "s0", "s3"])  # a fresh instance reads the chunk
    assert missing == [1]
    assert np.array_equal(got[[0, 2, 3]], pixels[[3, 0, 3]]) and not got[1].any()
    got[0] = 0  # the caller owns what get returns
    assert np.array_equal(PixelCache(ws, 8).get(["s3"])[0][0], pixels[3])


def test_pixel_cache_reads_chunks_of_the_old_binary_format(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    old, new = _pixels(3, seed=1), _pixels(2, seed=2)
    folder = ws.cache_dir / "pixels-8"
    folder.mkdir(parents=True)
    # what PixelCache.add wrote before the fixed-size format: plain binary values, default options
    table = pa.table({"sha256": ["a", "b", "c"], "pixels": [p.tobytes() for p in old]})
    pq.write_table(table, folder / "1-1.parquet")
    cache = PixelCache(ws, 8)
    cache.add(["c", "d", "e"], np.concatenate([old[2:], new]))  # "c" is cached already
    expected = np.stack([new[1], old[0], old[2], new[0], old[1]])
    for reader in (cache, PixelCache(ws, 8)):  # what it read and added, and a fresh read of both chunks
        got, missing = reader.get(["e", "a", "c", "d", "b"])
        assert missing == [] and np.array_equal(got, expected)
    assert _read(_chunks(folder)[-1]).column("sha256").to_pylist() == ["d", "e"]


def test_cache_stores_each_sha_once(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    pixels = _pixels(6)
    cache = PixelCache(ws, 8)
    # the same file twice in one batch and across batches (exact duplicate files): the first is kept
    cache.add_batches([(["a", "b", "a"], pixels[:3]), (["c", "b"], pixels[3:5])])
    folder = ws.cache_dir / "pixels-8"
    (chunk,) = _chunks(folder)
    assert _read(chunk).column("sha256").to_pylist() == ["a", "b", "c"]
    cache.add(["a", "c"], pixels[:2])  # nothing new: no chunk written
    assert len(_chunks(folder)) == 1
    cache.add(["f"], pixels[5:])
    got, missing = cache.get(["a", "b", "c", "f"])  # the same instance sees what it added
    assert missing == [] and np.array_equal(got, pixels[[0, 1, 3, 5]])
    assert np.array_equal(PixelCache(ws, 8).get(["a", "b", "c", "f"])[0], got)


def test_chunks_added_without_keeping_are_read_back_from_disk(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    pixels = _pixels(9)
    cache = PixelCache(ws, 8)
    for s in range(0, 9, 3):  # three chunks, as a streaming scan writes them
        cache.add_batches([([f"s{i}" for i in range(s, s + 3)], pixels[s : s + 3])], keep=False)
    assert len(_chunks(ws.cache_dir / "pixels-8")) == 3
    assert not any(isinstance(part, np.ndarray) for _, part in cache._parts)  # nothing held in memory
    order = [8, 0, 4, 4, 2, 7]
    for reader in (cache, PixelCache(ws, 8)):
        got, missing = reader.get([f"s{i}" for i in order])
        assert missing == [] and np.array_equal(got, pixels[order])


def test_a_mapped_array_is_filled_in_place_and_leaves_no_file(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    pixels = _pixels(4)
    PixelCache(ws, 8).add([f"s{i}" for i in range(4)], pixels)
    out = mapped_array(tmp_path / "maps", (3, 8, 8))
    got, missing = PixelCache(ws, 8).get(["s2", "x", "s0"], out)
    assert got is out and missing == [1]
    release_pages(out)  # dropped from memory, not lost: read back from the file
    assert np.array_equal(out[[0, 2]], pixels[[2, 0]]) and not out[1].any()
    assert list((tmp_path / "maps").iterdir()) == []  # unlinked as soon as it was mapped


def test_an_empty_cache_misses_everything(tmp_path: Path) -> None:
    got, missing = PixelCache(Workspace(tmp_path / "ws"), 8).get(["a", "b"])
    assert missing == [0, 1] and got.shape == (2, 8, 8) and not got.any()
    assert not (tmp_path / "ws").exists()  # looking up writes nothing


def test_hash_cache_shares_the_sha_keyed_cache(tmp_path: Path) -> None:
    from fercurate.dedup.cache import HashCache

    folder = tmp_path / "cache" / "hashes-phash-48"
    folder.mkdir(parents=True)
    # a chunk written before HashCache shared the base class
    old = pa.table({"sha256": ["a", "b"], "hash": pa.array([1, 2**64 - 1], type=pa.uint64())})
    pq.write_table(old, folder / "1-1.parquet")
    cache = HashCache(tmp_path / "cache", "phash", 48)
    cache.add(["b", "c", "c"], np.array([7, 3, 4], dtype=np.uint64))
    got, missing = HashCache(tmp_path / "cache", "phash", 48).get(["c", "x", "b", "a"])
    assert missing == [1] and got.dtype == np.uint64
    assert got.tolist() == [3, 0, 2**64 - 1, 1]


def test_load_pixels_decodes_what_the_cache_lacks_once(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    import fercurate.images

    info, df = ws.read()
    rows = df[df[Col.STATUS] == "active"].reset_index(drop=True)
    expected = load_pixels(ws, info, rows)
    shutil.rmtree(ws.cache_dir)
    assert np.array_equal(load_pixels(ws, info, rows), expected)  # decoded again, and cached

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded although every image is cached")

    monkeypatch.setattr(fercurate.images, "load_gray_files", no_decoding)
    assert np.array_equal(load_pixels(ws, info, rows), expected)


# -- many writers at once --------------------------------------------------------------------------
def _race_writer(ws: Workspace, barrier: Any, out: Any) -> None:
    """Wait for every writer, then try to commit one version; report what happened and when."""
    import time

    info, df = ws.read()
    barrier.wait()
    try:
        with ws.lock(f"writer {os.getpid()}"):
            entered = time.monotonic()
            version = ws.commit(df, stage="race", parent=info, params={"pid": os.getpid()})
            left = time.monotonic()
    except WorkspaceError:
        out.put(("refused", os.getpid(), None, 0.0, 0.0))
        return
    out.put(("committed", os.getpid(), version.version, entered, left))


def test_simultaneous_writers_never_hold_the_lock_together(ws: Workspace) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    writers, rounds = 16, 12  # on the old lock (create, then write the holder) 12 rounds failed
    committed: list[tuple[str, int, str, float, float]] = []
    for _ in range(rounds):
        barrier, out = ctx.Barrier(writers), ctx.Queue()
        procs = [ctx.Process(target=_race_writer, args=(ws, barrier, out)) for _ in range(writers)]
        for p in procs:
            p.start()
        results = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
        won = [r for r in results if r[0] == "committed"]
        assert len(won) >= 1  # somebody always gets it
        committed.extend(won)
    spans = sorted((entered, left) for *_, entered, left in committed)
    for (_, left), (entered, _) in zip(spans, spans[1:], strict=False):
        assert entered >= left, "two writers held the lock at once"
    versions = ws.versions()
    assert len(versions) == 1 + len(committed)
    assert sorted(v for _, _, v, _, _ in committed) == [v.version for v in versions[1:]]
    for v in versions[1:]:  # each record describes its own Parquet file
        assert v.params["pid"] in {pid for _, pid, *_ in committed}
        ws.read(v.version)


def test_only_a_command_that_starts_a_workspace_makes_its_folder(tmp_path: Path) -> None:
    missing = Workspace(tmp_path / "nowhere")
    with pytest.raises(WorkspaceError, match="run `fercurate scan DATASET` first"):
        with missing.lock("fercurate split"):
            pass
    assert not missing.root.exists()
    with missing.lock("fercurate scan", create=True):
        assert missing.root.is_dir()


@pytest.mark.parametrize("command", [["split"], ["merge-affectnet", "SOURCE"], ["dedup"], ["relabel-review", "apply"]])
def test_writing_commands_refuse_a_missing_workspace_and_leave_no_folder(tmp_path: Path, command: list[str]) -> None:
    from typer.testing import CliRunner

    from fercurate.cli import app

    source = tmp_path / "affectnet"
    (source / "surprise").mkdir(parents=True)  # a usable source: one class folder with one face
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(source / "surprise" / "a.png")
    where = tmp_path / "nowhere"
    args = [str(source) if part == "SOURCE" else part for part in command]
    res = CliRunner().invoke(app, [*args, "-w", str(where)], env={"COLUMNS": "200"})
    assert res.exit_code == 1, res.output
    assert "no manifest versions" in res.output and len(res.output.strip().splitlines()) == 1
    assert not where.exists()
