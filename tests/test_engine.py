"""The engine switch: the local engine, the one-line error without Ray, and a real two-node Ray cluster.

The Ray tests share one cluster per module: a head and a second node started with ``ray start`` on
this machine, one CPU each (2 in all), the second carrying a custom resource so the tests can tell
which node ran a batch. They are skipped, saying why, where the ``ray`` extra is not installed.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import CLASSES, blob_image
from typer.testing import CliRunner

from fercurate.cli import app
from fercurate.engine import ENGINE_ENV, Engine, EngineParams, open_engine
from fercurate.errors import InputError
from fercurate.workspace import Workspace

runner = CliRunner()

try:
    import ray
except ImportError:  # pragma: no cover - CI installs the extra
    ray = None


def needs_ray(test: Any) -> Any:
    """Skip ``test`` without the extra; run every Ray test on one pytest worker, so ``pytest -n 2`` starts
    one cluster (pyproject sets ``--dist loadgroup``)."""
    skip = pytest.mark.skipif(ray is None, reason='the ray extra is not installed: pip install "fercurate[ray]"')
    return skip(pytest.mark.xdist_group("ray")(test))


#: Ray's token authentication is for clusters across machines; these are on one, started by the tests.
NO_AUTH = {"RAY_AUTH_MODE": "disabled"}


# -- without Ray -----------------------------------------------------------------------------------
def test_engine_params_name_what_is_accepted() -> None:
    with pytest.raises(InputError, match="engine 'spark' is not one of: local, ray"):
        EngineParams(engine="spark")
    with pytest.raises(InputError, match="pass engine ray"):
        EngineParams(ray_address="10.0.0.1:6379")


def test_the_local_engine_keeps_batches_in_order() -> None:
    with open_engine() as engine:
        parts = engine.map_batches(sum, list(range(10)), batch_size=3, workers=1)
        assert parts == [3, 12, 21, 9]
        pixels = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
        assert engine.map_images(lambda p, rows=None: p[rows].sum(), pixels, rows=np.array([1]))[0] == pixels[1].sum()
        seen: list[tuple[int, int]] = []
        out = engine.run_tasks(
            lambda base, k, step: base + k, [(1,), (2,)], shared=(10,), on_result=lambda k, r: seen.append((k, r))
        )
        assert out == [11, 12] and seen == [(0, 11), (1, 12)]


def test_the_local_engine_maps_a_memory_mapped_array_a_slice_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fercurate.engine as engine_module
    from fercurate.workspace import mapped_array

    monkeypatch.setattr(engine_module, "MAPPED_BATCHES", 1)
    pixels = mapped_array(tmp_path, (10, 2, 2))
    pixels[:] = np.arange(40, dtype=np.uint8).reshape(10, 2, 2)
    sums = pixels.sum(axis=(1, 2))
    with open_engine() as engine:
        parts = engine.map_images(lambda p: p.sum(axis=(1, 2)), pixels, batch_size=3)
        assert len(parts) == 4 and np.array_equal(np.concatenate(parts), sums)
        rows = np.array([9, 0, 5, 5])
        parts = engine.map_images(lambda p, rows: p[rows].sum(axis=(1, 2)), pixels, rows=rows, batch_size=3)
        assert len(parts) == 2 and np.array_equal(np.concatenate(parts), sums[rows])
        # an ordinary array: one call on the whole
        assert len(engine.map_images(lambda p: p.sum(axis=(1, 2)), np.array(pixels), batch_size=3)) == 1
        a, b = np.array([0, 9, 4, 4, 7]), np.array([1, 1, 2, 8, 3])
        pairs = engine.map_pairs(_pair_sums, (pixels, pixels), (a, b, np.ones(5, int)), batch_size=2)
        assert len(pairs) == 3 and np.array_equal(np.concatenate(pairs), _pair_sums(pixels, pixels, a, b, 1))
        # on a mapped array the calls never take more than MAPPED_PAIRS pairs, whatever batch_size says
        monkeypatch.setattr(engine_module, "MAPPED_PAIRS", 2)
        pairs = engine.map_pairs(_pair_sums, (pixels, pixels), (a, b, np.ones(5, int)), batch_size=100)
        assert len(pairs) == 3 and np.array_equal(np.concatenate(pairs), _pair_sums(pixels, pixels, a, b, 1))
        assert len(engine.map_pairs(_pair_sums, (np.array(pixels),) * 2, (a, b, np.ones(5, int)))) == 1


def test_engine_ray_without_ray_installed_is_one_line_naming_the_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import write_tree

    write_tree(tmp_path / "d", splits={"train": 2}, with_bad=False)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if it were not installed
    res = runner.invoke(app, ["scan", str(tmp_path / "d"), "-w", str(tmp_path / "ws"), "--engine", "ray"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert 'pip install "fercurate[ray]"' in res.output and "--engine" in res.output
    assert not (tmp_path / "ws").exists()  # nothing written


def test_fercurate_engine_env_chooses_the_engine(tmp_path: Path) -> None:
    res = runner.invoke(app, ["dedup", "-w", str(tmp_path / "ws")], env={ENGINE_ENV: "spark"})
    assert res.exit_code == 1 and "--engine 'spark' is not one of: local, ray" in res.output


# -- a two-node Ray cluster on this machine ------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray"))


@needs_ray
def test_an_address_nobody_listens_on_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh process, whatever ran before
    address = f"127.0.0.1:{_free_port()}"
    res = runner.invoke(app, ["dedup", "-w", str(tmp_path / "ws"), "--engine", "ray", "--ray-address", address])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"no Ray cluster answers at {address}" in res.output and "--ray-address" in res.output


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, str]]:
    """A head node and a second node (custom resource ``second``), one CPU each; this process connects."""
    if ray is None:
        pytest.skip('the ray extra is not installed: pip install "fercurate[ray]"')
    env = {**os.environ, **NO_AUTH}
    address = f"127.0.0.1:{_free_port()}"
    common = ["--block", "--num-cpus=1", "--disable-usage-stats"]
    procs = [
        subprocess.Popen(
            [_ray_cli(), "start", "--head", f"--port={address.split(':')[1]}", "--include-dashboard=false", *common],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    os.environ.update(NO_AUTH)
    try:
        for _ in range(120):  # the head takes seconds on a loaded machine
            if (
                subprocess.run([_ray_cli(), "status", f"--address={address}"], env=env, capture_output=True).returncode
                == 0
            ):
                break
            time.sleep(0.5)
        procs.append(
            subprocess.Popen(
                [_ray_cli(), "start", f"--address={address}", "--resources", '{"second": 1}', *common],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        ray.init(address=address, log_to_driver=False)
        for _ in range(120):
            alive = [n for n in ray.nodes() if n["Alive"]]
            if len(alive) == 2:
                break
            time.sleep(0.5)
        assert len(alive) == 2, "the second Ray node did not join"
        second = next(n["NodeID"] for n in alive if "second" in n["Resources"])
        yield {"address": address, "second": second}
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=120)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from fercurate.demo import DemoParams, generate_demo

    return generate_demo(tmp_path_factory.mktemp("engine") / "demo", DemoParams(n_images=200, n_affectnet=160))


@needs_ray
def test_per_image_batches_run_on_both_nodes_and_come_back_in_order(cluster: dict[str, str], demo: Any) -> None:
    from fercurate.engine import RayEngine
    from fercurate.images import apply_batches, inspect_files

    paths = sorted(str(p) for p in (demo.dataset_dir).rglob("*") if p.is_file())
    fn = functools.partial(inspect_files, size=48)
    local = apply_batches(fn, paths, batch_size=8, workers=1)
    engine = RayEngine(cluster["address"])
    remote = engine.map_batches(fn, paths, batch_size=8)
    assert len(remote) == len(local) > 8
    for a, b in zip(local, remote, strict=True):
        assert a["sha256"] == b["sha256"] and a["status"] == b["status"]
        assert np.array_equal(a["pixels"], b["pixels"])
    # work left the driver's node: the second node ran some of the batches
    assert engine.batches_by_node[cluster["second"]] > 0
    assert sum(engine.batches_by_node.values()) == len(local)


@needs_ray
def test_scan_dedup_merge_write_the_same_versions_on_ray(cluster: dict[str, str], demo: Any, tmp_path: Path) -> None:
    from fercurate.affectnet import MergeParams, merge_affectnet
    from fercurate.dedup import DedupParams, dedup
    from fercurate.engine import RayEngine
    from fercurate.scan import ScanParams, scan

    hashes = []
    for engine in (Engine(), RayEngine(cluster["address"])):
        ws = Workspace(tmp_path / engine.name)
        scan(ws, ScanParams(dataset=demo.dataset_dir), engine=engine)
        dedup(ws, DedupParams(), engine=engine)
        merge_affectnet(ws, MergeParams(source=demo.affectnet_dir, splits="train"), engine=engine)
        hashes.append([(info.stage, info.content_hash) for info in ws.versions()])
        if engine.distributed:
            assert len(engine.batches_by_node) >= 1 and len(engine.tasks_by_node) >= 1
    assert [stage for stage, _ in hashes[0]] == ["scan", "dedup", "merge-affectnet"]
    assert hashes[0] == hashes[1]


@needs_ray
def test_mirrored_and_recropped_pairs_are_found_alike_on_ray(cluster: dict[str, str], demo: Any) -> None:
    from fercurate.dedup import DedupParams, find_duplicate_pairs
    from fercurate.engine import RayEngine
    from fercurate.images import inspect_files

    found = inspect_files(sorted(str(p) for p in demo.dataset_dir.rglob("*") if p.is_file()), 48)
    pixels = found["pixels"][np.array(found["status"]) == "active"]
    params = DedupParams(mirror=True, max_zoom=0.1)
    local = find_duplicate_pairs(pixels, params)
    engine = RayEngine(cluster["address"])
    remote = find_duplicate_pairs(pixels, params, engine=engine)
    assert len(local) > 0 and set(local["kind"]) > {"exact"}
    pd.testing.assert_frame_equal(local, remote)
    assert sum(engine.tasks_by_node.values()) >= 2  # the plain and the re-crop pair checks ran as tasks


@needs_ray
def test_image_and_pair_tasks_are_sent_only_their_rows_a_bounded_number_at_a_time(
    cluster: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fercurate.engine as engine_module
    from fercurate.engine import RayEngine, _on_node, _pair_call
    from fercurate.workspace import mapped_array

    engine = RayEngine(cluster["address"])
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this module
    pixels = np.arange(40 * 2 * 2, dtype=np.uint8).reshape(40, 2, 2)
    rows = np.array([39, 3, 3, 17, 0, 21, 8])
    parts = engine.map_images(_row_sums, pixels, rows=rows, batch_size=2)
    assert np.array_equal(np.concatenate(parts), pixels[rows].sum(axis=(1, 2)))
    # a pair task gets the rows its pairs name, renumbered, and computes what it would on the whole arrays
    left, right = pixels, pixels[::-1].copy()
    a, b, w = np.array([5, 30, 5]), np.array([0, 0, 39]), np.array([1, 2, 3])
    _, sub_left, sub_right, sub_a, sub_b, sub_w = _pair_call(_pair_sums, (left, right), [a, b, w])
    assert len(sub_left) == 2 and len(sub_right) == 2 and sub_w is w
    assert np.array_equal(_pair_sums(sub_left, sub_right, sub_a, sub_b, sub_w), _pair_sums(left, right, a, b, w))
    remote = engine.map_pairs(_pair_sums, (left, right), (a, b, w), batch_size=2)
    assert np.array_equal(np.concatenate(remote), _pair_sums(left, right, a, b, w))
    # over a memory-mapped array a task never takes more than MAPPED_PAIRS pairs, as locally
    mapped = mapped_array(tmp_path, pixels.shape)
    mapped[:] = pixels
    monkeypatch.setattr(engine_module, "MAPPED_PAIRS", 1)
    remote = engine.map_pairs(_pair_sums, (mapped, mapped), (a, b, w), batch_size=100)
    assert len(remote) == 3 and np.array_equal(np.concatenate(remote), _pair_sums(pixels, pixels, a, b, w))
    # submitted but not yet taken: never more than the window, however many calls there are
    drawn = 0

    def calls() -> Iterator[tuple[Any, ...]]:
        nonlocal drawn
        for k in range(30):
            drawn += 1
            yield (_row_sums, pixels[k : k + 1])

    window = 2 * int(ray.cluster_resources()["CPU"])
    for k, out in enumerate(RayEngine._bounded(ray.remote(_on_node), calls(), engine.tasks_by_node)):
        assert out[0] == pixels[k].sum() and drawn - (k + 1) <= window
    assert drawn == 30


def _row_sums(pixels: np.ndarray) -> np.ndarray:
    return pixels.sum(axis=(1, 2))


def _pair_sums(left: np.ndarray, right: np.ndarray, a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    return (left[a].sum(axis=(1, 2)) - right[b].sum(axis=(1, 2))) * w


@needs_ray
def test_flag_folds_on_ray_give_the_same_out_of_fold_probabilities(cluster: dict[str, str], tmp_path: Path) -> None:
    import dataclasses

    from fercurate.engine import RayEngine
    from fercurate.progress import NullProgress
    from fercurate.relabel.flag import FlagParams, assign_folds, cross_fit
    from fercurate.train import make_config

    rng = np.random.default_rng(0)
    labels = np.arange(96) % len(CLASSES)
    x = np.stack([blob_image(rng, int(c)) for c in labels])
    groups = np.array([f"g{k}" for k in range(len(labels))])
    folds = assign_folds(labels, groups, 3, seed=0)
    config = dataclasses.replace(make_config("tiny", seed=0, device="cpu", num_threads=1), epochs=1)
    params = FlagParams(folds=3, preset="tiny", epochs=1)
    out = {}
    for engine in (Engine(), RayEngine(cluster["address"])):
        cache = tmp_path / engine.name
        out[engine.name] = cross_fit(
            x, labels, groups, folds, list(CLASSES), config, cache, params, NullProgress(), engine
        )
        names = sorted(p.name for p in cache.iterdir())
        assert names == sorted([f"fold-{k}.npy" for k in range(3)] + [f"fold-{k}-fit.npy" for k in range(3)])
    (local, local_fit, trained, _), (remote, remote_fit, trained_remote, _) = out["local"], out["ray"]
    assert trained == trained_remote == 3
    assert np.array_equal(local, remote) and np.array_equal(local_fit, remote_fit, equal_nan=True)
    # a killed run resumes: the folds the driver saved are not trained again
    (tmp_path / "ray" / "fold-1.npy").unlink()
    again, again_fit, trained, cached = cross_fit(
        x, labels, groups, folds, list(CLASSES), config, tmp_path / "ray", params, NullProgress(), RayEngine()
    )
    assert (trained, cached) == (1, 2) and np.array_equal(again, local)
    assert np.array_equal(again_fit, local_fit, equal_nan=True)


@needs_ray
def test_benchmark_trains_one_task_per_version_and_seed_with_the_same_scores(
    cluster: dict[str, str], demo: Any, tmp_path: Path
) -> None:
    import shutil

    from fercurate.benchmark import BenchmarkParams, benchmark
    from fercurate.dedup import DedupParams, dedup
    from fercurate.engine import RayEngine
    from fercurate.scan import ScanParams, scan

    first = Workspace(tmp_path / "local")
    scan(first, ScanParams(dataset=demo.dataset_dir))
    dedup(first, DedupParams())
    shutil.copytree(first.root, tmp_path / "ray")
    params = BenchmarkParams(seeds=2, preset="tiny", overrides=(("epochs", 1), ("num_threads", 1)), device="cpu")
    engine = RayEngine(cluster["address"])
    local = benchmark(first, params)
    remote = benchmark(Workspace(tmp_path / "ray"), params, engine=engine)
    assert sum(engine.tasks_by_node.values()) == 4  # 2 versions x 2 seeds
    assert [s.to_dict() for s in local.versions] == [s.to_dict() for s in remote.versions]
    assert len(list((tmp_path / "ray" / "cache" / "models").glob("*.pt"))) == 4


@needs_ray
def test_cli_engine_ray_starts_its_own_ray_and_stops_it(demo: Any, tmp_path: Path) -> None:
    """No address: a local Ray for the run (in a fresh process, as a user runs it), gone afterwards."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | NO_AUTH
    before = _raylets()
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "fercurate",
            "scan",
            str(demo.dataset_dir),
            "-w",
            str(tmp_path / "ws"),
            "--engine",
            "ray",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    local = Workspace(tmp_path / "local")
    from fercurate.scan import ScanParams, scan

    scan(local, ScanParams(dataset=demo.dataset_dir))
    assert Workspace(tmp_path / "ws").versions()[0].content_hash == local.versions()[0].content_hash
    for _ in range(40):
        if _raylets() <= before:
            break
        time.sleep(0.5)
    assert _raylets() <= before


def _raylets() -> set[int]:
    found = subprocess.run(["pgrep", "-f", "ray/core/src/ray/raylet/raylet"], capture_output=True, text=True)
    return {int(p) for p in found.stdout.split()}


def test_ray_data_blocks_keep_every_cpu_busy_with_few_tasks() -> None:
    from fercurate.engine import _per_block

    assert _per_block(118, 2) == 15  # 30K files in 256s on 2 CPUs: 8 blocks, 4 per CPU
    assert _per_block(3907, 2) == 64  # a million files: at most 64 batches a block (61 blocks)
    assert _per_block(3, 2) == 4  # a few batches: one block
    assert _per_block(3907, 64) == 16  # a large cluster: smaller blocks (245), every CPU fed
