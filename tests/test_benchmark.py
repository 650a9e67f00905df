from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_tree
from PIL import Image
from typer.testing import CliRunner

from fercurate.benchmark import BenchmarkParams, benchmark, bootstrap_delta
from fercurate.cli import app
from fercurate.errors import DeviceError, InputError, WorkspaceError
from fercurate.manifest import Col
from fercurate.scan import ScanParams, scan
from fercurate.workspace import Workspace

TINY = (("epochs", 2),)


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """v0000: a lopsided scan with a leaked copy; v0001: re-split with a real test split."""
    root = tmp_path_factory.mktemp("bench") / "data"
    write_tree(root, splits={"train": 30, "val": 10, "test": 1}, with_bad=False, seed=5)
    ws = Workspace(root.parent / "ws")
    scan(ws, ScanParams(dataset=root))
    info, df = ws.read()
    new = df.copy()
    rng = np.random.default_rng(0)
    # move 12 train rows per class to test: the "split" stage's job, done by hand here
    for label in new[Col.LABEL].unique():
        idx = new.index[(new[Col.LABEL] == label) & (new[Col.SPLIT] == "train")]
        new.loc[rng.choice(idx, 12, replace=False), Col.SPLIT] = "test"
    with ws.lock("test"):
        ws.commit(new, stage="split", parent=info, params={})
    return ws


def test_gold_set_is_held_out_and_models_are_scored(ws: Workspace) -> None:
    result = benchmark(ws, BenchmarkParams(seeds=2, preset="tiny", overrides=TINY, device="cpu"))
    v0, v1 = result.versions
    _, new = ws.read("v0001")
    assert result.gold_size == int((new[Col.SPLIT] == "test").sum()) == 52
    # v0000 had the gold images in its train split: they are held out of its training
    assert v0.held_out == 48 and v1.held_out == 0
    assert v0.n_train == 120 - 48 and v1.n_train == 72
    assert v0.n_test == 4 and v1.n_test == 52
    for v in (v0, v1):
        assert 0.0 <= v.gold_acc_mean <= 1.0 and v.gold_acc_std >= 0.0
        assert abs(v.leakage_inflation - (v.val_acc_mean - v.gold_acc_mean)) < 1e-9
        assert np.asarray(v.confusion).sum() == pytest.approx(result.gold_size)
    assert v0.delta_vs_previous is None and v1.delta_vs_previous is not None
    lo, hi = v1.delta_ci
    assert lo <= v1.delta_vs_previous <= hi
    assert any("only 52 images" in w for w in result.warnings)
    runs = pd.read_parquet(result.report_dir / "runs.parquet")
    assert len(runs) == 4 and set(runs["seed"]) == {0, 1}
    for name in ("report.md", "report.html", "accuracy.png", "confusion.png", "per_class_f1.png", "gold.parquet"):
        assert (result.report_dir / name).stat().st_size > 0
    md = (result.report_dir / "report.md").read_text()
    assert "| v0000 |" in md and "inflation" in md


