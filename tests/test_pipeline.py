"""`fercurate demo --run` end to end on a small demo with the tiny trainer preset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from rich.console import Console
from typer.testing import CliRunner

from fercurate.cli import app
from fercurate.demo import DemoParams
from fercurate.demo.run import DemoRunParams, StepChange, change_verdict, run_demo
from fercurate.errors import InputError
from fercurate.manifest import declared
from fercurate.workspace import Workspace


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory):
    dest = tmp_path_factory.mktemp("demo")
    params = small_run(dest, DemoParams(n_images=400, n_affectnet=240, n_invalid=8), epochs=2)
    return run_demo(Workspace(dest / "workspace"), params)


def small_run(dest: Path, demo: DemoParams, epochs: int) -> DemoRunParams:
    """A demo run small and short enough for a test: the tiny preset, 2 folds, on the CPU."""
    return DemoRunParams(
        dest=dest, demo=demo, preset="tiny", train_overrides=(("epochs", epochs),), folds=2, device="cpu"
    )


def test_every_stage_runs_and_writes_a_version(report) -> None:
    stages = [s.stage for s in report.stages]
    assert stages == ["demo", "scan", "dedup", "relabel-review", "split", "merge-affectnet", "benchmark"]
    versions = [v.version for v in Workspace(report.workspace).versions()]
    assert versions == [f"v000{i}" for i in range(6)]


def test_every_column_a_stage_writes_is_declared_in_the_schema(report) -> None:
    """Each version the pipeline wrote (scan, dedup, flag, apply, split, merge) holds only declared
    columns, stored with the declared Arrow type and written by the stage that owns them or before it."""
    written: dict[str, str] = {}
    for info in Workspace(report.workspace).versions():
        schema = pq.read_schema(info.path)
        for field in schema:
            column = declared(field.name)
            assert column is not None, f"{info.stage} wrote column '{field.name}', which the schema does not declare"
            assert field.type == column.type, f"{field.name}: stored as {field.type}, declared {column.type}"
            written.setdefault(field.name, info.stage)
    # the first version holding a column was written by the stage the schema names as its owner
    for name, stage in written.items():
        assert stage == declared(name).stage, (name, stage)  # type: ignore[union-attr]
    assert {"phash", "dup_group", "prob_sad", "flagged", "source_path", "face_x"} <= set(written)


def test_stages_are_scored_against_the_truth(report) -> None:
    by = {s.stage: s for s in report.stages}
    assert by["scan"].score["invalid precision"] == 1.0
    found, planted = map(int, by["scan"].score["invalid found"].split("/"))
    assert found == planted == 8
    dedup = by["dedup"].score
    recall = {k.removeprefix("recall "): _ratio(v) for k, v in dedup.items() if k.startswith("recall ")}
    assert set(recall) == {"exact", "near", "recrop", "watermark", "tone"}
    # the kinds dedup is built for; re-crops and watermarks are scored, not yet required (issue 12)
    assert min(recall["exact"], recall["near"], recall["tone"]) >= 0.95
    assert 0 <= _ratio(dedup["burst pairs joined (false pairs)"]) <= 1
    assert by["split"].score["dup groups spanning splits"] == 0
    # demo --run splits with --group-by related: no sitting straddles two splits
    assert by["split"].score["related groups spanning splits"] == 0
    assert 0 < by["dedup"].score["related group precision"] <= 1
    # only copies dedup missed can still sit in another split than their original
    found, planted = map(int, dedup["pairs found"].split("/"))
    assert by["split"].score["planted duplicate pairs across splits"] <= planted - found
    assert (
        by["merge-affectnet"].score["rarest class share after (%)"]
        > by["merge-affectnet"].score["rarest class share before (%)"]
    )
    bench = by["benchmark"]
    assert bench.summary["gold images"] > 0 and Path(bench.score["report"]).exists()


def _ratio(found_of: str) -> float:
    found, total = map(int, found_of.split("/"))
    return found / total if total else 1.0


def test_report_serialises(report) -> None:
    data = json.loads(json.dumps(report.to_dict()))
    assert data["stages"][1]["version"] == "v0000"


def test_another_used_workspace_needs_overwrite(report, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="overwrite"):
        run_demo(Workspace(report.workspace), DemoRunParams(dest=tmp_path / "elsewhere", demo=DemoParams(n_images=400)))
    assert not (tmp_path / "elsewhere").exists()


def test_the_demo_says_what_it_did_with_its_dataset_and_workspace(report) -> None:
    said = report.stages[0].summary
    assert said["dataset"].startswith("written") and said["workspace"] == "new"


def test_demo_command_writes_the_dataset(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["demo", str(tmp_path / "d"), "--n-images", "200", "--json"])
    assert res.exit_code == 0, res.output
    counts = json.loads(res.stdout)["counts"]
    assert counts["images"] >= 200 and (tmp_path / "d" / "truth.parquet").exists()
    res = CliRunner().invoke(app, ["demo", str(tmp_path / "d"), "--n-images", "200"])
    assert res.exit_code == 0 and "reused" in res.stdout  # the same command again reuses the demo
    res = CliRunner().invoke(app, ["demo", str(tmp_path / "d"), "--n-images", "220", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["action"] == "replaced"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("not a demo")
    res = CliRunner().invoke(app, ["demo", str(mine), "--n-images", "200"])
    assert res.exit_code == 1 and "holds no fercurate demo" in res.stderr
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_demo_run_twice_replaces_its_own_workspace_keeping_the_caches(report) -> None:
    # the module's run again, as the Quick start's command is run again (its other tests hold after it)
    params = small_run(report.dest, DemoParams(n_images=400, n_affectnet=240, n_invalid=8), epochs=2)
    again = run_demo(Workspace(report.workspace), params)
    assert again.stages[0].summary["dataset"].startswith("reused")
    assert again.stages[0].summary["workspace"] == "replaced (caches kept)"
    assert [v.version for v in Workspace(report.workspace).versions()] == [f"v000{i}" for i in range(6)]
    by_stage = {s.stage: s for s in again.stages}
    assert by_stage["benchmark"].summary == {s.stage: s for s in report.stages}["benchmark"].summary


def test_relabel_step_does_not_lower_label_accuracy(report) -> None:
    score = {s.stage: s for s in report.stages}["relabel-review"].score
    assert score["label accuracy after"] >= score["label accuracy before"]
    fixed, broken = map(int, score["relabels fixed / broken"].split(" / "))
    assert broken <= fixed


def test_summary_gives_each_step_its_interval_and_never_a_bare_helped(report) -> None:
    steps = report.steps
    assert [s.step.split(" ")[0] for s in steps] == ["dedup", "relabel-apply", "merge-affectnet", "all"]
    for step in steps:
        assert step.low <= step.delta <= step.high
        assert step.verdict == change_verdict(step.low, step.high)
        assert "paired bootstrap over" in step.interval
    console = Console(record=True, width=160)
    report.render(console)
    text = console.export_text()
    assert "helped" not in text and "Gold accuracy, step by step" in text
    for step in steps:
        assert step.line() in text
    data = report.to_dict()
    assert [s["verdict"] for s in data["steps"]] == [s.verdict for s in steps]
    bench = {s.stage: s for s in report.stages}["benchmark"]
    assert bench.score["gold acc change"] == steps[-1].text()


def test_a_change_whose_interval_spans_zero_is_within_noise() -> None:
    assert change_verdict(-0.01, 0.02) == "within noise"
    assert change_verdict(0.0, 0.0) == "within noise"
    assert change_verdict(0.001, 0.05) == "raised"
    assert change_verdict(-0.05, -0.001) == "lowered"
    # a mean gain whose interval spans zero is no gain (the old summary said "helped" for any mean gain)
    step = StepChange("relabel-apply (v0001 -> v0003)", 0.03, -0.01, 0.07, "95% paired bootstrap")
    assert step.verdict == "within noise" and step.text() == "+3.0 points [-1.0, +7.0], within noise"


def test_expected_precision_does_not_overstate_the_demo_truth(report) -> None:
    """The queue's expected precision against the demo's planted flips, and auto-accept's.

    The estimate is built to err low when the model is weak (see docs/relabel.md), so the test is
    one-sided where it matters: the expected precision of the top k may not exceed the measured one
    by more than three binomial standard errors of the measured share at k (sampling noise of a
    queue this short) plus 0.05; and whatever auto-accept relabelled must fix more labels than it
    breaks, since it accepted only suggestions estimated right at least 9 times in 10.
    """
    ws = Workspace(report.workspace)
    _, flagged = ws.read("v0002")
    truth = pd.read_parquet(report.dest / "truth.parquet")[["path", "true_label"]]
    queue = flagged[flagged["queue_rank"].notna()].merge(truth, on="path").sort_values("queue_rank")
    wrong = (queue["label"] != queue["true_label"]).to_numpy()
    expected = queue["p_label_wrong"].to_numpy()
    for k in (10, 25, 50, len(queue)):
        k = min(k, len(queue))
        measured = wrong[:k].mean()
        se = np.sqrt(max(measured * (1 - measured), 0.1 * 0.9) / k)
        assert expected[:k].mean() <= measured + 3 * se + 0.05, k
    score = {s.stage: s for s in report.stages}["relabel-review"].score
    fixed, broken = map(int, score["relabels fixed / broken"].split(" / "))
    assert fixed >= broken
