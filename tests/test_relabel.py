"""relabel-review end to end: flag (real cross-fitting with the tiny preset, and an oracle model),
the decision log, the review server's API and its guards, apply and auto-accept, the CLI."""

from __future__ import annotations

import http.client
import importlib
import io
import json
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import CLASSES, blob_image, jpeg_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from fercurate.cli import app
from fercurate.errors import InputError, WorkspaceError
from fercurate.manifest import ACTIVE, REMOVED, Col
from fercurate.relabel import (
    ApplyParams,
    Decision,
    DecisionLog,
    FlagParams,
    ServeParams,
    apply,
    flag,
    log_path,
    make_server,
    replay,
)
from fercurate.relabel.apply import AUTO_ACCEPT_CAVEAT
from fercurate.relabel.flag import FLAGGED, MISLABEL_SCORE, SUGGESTED_LABEL, assign_folds, cache_key, prob_column
from fercurate.relabel.queue import IN_BUDGET, P_SUGGESTED, P_WRONG, QUEUE_RANK
from fercurate.relabel.scoring import NormalizedMargin
from fercurate.scan import ScanParams, scan
from fercurate.workspace import Workspace

# the package re-exports the function flag(), which shadows the submodule's attribute name
flag_mod = importlib.import_module("fercurate.relabel.flag")

PER_CLASS = 18
FLIPS_PER_CLASS = 1


def write_dataset(root: Path, seed: int = 0) -> dict[str, tuple[str, str]]:
    """``root/train/<given>/<n>.jpg`` of blob images, the first image of each class filed one class on.

    Returns:
        {relative path: (given label, true label)} for every image, plus one empty (invalid) file.
    """
    rng = np.random.default_rng(seed)
    truth: dict[str, tuple[str, str]] = {}
    n = 0
    for ci, cls in enumerate(CLASSES):
        for j in range(PER_CLASS):
            n += 1
            given = CLASSES[(ci + 1) % len(CLASSES)] if j < FLIPS_PER_CLASS else cls
            rel = f"train/{given}/{n}.jpg"
            (root / "train" / given).mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(jpeg_bytes(blob_image(rng, ci)))
            truth[rel] = (given, cls)
    (root / "train" / CLASSES[0] / "empty.jpg").write_bytes(b"")
    return truth


def add_dup_groups(ws: Workspace) -> None:
    """Commit a version whose first rows of each class form duplicate groups of three (as dedup would)."""
    info, df = ws.read()
    group = pd.array([pd.NA] * len(df), dtype="Int64")
    for ci, cls in enumerate(CLASSES):
        idx = df.index[(df[Col.LABEL] == cls) & (df[Col.STATUS] == ACTIVE)][:6]
        for k, i in enumerate(idx):
            group[df.index.get_loc(i)] = 10 * ci + k // 3
    df["dup_group"] = group
    with ws.lock("test"):
        ws.commit(df, stage="dedup", parent=info, params={})


def oracle_probs(x: np.ndarray, k: int) -> np.ndarray:
    """What a perfect model of the blob images says: the bright quadrant is the true class."""
    quads = np.stack([x[:, :24, :24], x[:, :24, 24:], x[:, 24:, :24], x[:, 24:, 24:]], axis=1)
    strength = quads.reshape(len(x), 4, -1).mean(axis=2)
    logits = (strength - strength.mean(axis=1, keepdims=True)) / 4.0
    probs = np.exp(logits[:, :k])
    return (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)


def oracle_cross_fit(x, labels, groups, folds, classes, config, cache, params, progress, engine=None):  # type: ignore[no-untyped-def]
    return oracle_probs(x, len(classes)), np.full((len(x), len(classes)), np.nan, np.float32), 0, 0


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[str, str]]]:
    root = tmp_path_factory.mktemp("relabel-data") / "faces"
    return root, write_dataset(root)