def test_models_are_reused_when_nothing_changed(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    params = BenchmarkParams(seeds=1, preset="tiny", overrides=TINY, device="cpu")
    first = benchmark(ws, params)

    def no_training(*args, **kwargs):
        raise AssertionError("a cached model should have been reused")

    import fercurate.train.loop as loop

    monkeypatch.setattr(loop, "train", no_training)
    second = benchmark(ws, params)
    assert [v.gold_acc_mean for v in second.versions] == [v.gold_acc_mean for v in first.versions]


def test_a_leaky_gold_candidate_is_excluded(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_tree(root, splits={"train": 20, "val": 5, "test": 5}, with_bad=False, seed=9)
    # an exact copy (new name) of a test image placed in train: that test image is not gold
    src = sorted((root / "test" / "sad").glob("*.jpg"))[0]
    shutil.copy(src, root / "train" / "sad" / "copy_of_test.jpg")
    ws = Workspace(tmp_path / "ws")
    scan(ws, ScanParams(dataset=root))
    result = benchmark(ws, BenchmarkParams(seeds=1, preset="tiny", overrides=(("epochs", 1),), device="cpu"))
    assert result.gold_excluded == 1 and result.gold_size == 19
    gold = pd.read_parquet(result.report_dir / "gold.parquet")
    assert src.name not in {Path(p).name for p in gold[Col.PATH]}


def test_bad_input_is_clear(ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(WorkspaceError, match="unknown version 'v0042'"):
        benchmark(ws, BenchmarkParams(versions=("v0042",), preset="tiny"))
    with pytest.raises(InputError, match="seeds 0"):
        benchmark(ws, BenchmarkParams(seeds=0, preset="tiny"))
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="CUDA is not available"):
        benchmark(ws, BenchmarkParams(device="cuda", preset="tiny"))
    runner = CliRunner()
    res = runner.invoke(app, ["benchmark", "-w", str(ws.root), "--device", "cuda", "--preset", "tiny"])
    assert res.exit_code == 1 and "CUDA is not available" in res.output and "Traceback" not in res.output


def test_a_class_missing_from_train_is_an_error(ws: Workspace, tmp_path: Path) -> None:
    other = Workspace(tmp_path / "ws2")
    shutil.copytree(ws.root, other.root)
    info, df = other.read("v0001")
    df = df.copy()
    df.loc[(df[Col.LABEL] == "surprise") & (df[Col.SPLIT] == "train"), Col.SPLIT] = "val"
    with other.lock("t"):
        other.commit(df, stage="edit", parent=info, params={})
    with pytest.raises(InputError, match="surprise have no rows in v0002's train split"):
        benchmark(other, BenchmarkParams(versions=("v0002",), preset="tiny", device="cpu"))


def test_cli_json(ws: Workspace) -> None:
    res = CliRunner().invoke(
        app, ["benchmark", "v0001", "-w", str(ws.root), "--preset", "tiny", "--epochs", "1", "--seeds", "1", "--json"]
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert [v["version"] for v in data["versions"]] == ["v0001"]
    assert data["gold_size"] == 52 and Path(data["report_html"]).exists()
    # one seed: no spread, said in words rather than as "± 0.0"
    assert data["versions"][0]["gold_acc_std"] is None
    md = Path(data["report_md"]).read_text()
    assert "one seed, no interval" in md and "± 0.0" not in md


def test_bootstrap_delta() -> None:
    a = np.zeros(200)
    b = np.ones(200)
    assert bootstrap_delta(a, b) == (1.0, 1.0, 1.0)
    same = np.random.default_rng(0).integers(0, 2, 300).astype(float)
    assert bootstrap_delta(same, same) == (0.0, 0.0, 0.0)
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 2, 500).astype(float), rng.integers(0, 2, 500).astype(float)
    delta, lo, hi = bootstrap_delta(x, y, n_boot=1000, seed=3)
    assert lo < delta < hi and bootstrap_delta(x, y, n_boot=1000, seed=3) == (delta, lo, hi)


def test_the_gold_check_matches_with_the_lineage_dedup_tolerances(tmp_path: Path) -> None:
    """A test image re-cropped into train (another face box) is found by the tolerances of the dedup
    run in the lineage (``--photos``), not by the defaults, which keep it as gold."""
    from fercurate.dedup.plant import crop
    from fercurate.demo import render_face

    root = tmp_path / "data"
    write_tree(root, splits={"train": 20, "val": 5, "test": 5}, with_bad=False, seed=9)
    photo = render_face(np.random.default_rng(3), "happy", 0.9, 64)
    Image.fromarray(crop(photo, 1.0, 0.0, 0.0)).save(root / "test" / "happy" / "photo.png")
    Image.fromarray(crop(photo, 0.88, 2.0, -1.5)).save(root / "train" / "happy" / "recrop.png")
    ws = Workspace(tmp_path / "ws")
    scan(ws, ScanParams(dataset=root))
    params = BenchmarkParams(seeds=1, preset="tiny", overrides=(("epochs", 1),), device="cpu")

    plain = benchmark(ws, params)
    assert plain.gold_matched_as == "dedup's defaults"
    assert "photo.png" in {Path(p).name for p in pd.read_parquet(plain.report_dir / "gold.parquet")[Col.PATH]}

    info, df = ws.read()
    with ws.lock("test"):  # a dedup run with --photos that found nothing to remove in this set
        ws.commit(df, stage="dedup", parent=info, params={"max_zoom": 0.2, "max_residual": 0.3, "version": "v0000"})
    photos = benchmark(ws, params)
    assert photos.gold_matched_as == "v0001's dedup (--max-residual 0.3 --max-zoom 0.2)"
    assert photos.gold_excluded == plain.gold_excluded + 1
    assert "photo.png" not in {Path(p).name for p in pd.read_parquet(photos.report_dir / "gold.parquet")[Col.PATH]}
    assert "looked for with v0001's dedup" in (photos.report_dir / "report.md").read_text()