@pytest.fixture(scope="session")
def oracle_root(dataset: tuple[Path, dict[str, tuple[str, str]]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace flagged with oracle probabilities (no training): v0 scan, v1 dup groups, v2 flag."""
    ws = Workspace(tmp_path_factory.mktemp("relabel-oracle") / "ws")
    scan(ws, ScanParams(dataset=dataset[0]))
    add_dup_groups(ws)
    mp = pytest.MonkeyPatch()
    mp.setattr(flag_mod, "cross_fit", oracle_cross_fit)
    try:
        flag(ws, FlagParams(folds=3, preset="tiny", top_per_class=4))
    finally:
        mp.undo()
    return ws.root


@pytest.fixture
def ws(oracle_root: Path, tmp_path: Path) -> Workspace:
    """A private copy of the oracle-flagged workspace (its own decision log)."""
    dest = tmp_path / "ws"
    shutil.copytree(oracle_root, dest)
    return Workspace(dest)


@pytest.fixture(scope="session")
def trained(
    dataset: tuple[Path, dict[str, tuple[str, str]]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Workspace, Any]:
    """A workspace flagged by real cross-fitting: tiny preset, 3 folds, 3 epochs, one thread."""
    ws = Workspace(tmp_path_factory.mktemp("relabel-trained") / "ws")
    scan(ws, ScanParams(dataset=dataset[0]))
    add_dup_groups(ws)
    result = flag(ws, FlagParams(folds=3, preset="tiny", epochs=3, num_threads=1, top_per_class=3))
    return ws, result


# -- flag ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_flag_cross_fits_and_writes_columns_queue_and_contact_sheet(trained: tuple[Workspace, Any]) -> None:
    ws, result = trained
    assert result.folds_trained == 3 and result.folds_cached == 0
    info, df = ws.read(result.version.version)
    assert info.stage == "relabel-flag" and info.parent == "v0001"
    for col in [*(prob_column(c) for c in CLASSES), MISLABEL_SCORE, SUGGESTED_LABEL, FLAGGED]:
        assert col in df.columns
    active = df[df[Col.STATUS] == ACTIVE]
    probs = active[[prob_column(c) for c in CLASSES]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4) and (probs >= 0).all()
    assert active[SUGGESTED_LABEL].isin(CLASSES).all() and active[FLAGGED].notna().all()
    invalid = df[df[Col.STATUS] != ACTIVE]
    assert len(invalid) == 1
    assert invalid[[prob_column(CLASSES[0]), MISLABEL_SCORE, SUGGESTED_LABEL, FLAGGED]].isna().all(axis=None)
    # the queue is the flagged rows, most likely wrong first
    queue = pd.read_parquet(result.queue_path)
    assert len(queue) == result.flagged == int(active[FLAGGED].sum())
    assert queue[MISLABEL_SCORE].is_monotonic_decreasing
    html = result.html_path.read_text()
    assert html.count('<figure><img src="data:image/png;base64,') == min(len(queue), 3 * queue[Col.LABEL].nunique())
    assert Image.open(result.png_path).size[0] > 0
    # the queue part of the report: the estimate, the budget, the precision table and its plot
    assert f"review budget: <b>{result.budget}</b>" in html and "expected precision" in html
    assert Image.open(result.precision_png).size[0] > 0
    assert 0 <= result.budget <= result.flagged and result.precision_table[-1]["rank"] == result.flagged


@pytest.mark.slow
def test_flag_rerun_with_unchanged_rows_and_settings_trains_nothing(
    trained: tuple[Workspace, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import fercurate.train

    ws, first = trained

    def no_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a cached fold was trained again")

    monkeypatch.setattr(fercurate.train, "train", no_training)
    again = flag(ws, FlagParams(version="v0001", folds=3, preset="tiny", epochs=3, top_per_class=3))
    assert again.folds_cached == 3 and again.folds_trained == 0
    assert again.cache_key == first.cache_key
    _, a = ws.read(first.version.version)
    _, b = ws.read(again.version.version)
    cols = [prob_column(c) for c in CLASSES]
    assert np.array_equal(a[cols].to_numpy(), b[cols].to_numpy(), equal_nan=True)
    # the fold models' fit is cached with them: the same ranking
    assert np.array_equal(a[MISLABEL_SCORE].to_numpy(), b[MISLABEL_SCORE].to_numpy(), equal_nan=True)
    # and it caps what auto-accept reads: a suggestion no surer than the folds' mean fit of it
    cache = ws.cache_dir / "relabel-oof" / first.cache_key
    fit = np.nanmean(np.stack([np.load(cache / f"fold-{i}-fit.npy") for i in range(3)]), axis=0)
    rows = flag_mod.active_rows(a)
    fit_suggested = fit[np.arange(len(rows)), [CLASSES.index(c) for c in rows[SUGGESTED_LABEL]]]
    assert np.all(rows[P_SUGGESTED].to_numpy(dtype=np.float64) <= fit_suggested + 1e-6)
    # the fit only ranks: without it the score is the out-of-fold normalised margin, the flags the same
    plain = flag(ws, FlagParams(version="v0001", folds=3, preset="tiny", epochs=3, top_per_class=3, fit_weight=0.0))
    _, c = ws.read(plain.version.version)
    active = c[Col.STATUS] == ACTIVE
    probs = c.loc[active, cols].to_numpy(dtype=np.float64)
    labels = np.array([CLASSES.index(v) for v in c.loc[active, Col.LABEL]])
    expected = 1.0 - NormalizedMargin()(probs, labels)
    np.testing.assert_allclose(c.loc[active, MISLABEL_SCORE].to_numpy(dtype=np.float64), expected)
    assert c[FLAGGED].equals(a[FLAGGED]) and c[SUGGESTED_LABEL].equals(a[SUGGESTED_LABEL])
    assert not np.allclose(a.loc[active, MISLABEL_SCORE].to_numpy(dtype=np.float64), expected)
    # a changed label or another seed is a different key: those would train
    with pytest.raises(AssertionError, match="trained again"):
        flag(ws, FlagParams(version="v0001", folds=3, preset="tiny", epochs=3, seed=1))


def test_cache_key_follows_rows_labels_and_settings(ws: Workspace) -> None:
    _, df = ws.read("v0001")
    rows = flag_mod.active_rows(df)
    groups = flag_mod.fold_groups(rows)
    params = FlagParams(folds=3)
    key = cache_key(rows, groups, params, "cfg")
    assert cache_key(rows.sample(frac=1, random_state=0).sort_values(Col.IMAGE_ID), groups, params, "cfg") == key
    relabeled = rows.copy()
    relabeled.loc[0, Col.LABEL] = "sad" if relabeled.loc[0, Col.LABEL] != "sad" else "happy"
    assert cache_key(relabeled, groups, params, "cfg") != key
    assert cache_key(rows, groups, FlagParams(folds=4), "cfg") != key
    assert cache_key(rows, groups, params, "other-config") != key


def test_duplicate_groups_stay_in_one_fold_and_folds_are_stratified(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, np.ndarray] = {}

    def recording(x, labels, groups, folds, classes, config, cache, params, progress, engine=None):  # type: ignore[no-untyped-def]
        seen.update(labels=labels, groups=groups, folds=folds)
        return oracle_cross_fit(x, labels, groups, folds, classes, config, cache, params, progress)

    monkeypatch.setattr(flag_mod, "cross_fit", recording)
    flag(ws, FlagParams(version="v0001", folds=3, preset="tiny"))
    groups, folds, labels = seen["groups"], seen["folds"], seen["labels"]
    dup = [g for g in set(groups) if g.startswith("dup:")]
    assert len(dup) == 2 * len(CLASSES)
    for g in dup:
        members = folds[groups == g]
        assert len(members) == 3 and len(set(members)) == 1
    assert set(folds) == {0, 1, 2}
    for c in range(len(CLASSES)):
        per_fold = np.bincount(folds[labels == c], minlength=3)
        assert per_fold.min() >= 3  # every fold holds every class


@pytest.mark.parametrize("val_fraction", [0.0, 0.25])
def test_fit_fold_trains_on_every_other_fold_unless_asked_to_hold_out(
    monkeypatch: pytest.MonkeyPatch, val_fraction: float
) -> None:
    import fercurate.train as train_mod

    rng = np.random.default_rng(0)
    n, classes = 60, ["a", "b"]
    x = rng.integers(0, 256, (n, 48, 48), dtype=np.uint8)
    labels = np.arange(n) % 2
    groups = np.array([f"id:{i}" for i in range(n)])
    folds = assign_folds(labels, groups, 3, 0)
    seen: dict[str, Any] = {}

    def fake_train(config, fit, held_out, classes, progress=None, record_from=None):  # type: ignore[no-untyped-def]
        seen.update(fit=len(fit), held_out=None if held_out is None else len(held_out), record_from=record_from)
        fit_probs = np.tile(np.array([0.9, 0.1], np.float32), (len(fit), 1))
        return type("R", (), {"model": None, "fit_probs": fit_probs})()

    monkeypatch.setattr(train_mod, "train", fake_train)
    monkeypatch.setattr(train_mod, "predict_proba", lambda model, x, **kw: np.full((len(x), 2), 0.5, np.float32))
    from fercurate.train import make_config

    config = make_config("tiny", epochs=8)
    out, fit = flag_mod.fit_fold(x, labels, groups, folds, classes, config, 0, val_fraction, 0)
    rest = int((folds != 0).sum())
    assert out.shape == ((folds == 0).sum(), 2)
    # the fit covers exactly the rows the model trained on, over the last half of its schedule
    trained_on = ~np.isnan(fit).any(axis=1)
    assert fit.shape == (n, 2) and int(trained_on.sum()) == seen["fit"] and not trained_on[folds == 0].any()
    assert np.allclose(fit[trained_on], [0.9, 0.1]) and seen.pop("record_from") == 4
    if val_fraction == 0:  # the default: the whole schedule on all the other folds' rows
        assert seen == {"fit": rest, "held_out": None}
    else:
        assert seen["fit"] + seen["held_out"] == rest and seen["held_out"] == pytest.approx(rest * val_fraction, abs=3)


def test_assign_folds_rejects_fewer_groups_than_folds() -> None:
    with pytest.raises(InputError, match="fewer than folds 5"):
        assign_folds(np.array([0, 1, 0, 1]), np.array(["a", "a", "b", "c"]), 5, 0)


def test_flag_finds_the_planted_flips_with_an_oracle_model(
    ws: Workspace, dataset: tuple[Path, dict[str, tuple[str, str]]]
) -> None:
    _, truth = dataset
    _, df = ws.read("v0002")
    flipped = {p for p, (g, t) in truth.items() if g != t}
    flagged = df[df[FLAGGED].fillna(False).astype(bool)]
    assert set(flagged[Col.PATH]) == flipped
    for row in flagged.itertuples():
        assert row.suggested_label == truth[row.path][1]


def test_flag_rejects_bad_options_with_a_clear_message(ws: Workspace) -> None:
    with pytest.raises(InputError, match="folds 1"):
        flag(ws, FlagParams(folds=1))
    with pytest.raises(InputError, match="self_confidence"):
        flag(ws, FlagParams(method="entropy"))
    with pytest.raises(InputError, match="fit_weight 1.5 must be from 0 to 1"):
        flag(ws, FlagParams(fit_weight=1.5))
    with pytest.raises(InputError, match="fewer than 31 active rows"):
        flag(ws, FlagParams(folds=30))
    with pytest.raises(InputError, match="unknown preset"):
        flag(ws, FlagParams(preset="huge"))
    with pytest.raises(InputError, match="val_fraction 0.5 must be from 0 to below 0.5"):
        flag(ws, FlagParams(val_fraction=0.5))


# -- the decision log ------------------------------------------------------------------------------
def test_replay_undo_pops_the_images_last_decision(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path / "d.jsonl")
    for decision, label in [("relabel", "sad"), ("keep", None), ("undo", None)]:
        log.append(Decision(image_id="a", decision=decision, label=label))
    for decision in ("remove", "undo", "undo"):
        log.append(Decision(image_id="b", decision=decision))
    log.append(Decision(image_id="c", decision="keep"))
    current = log.current()
    assert current["a"].decision == "relabel" and current["a"].label == "sad"
    assert "b" not in current  # the second undo had nothing left to pop
    assert current["c"].decision == "keep"
    assert log.history() == ["a", "c"]
    assert len(log.path.read_text().splitlines()) == 7


def test_a_torn_last_line_is_skipped_and_the_next_append_starts_fresh(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path / "d.jsonl")
    log.append(Decision(image_id="a", decision="keep"))
    with open(log.path, "a") as fh:
        fh.write('{"image_id": "b", "decis')  # a crash mid-write
    assert list(log.current()) == ["a"]
    log.append(Decision(image_id="c", decision="remove"))
    assert sorted(log.current()) == ["a", "c"]


def test_decisions_are_validated() -> None:
    with pytest.raises(InputError, match="needs the new label"):
        Decision(image_id="a", decision="relabel")
    with pytest.raises(InputError, match="one of"):
        Decision(image_id="a", decision="maybe")
    assert replay([]) == {}


# -- the server ------------------------------------------------------------------------------------
@pytest.fixture
def server(ws: Workspace) -> Iterator[Any]:
    srv = make_server(ws, ServeParams())
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def call(srv: Any, method: str, path: str, body: Any = None, token: bool = True, **headers: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_port, timeout=10)
    if token:
        path += ("&" if "?" in path else "?") + "token=" + srv.state.token
    data = json.dumps(body).encode() if body is not None else None
    hdrs = {"Content-Type": "application/json", **headers} if data else dict(headers)
    conn.request(method, path, body=data, headers=hdrs)
    response = conn.getresponse()
    out = response.status, response.read()
    conn.close()
    return out


def test_server_listens_on_loopback_only_and_requires_the_token(server: Any) -> None:
    assert server.server_address[0] == "127.0.0.1"
    assert server.url.startswith(f"http://127.0.0.1:{server.server_port}/?token=")
    for path in ("/", "/api/queue", "/static/review.js", "/nothing"):
        assert call(server, "GET", path, token=False)[0] == 403
        assert call(server, "GET", path + "?token=wrong", token=False)[0] == 403
    status, page = call(server, "GET", "/")
    assert status == 200 and b"__TOKEN__" not in page and server.state.token.encode() in page
    assert call(server, "POST", "/api/decide", {"image_id": "x", "decision": "keep"}, token=False)[0] == 403
    # a foreign Host header (DNS rebinding) is refused even with the token
    assert call(server, "GET", "/api/queue", Host="evil.example:80")[0] == 403


def test_server_serves_only_queued_images_and_no_paths(server: Any) -> None:
    queue = json.loads(call(server, "GET", "/api/queue")[1])
    first = queue["items"][0]["image_id"]
    status, png = call(server, "GET", f"/img/{first}.png")
    assert status == 200 and Image.open(io.BytesIO(png)).size == (48, 48)
    for path in (
        "/img/../../etc/passwd",
        "/img/..%2F..%2Fetc%2Fpasswd.png",
        "/img/0000000000000000.png",
        "/static/../flag.py",
        "/static/index.html/../../scan.py",
        "/../../../etc/passwd",
    ):
        assert call(server, "GET", path)[0] == 404, path


def test_queue_lists_flagged_items_with_probabilities(server: Any, ws: Workspace) -> None:
    queue = json.loads(call(server, "GET", "/api/queue")[1])
    _, df = ws.read("v0002")
    assert queue["flag_version"] == "v0002" and queue["classes"] == list(CLASSES)
    assert queue["flagged"] == int(df[FLAGGED].fillna(False).sum())
    assert queue["total"] == queue["budget"] == int(df[IN_BUDGET].fillna(False).sum()) == len(queue["items"]) > 0
    item = queue["items"][0]
    assert set(item) >= {"image_id", "given", "suggested", "probs", "score", "decision", "rank", "top3"}
    assert item["decision"] is None and queue["decided"] == 0
    assert sum(item["probs"].values()) == pytest.approx(1.0, abs=1e-3)
    # the three most probable classes, most probable first, with their probabilities
    top = sorted(item["probs"].items(), key=lambda kv: -kv[1])[:3]
    assert [c for c, _ in item["top3"]] == [c for c, _ in top]
    assert [p for _, p in item["top3"]] == [p for _, p in top]
    # the estimates: the image's own, and the queue's expected precision down to its rank
    row = df.set_index(Col.IMAGE_ID).loc[item["image_id"]]
    assert item["p_wrong"] == pytest.approx(row[P_WRONG], abs=1e-4)
    p_wrong = [it["p_wrong"] for it in queue["items"]]
    for k in (1, len(p_wrong)):
        assert queue["items"][k - 1]["expected_precision"] == pytest.approx(np.mean(p_wrong[:k]), abs=1e-3)
    assert item["votes"] is None  # this dataset has no annotator votes


def flagged_with(ws: Workspace, **columns: Any) -> str:
    """Commit a copy of the flag version v0002 with extra columns, as a flag version; returns its id."""
    info, df = ws.read("v0002")
    for name, values in columns.items():
        df[name] = values
    with ws.lock("test"):
        return ws.commit(df, stage=flag_mod.STAGE, parent=info, params={}, extra=info.extra).version


def test_page_shows_the_vote_histogram_when_the_manifest_has_votes(ws: Workspace) -> None:
    _, df = ws.read("v0002")
    rng = np.random.default_rng(0)
    votes = rng.multinomial(10, [0.5, 0.3, 0.1, 0.1], size=len(df))
    columns: dict[str, Any] = {f"votes_{c}": pd.array(votes[:, j], dtype="Int64") for j, c in enumerate(CLASSES)}
    columns["vote_n"] = pd.array(votes.sum(axis=1), dtype="Int64")
    columns["votes_contempt"] = pd.array([pd.NA] * len(df), dtype="Int64")  # a class no row has votes for
    version = flagged_with(ws, **columns)
    srv = make_server(ws, ServeParams(version=version))
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        items = json.loads(call(srv, "GET", "/api/queue")[1])["items"]
        script = call(srv, "GET", "/static/review.js")[1].decode()
        page = call(srv, "GET", "/")[1].decode()
    finally:
        srv.shutdown()
        srv.server_close()
    by_id = df.reset_index(drop=True).set_index(Col.IMAGE_ID)
    for item in items:
        i = by_id.index.get_loc(item["image_id"])
        expected = {c: int(votes[i, j]) for j, c in enumerate(CLASSES)}
        assert item["votes"]["counts"] == expected and item["votes"]["n"] == 10
        assert list(item["votes"]["counts"].values()) == sorted(expected.values(), reverse=True)
    # the page has the histogram's place and the script fills it from item.votes
    assert 'id="votes"' in page and 'id="vote-bars"' in page and "item.votes" in script


def test_budget_limits_the_page_and_the_rest_stay_flagged(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flag_mod, "cross_fit", oracle_cross_fit)
    result = flag(ws, FlagParams(folds=3, preset="tiny", top_per_class=2, budget=3))
    assert result.budget == 3 and result.flagged > 3
    _, df = ws.read(result.version.version)
    flagged = df[df[FLAGGED].fillna(False).astype(bool)]
    # every flag has a rank, 1..flagged in score order; only the top 3 are in the budget
    assert sorted(flagged[QUEUE_RANK].astype(int)) == list(range(1, len(flagged) + 1))
    assert flagged.sort_values(QUEUE_RANK)[MISLABEL_SCORE].is_monotonic_decreasing
    assert (flagged[IN_BUDGET] == (flagged[QUEUE_RANK] <= 3)).all()
    assert df.loc[~df[FLAGGED].fillna(False).astype(bool), QUEUE_RANK].isna().all()
    state = make_server(ws, ServeParams())
    try:
        assert state.state.budget == len(state.state.items) == 3 and state.state.flagged == len(flagged)
    finally:
        state.server_close()
    # the report says the same: the budget and the expected precision at it
    table = {row["rank"]: row["expected_precision"] for row in result.precision_table}
    ranked = flagged.sort_values(QUEUE_RANK)[P_WRONG].to_numpy()
    assert table[3] == pytest.approx(ranked[:3].mean(), abs=1e-4)
    assert table[len(flagged)] == pytest.approx(ranked.mean(), abs=1e-4)
    with pytest.raises(InputError, match="budget -1"):
        flag(ws, FlagParams(folds=3, preset="tiny", budget=-1))


def test_decide_appends_to_the_log_at_once_and_validates(server: Any, ws: Workspace) -> None:
    items = json.loads(call(server, "GET", "/api/queue")[1])["items"]
    a, b = items[0], items[1]
    decision = {"image_id": a["image_id"], "decision": "relabel", "label": "sad"}
    status, body = call(server, "POST", "/api/decide", decision)
    assert status == 200 and json.loads(body)["decided"] == 1
    lines = log_path(ws.root).read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["image_id"] == a["image_id"] and record["label"] == "sad" and record["by"] == "human"
    assert record["given"] == a["given"] and record["flag_version"] == "v0002"
    # picking the given class is a keep
    call(server, "POST", "/api/decide", {"image_id": b["image_id"], "decision": "relabel", "label": b["given"]})
    assert json.loads(log_path(ws.root).read_text().splitlines()[1])["decision"] == "keep"
    bad = [
        {"image_id": "nope", "decision": "keep"},
        {"image_id": a["image_id"], "decision": "relabel", "label": "angry"},
        {"image_id": a["image_id"], "decision": "maybe"},
        {"image_id": items[2]["image_id"], "decision": "undo"},
    ]
    for body_ in bad:
        assert call(server, "POST", "/api/decide", body_)[0] == 400, body_
    assert call(server, "POST", "/api/decide", [1, 2])[0] == 400
    assert len(log_path(ws.root).read_text().splitlines()) == 2
    queue = json.loads(call(server, "GET", "/api/queue")[1])
    assert queue["decided"] == 2 and queue["history"] == [a["image_id"], b["image_id"]]


def test_a_deeply_nested_body_gets_400_not_a_dropped_connection(server: Any) -> None:
    body = b"[" * 8000 + b"]" * 8000  # 16 KB, within the size limit; json.loads recurses 8,000 deep
    conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
    headers = {"Content-Type": "application/json"}
    conn.request("POST", "/api/decide?token=" + server.state.token, body=body, headers=headers)
    response = conn.getresponse()
    assert response.status == 400 and b"JSON object" in response.read()
    conn.close()
    assert call(server, "GET", "/api/queue")[0] == 200  # and the server still serves


def test_make_server_needs_a_flag_version(tmp_path: Path, dataset: tuple[Path, Any]) -> None:
    ws = Workspace(tmp_path / "plain")
    scan(ws, ScanParams(dataset=dataset[0]))
    with pytest.raises(WorkspaceError, match="relabel-review flag"):
        make_server(ws, ServeParams())


# -- apply -----------------------------------------------------------------------------------------
def queue_ids(ws: Workspace) -> list[str]:
    _, df = ws.read("v0002")
    flagged = df[df[FLAGGED].fillna(False).astype(bool)]
    return flagged.sort_values(MISLABEL_SCORE, ascending=False)[Col.IMAGE_ID].tolist()


def test_apply_relabels_removes_and_records_why(ws: Workspace) -> None:
    ids = queue_ids(ws)
    _, before = ws.read("v0002")
    given = before.set_index(Col.IMAGE_ID)[Col.LABEL]
    new_label = next(c for c in CLASSES if c != given[ids[0]])
    log = DecisionLog(log_path(ws.root))
    log.append(Decision(image_id=ids[0], decision="relabel", label=new_label))
    log.append(Decision(image_id=ids[1], decision="remove"))
    log.append(Decision(image_id=ids[2], decision="keep"))
    log.append(Decision(image_id=ids[3], decision="relabel", label=new_label))
    log.append(Decision(image_id=ids[3], decision="undo"))
    result = apply(ws, ApplyParams())
    assert (result.relabeled_by_human, result.removed, result.kept, result.relabeled_by_model) == (1, 1, 1, 0)
    _, after = ws.read(result.version.version)
    rows = after.set_index(Col.IMAGE_ID)
    assert rows.loc[ids[0], Col.LABEL] == new_label
    assert rows.loc[ids[0], Col.LABEL_ORIGINAL] == before.set_index(Col.IMAGE_ID).loc[ids[0], Col.LABEL_ORIGINAL]
    assert rows.loc[ids[0], Col.REASON] == f"relabel:{given[ids[0]]}->{new_label} by human"
    assert rows.loc[ids[1], Col.STATUS] == REMOVED
    assert rows.loc[ids[1], Col.REASON] == "relabel_review:removed by human"
    for i in (2, 3):
        assert rows.loc[ids[i], Col.LABEL] == given[ids[i]] and rows.loc[ids[i], Col.STATUS] == ACTIVE
    assert ws.resolve(result.version.version).stage == "relabel-apply"


def test_applying_the_same_log_twice_changes_nothing(ws: Workspace) -> None:
    ids = queue_ids(ws)
    log = DecisionLog(log_path(ws.root))
    log.append(Decision(image_id=ids[0], decision="relabel", label="surprise"))
    log.append(Decision(image_id=ids[1], decision="remove"))
    first = apply(ws, ApplyParams(auto_accept=0.3))
    second = apply(ws, ApplyParams())
    assert second.changed == 0 and second.already_applied == first.changed - first.relabeled_by_model
    assert second.notes == []  # no model relabels, no caveat about them
    third = apply(ws, ApplyParams(auto_accept=0.3))
    assert third.changed == 0
    frames = [ws.read(r.version.version)[1].set_index(Col.IMAGE_ID) for r in (first, second, third)]
    cols = [Col.LABEL, Col.STATUS, Col.REASON]
    for other in frames[1:]:
        pd.testing.assert_frame_equal(frames[0][cols], other[cols])


def test_auto_accept_relabels_confident_undecided_flags_as_the_model(ws: Workspace) -> None:
    ids = queue_ids(ws)
    log = DecisionLog(log_path(ws.root))
    log.append(Decision(image_id=ids[0], decision="keep"))
    _, before = ws.read("v0002")
    rows = before.set_index(Col.IMAGE_ID)
    p_suggested = {iid: float(rows.loc[iid, P_SUGGESTED]) for iid in ids}
    threshold = float(np.median(list(p_suggested.values())))
    result = apply(ws, ApplyParams(auto_accept=threshold))
    expected = {iid for iid, p in p_suggested.items() if p >= threshold and iid != ids[0]}
    assert result.relabeled_by_model == len(expected) > 0
    # the accepted set's expected precision is the mean of its members' estimates, each >= the target
    assert result.auto_expected_precision == pytest.approx(np.mean([p_suggested[i] for i in expected]))
    assert result.auto_expected_precision >= threshold
    # and says how far such estimates held on real faces
    assert result.notes == [AUTO_ACCEPT_CAVEAT]
    _, after = ws.read(result.version.version)
    out = after.set_index(Col.IMAGE_ID)
    for iid in ids:
        if iid in expected:
            assert out.loc[iid, Col.LABEL] == rows.loc[iid, SUGGESTED_LABEL]
            assert out.loc[iid, Col.REASON].endswith("by model")
        else:
            assert out.loc[iid, Col.LABEL] == rows.loc[iid, Col.LABEL]
    assert len(log.records()) == 1  # the model's picks live in the version, not in the people's log


def test_apply_rejects_bad_auto_accept(ws: Workspace) -> None:
    with pytest.raises(InputError, match="precision in"):
        apply(ws, ApplyParams(auto_accept=1.5))
    with pytest.raises(InputError, match="relabel-review flag"):
        apply(ws, ApplyParams(version="v0000", auto_accept=0.9))


decision_lists = st.lists(
    st.tuples(st.integers(0, 5), st.sampled_from(["relabel", "keep", "remove", "undo"]), st.sampled_from(CLASSES)),
    max_size=12,
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(decisions=decision_lists, auto=st.sampled_from([None, 0.3]))
def test_property_apply_is_idempotent(oracle_root: Path, decisions: list[tuple[int, str, str]], auto: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(oracle_root, Path(tmp) / "ws")
        ws = Workspace(Path(tmp) / "ws")
        _, df = ws.read("v0002")
        ids = df[Col.IMAGE_ID].tolist()
        log = DecisionLog(log_path(ws.root))
        for i, decision, label in decisions:
            log.append(Decision(image_id=ids[i], decision=decision, label=label if decision == "relabel" else None))
        if not log.current() and auto is None:  # nothing to apply: an error, and no version written
            before = len(ws.versions())
            with pytest.raises(InputError, match="nothing to apply"):
                apply(ws, ApplyParams())
            assert len(ws.versions()) == before
            return
        first = apply(ws, ApplyParams(auto_accept=auto))
        second = apply(ws, ApplyParams(auto_accept=auto))
        assert second.changed == 0
        _, a = ws.read(first.version.version)
        _, b = ws.read(second.version.version)
        cols = [Col.IMAGE_ID, Col.LABEL, Col.STATUS, Col.REASON]
        pd.testing.assert_frame_equal(a[cols], b[cols])
        # what stands in the log is what the version says
        for image_id, dec in log.current().items():
            row = a[a[Col.IMAGE_ID] == image_id].iloc[0]
            if dec.decision == "relabel" and df.loc[df[Col.IMAGE_ID] == image_id, Col.STATUS].iloc[0] == ACTIVE:
                assert row[Col.LABEL] == dec.label
            if dec.decision == "remove":
                assert row[Col.STATUS] != ACTIVE


# -- the CLI ---------------------------------------------------------------------------------------
runner = CliRunner()


def test_cli_help_names_the_three_commands_with_examples() -> None:
    result = runner.invoke(app, ["relabel-review", "--help"])
    assert result.exit_code == 0
    for name in ("flag", "serve", "apply"):
        assert name in result.output
        sub = runner.invoke(app, ["relabel-review", name, "--help"])
        assert sub.exit_code == 0 and "Example:" in sub.output


def test_cli_flag_and_apply_json(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flag_mod, "cross_fit", oracle_cross_fit)
    result = runner.invoke(
        app, ["relabel-review", "flag", "-w", str(ws.root), "--folds", "3", "--preset", "tiny", "--json"]
    )
    assert result.exit_code == 0, result.output
    flagged = json.loads(result.stdout)
    assert flagged["flagged"] == len(CLASSES) * FLIPS_PER_CLASS and flagged["version"] == "v0003"
    result = runner.invoke(app, ["relabel-review", "apply", "-w", str(ws.root), "--auto-accept", "0.2", "--json"])
    assert result.exit_code == 0, result.output
    applied = json.loads(result.stdout)
    _, df = ws.read("v0003")
    sure = df[df[FLAGGED].fillna(False).astype(bool) & (df[P_SUGGESTED] >= 0.2)]
    assert applied["relabeled_by_model"] == len(sure) > 0 and applied["parent"] == "v0003"
    assert flagged["budget"] == flagged["flagged"] and flagged["expected_precision"][-1]["rank"] == flagged["flagged"]


def test_cli_flag_summary_gives_the_queue_estimates(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flag_mod, "cross_fit", oracle_cross_fit)
    result = runner.invoke(
        app, ["relabel-review", "flag", "-w", str(ws.root), "--folds", "3", "--preset", "tiny"], terminal_width=200
    )
    assert result.exit_code == 0, result.output
    for claim in ("expected precision of the top k", "estimated wrong labels", "review budget", "anchors the surest"):
        assert claim in result.output


def test_cli_errors_are_one_red_line(ws: Workspace) -> None:
    result = runner.invoke(app, ["relabel-review", "flag", "-w", str(ws.root), "--folds", "1"])
    assert result.exit_code == 1 and "--folds 1" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["relabel-review", "apply", "-w", str(ws.root), "--auto-accept", "2"])
    assert result.exit_code == 1 and "precision in (0, 1]" in result.output
    result = runner.invoke(app, ["relabel-review", "serve", "-w", str(ws.root), "--port", "70000"])
    assert result.exit_code == 1 and "--port 70000" in result.output


def test_cli_apply_with_nothing_to_apply_fails_without_writing(ws: Workspace) -> None:
    before = [v.version for v in ws.versions()]
    result = runner.invoke(app, ["relabel-review", "apply", "-w", str(ws.root)])
    assert result.exit_code == 1
    assert "nothing to apply" in result.output and "--auto-accept" in result.output
    assert len(result.output.strip().splitlines()) == 1  # one line, no traceback
    assert [v.version for v in ws.versions()] == before
