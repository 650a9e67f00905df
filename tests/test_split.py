"""fercurate split: partition and group invariants (hypothesis), tolerances, keep-test, CLI and errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from conftest import write_tree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fercurate.cli import app
from fercurate.errors import InputError
from fercurate.manifest import ACTIVE, BASE_COLUMNS, INVALID, REMOVED, SOURCE_ORIGINAL, SPLITS, Col
from fercurate.scan import ScanParams, scan
from fercurate.split import (
    DUP_GROUP,
    STRATEGIES,
    SplitParams,
    assign,
    assign_splits,
    connected_groups,
    fold_plan,
    group_columns,
    parse_ratios,
    split,
    split_tables,
    stratum_targets,
)
from fercurate.workspace import Workspace

runner = CliRunner()
PROPERTY = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- building manifests ----------------------------------------------------------------------------
def frame(
    labels: list[str],
    *,
    splits: list[str] | None = None,
    statuses: list[str] | None = None,
    sources: list[str] | None = None,
    dup: list[int | None] | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """A manifest frame with the base columns (image ids in random order, as real ids are)."""
    n = len(labels)
    rng = np.random.default_rng(seed)
    splits = splits or list(rng.choice(SPLITS, size=n))
    df = pd.DataFrame(
        {
            Col.IMAGE_ID: [f"{i:016x}" for i in rng.permutation(n * 3)[:n]],
            Col.PATH: [f"img/{i}.png" for i in range(n)],
            Col.SPLIT: splits,
            Col.LABEL: labels,
            Col.SPLIT_ORIGINAL: splits,
            Col.LABEL_ORIGINAL: labels,
            Col.SOURCE: sources or [SOURCE_ORIGINAL] * n,
            Col.STATUS: statuses or [ACTIVE] * n,
            Col.REASON: None,
            Col.WIDTH: 48,
            Col.HEIGHT: 48,
            Col.MODE: "L",
            Col.SHA256: None,
        }
    )
    if dup is not None:
        df[DUP_GROUP] = pd.array(dup, dtype="Int64")
    assert list(df.columns[: len(BASE_COLUMNS)]) == list(BASE_COLUMNS)
    return df


def with_groups(draw: st.DrawFn, n: int, max_fraction: float = 0.3) -> list[int | None]:
    """dup_group values: disjoint runs of 2-4 random rows share an id, the rest are null."""
    order = draw(st.permutations(range(n)))
    grouped = draw(st.integers(0, int(n * max_fraction)))
    dup: list[int | None] = [None] * n
    i = g = 0
    while i < grouped:
        size = draw(st.integers(2, 4))
        for row in order[i : i + size]:
            dup[row] = g
        i += size
        g += 1
    return dup


@st.composite
def manifests(draw: st.DrawFn) -> pd.DataFrame:
    """Small random manifests: any classes, sources, statuses, splits, dup groups, a subject column."""
    n = draw(st.integers(1, 120))
    classes = draw(st.lists(st.sampled_from(["happy", "sad", "neutral", "surprise", "fear"]), min_size=1, max_size=4))
    labels = draw(st.lists(st.sampled_from(classes), min_size=n, max_size=n))
    splits = draw(st.lists(st.sampled_from(SPLITS), min_size=n, max_size=n))
    statuses = draw(st.lists(st.sampled_from([ACTIVE, ACTIVE, ACTIVE, REMOVED, INVALID]), min_size=n, max_size=n))
    sources = draw(st.lists(st.sampled_from([SOURCE_ORIGINAL, "affectnet"]), min_size=n, max_size=n))
    df = frame(labels, splits=splits, statuses=statuses, sources=sources, dup=with_groups(draw, n))
    if draw(st.booleans()):
        df["subject"] = draw(st.lists(st.one_of(st.none(), st.integers(0, n // 3 + 1)), min_size=n, max_size=n))
    return df


@st.composite
def ratio_triples(draw: st.DrawFn) -> tuple[float, float, float]:
    return draw(st.sampled_from([(80, 10, 10), (70, 15, 15), (60, 20, 20), (90, 10, 0), (74.7, 24.7, 0.6), (1, 0, 0)]))


def group_cols_of(df: pd.DataFrame) -> list[str]:
    return ["subject"] if "subject" in df.columns else []


def naive_components(df: pd.DataFrame, cols: list[str]) -> list[set[int]]:
    """Union-find written the slow obvious way, to check connected_groups against."""
    parent = list(range(len(df)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for col in cols:
        first: dict[object, int] = {}
        for i, v in enumerate(df[col].tolist()):
            if v is None or pd.isna(v):
                continue
            if v in first:
                parent[find(i)] = find(first[v])
            else:
                first[v] = i
    comps: dict[int, set[int]] = {}
    for i in range(len(df)):
        comps.setdefault(find(i), set()).add(i)
    return list(comps.values())


# -- properties ------------------------------------------------------------------------------------
@PROPERTY
@given(df=manifests(), ratios=ratio_triples(), seed=st.integers(0, 2**16))
def test_every_active_row_lands_in_one_split_and_others_are_untouched(df, ratios, seed) -> None:
    new = assign_splits(df, ratios, seed, group_cols_of(df))
    assert new.index.equals(df.index) and len(new) == len(df)
    active = df[Col.STATUS] == ACTIVE
    assert new[active].isin(SPLITS).all()
    pd.testing.assert_series_equal(new[~active], df.loc[~active, Col.SPLIT])
    if ratios[2] == 0:
        assert not (new[active] == "test").any()
    if ratios[1] == 0:
        assert not (new[active] == "val").any()


@PROPERTY
@given(df=manifests(), ratios=ratio_triples(), seed=st.integers(0, 2**16), keep_test=st.booleans())
def test_no_group_spans_two_splits(df, ratios, seed, keep_test) -> None:
    new = assign_splits(df, ratios, seed, group_cols_of(df), keep_test=keep_test)
    act = df[df[Col.STATUS] == ACTIVE].reset_index(drop=True)
    after = new[df[Col.STATUS] == ACTIVE].reset_index(drop=True)
    for comp in naive_components(act, [DUP_GROUP, *group_cols_of(df)]):
        assert after.iloc[sorted(comp)].nunique() == 1, comp


@PROPERTY
@given(df=manifests())
def test_connected_groups_match_a_naive_union_find(df) -> None:
    cols = [DUP_GROUP, *group_cols_of(df)]
    ids = connected_groups(df, cols)
    expected = {frozenset(c) for c in naive_components(df, cols)}
    got: dict[int, set[int]] = {}
    for i, g in enumerate(ids):
        got.setdefault(int(g), set()).add(i)
    assert {frozenset(c) for c in got.values()} == expected


@PROPERTY
@given(df=manifests(), ratios=ratio_triples(), seed=st.integers(0, 2**16), keep_test=st.booleans())
def test_same_seed_same_assignment_whatever_the_row_order(df, ratios, seed, keep_test) -> None:
    cols = group_cols_of(df)
    first = assign_splits(df, ratios, seed, cols, keep_test)
    again = assign_splits(df, ratios, seed, cols, keep_test)
    pd.testing.assert_series_equal(first, again)
    shuffled = df.sample(frac=1.0, random_state=seed)
    reordered = assign_splits(shuffled, ratios, seed, cols, keep_test)
    pd.testing.assert_series_equal(reordered.sort_index(), first.sort_index())


@PROPERTY
@given(df=manifests(), ratios=ratio_triples(), seed=st.integers(0, 2**16))
def test_keep_test_keeps_the_test_rows(df, ratios, seed) -> None:
    new = assign_splits(df, ratios, seed, group_cols_of(df), keep_test=True)
    was_test = (df[Col.STATUS] == ACTIVE) & (df[Col.SPLIT] == "test")
    assert (new[was_test] == "test").all()
    # only rows grouped with a kept test row may join test
    joined = (df[Col.STATUS] == ACTIVE) & (df[Col.SPLIT] != "test") & (new == "test")
    done = assign(df, ratios, seed, group_cols_of(df), keep_test=True)
    assert done.pulled_into_test == int(joined.sum())
    if ratios[1] > 0 and joined.sum() == 0:
        assert done.pulled_into_test == 0


@st.composite
def balanced_enough(draw: st.DrawFn) -> tuple[pd.DataFrame, tuple[float, float, float]]:
    """Manifests the promise covers: 3-5 classes of 500+ images, <= 10% of rows in small dup groups."""
    sizes = draw(st.lists(st.integers(500, 900), min_size=3, max_size=5))
    labels = [f"class{c}" for c, size in enumerate(sizes) for _ in range(size)]
    n = len(labels)
    two_sources = draw(st.booleans())
    sources = [SOURCE_ORIGINAL if i % 3 else "affectnet" for i in range(n)] if two_sources else None
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    rows = rng.permutation(n)[: n // 10]
    dup: list[int | None] = [None] * n
    for g, start in enumerate(range(0, len(rows) - 3, 3)):
        for r in rows[start : start + int(rng.integers(2, 4))]:
            dup[r] = g
    # start lopsided, as real FER data arrives
    splits = list(rng.choice(SPLITS, size=n, p=[0.747, 0.247, 0.006]))
    ratios = draw(st.sampled_from([(80, 10, 10), (70, 15, 15), (60, 20, 20), (85, 15, 0)]))
    return frame(labels, splits=splits, sources=sources, dup=dup, seed=seed), ratios


@settings(max_examples=10, deadline=None)
@given(case=balanced_enough(), seed=st.integers(0, 2**16))
def test_class_shares_within_one_point_when_the_data_allows(case, seed) -> None:
    df, ratios = case
    new = df.copy()
    new[Col.SPLIT] = assign_splits(df, ratios, seed)
    counts, pct = split_tables(new)
    for split_name, ratio in zip(SPLITS, ratios, strict=True):
        assert abs(pct.loc["all", split_name] - ratio) <= 1.0
        if ratio == 0:
            continue
        deviation = (pct[split_name] - pct["total"]).drop("all").abs()
        assert deviation.max() <= 1.0, (split_name, deviation.to_dict())
    if df[Col.SOURCE].nunique() > 1:
        # each split gets its share of each source as well
        share = pd.crosstab(new[Col.SPLIT], new[Col.SOURCE], normalize="index") * 100
        whole = new[Col.SOURCE].value_counts(normalize=True) * 100
        assert (share - whole).abs().max().max() <= 1.0


def test_another_seed_gives_another_assignment() -> None:
    rng = np.random.default_rng(1)
    df = frame(list(rng.choice(["happy", "sad", "neutral"], size=400)))
    a = assign_splits(df, (80, 10, 10), seed=0)
    b = assign_splits(df, (80, 10, 10), seed=1)
    assert (a != b).sum() > 20
    assert a.value_counts().to_dict() == b.value_counts().to_dict()


def test_groups_are_connected_across_columns() -> None:
    # rows 0-1 share a dup_group, rows 1-2 a subject: 0, 1 and 2 are one group; 3 is alone
    df = frame(["happy"] * 4, dup=[7, 7, None, None])
    df["subject"] = ["a", "b", "b", None]
    ids = connected_groups(df, [DUP_GROUP, "subject"])
    assert ids[0] == ids[1] == ids[2] != ids[3]


def test_a_keep_test_group_pulls_its_members_into_test() -> None:
    df = frame(["happy"] * 300, splits=["train"] * 299 + ["test"], dup=[1] + [None] * 298 + [1])
    done = assign(df, (80, 10, 10), 0, keep_test=True)
    assert done.pulled_into_test == 1 and done.split.iloc[0] == "test" and done.split.iloc[-1] == "test"
    # the rest is split train/val 80:10
    rest = done.split.iloc[1:-1]
    assert rest.value_counts().to_dict() == {"train": 265, "val": 33}


def test_random_group_strategy_keeps_groups_and_sizes() -> None:
    rng = np.random.default_rng(2)
    dup = [int(g) if g < 50 else None for g in rng.integers(0, 500, size=1000)]
    df = frame(list(rng.choice(["happy", "sad"], size=1000)), dup=dup)
    new = assign(df, (80, 10, 10), 3, strategy="random-group").split
    assert new.groupby(df[DUP_GROUP]).nunique().max() == 1
    assert abs((new == "train").mean() - 0.8) < 0.03


def test_stratum_targets_sum_to_strata_and_ratios() -> None:
    n = np.array([105, 33, 7, 1, 250])
    targets = stratum_targets(n, np.array([0.8, 0.1, 0.1]))
    assert (targets.sum(axis=0) == n).all()
    assert np.abs(targets.sum(axis=1) - np.array([0.8, 0.1, 0.1]) * n.sum()).max() <= 1.0
    zero = stratum_targets(n, np.array([0.9, 0.1, 0.0]))
    assert (zero[2] == 0).all()


def test_stratum_targets_round_classes_first_then_sources() -> None:
    # two sources per class; 41-row val/test splits: each class gets 10 or 11 rows of a split in all
    n = np.array([53, 52, 52, 51, 60, 43, 50, 53])
    klass, source = np.repeat(np.arange(4), 2), np.tile(np.arange(2), 4)
    ratios = np.array([0.8, 0.1, 0.1])
    targets = stratum_targets(n, ratios, klass, source)
    assert (targets.sum(axis=0) == n).all() and targets.sum(axis=1).tolist() == [331, 42, 41]
    by_class = np.add.reduceat(targets, np.arange(0, 8, 2), axis=1)
    ideal = targets.sum(axis=1)[:, None] * np.add.reduceat(n, np.arange(0, 8, 2))[None, :] / n.sum()
    assert np.abs(by_class - ideal).max() < 1
    by_source = np.stack([targets[:, source == s].sum(axis=1) for s in (0, 1)], axis=1)
    assert np.abs(by_source - ratios[:, None] * np.array([n[source == 0].sum(), n[source == 1].sum()])).max() < 1.5


@pytest.mark.parametrize(
    ("ratios", "folds", "per_split"),
    [((0.8, 0.1, 0.1), 10, [8, 1, 1]), ((0.7, 0.15, 0.15), 20, [14, 3, 3]), ((0.9, 0.1, 0.0), 10, [9, 1, 0])],
)
def test_fold_plan(ratios, folds, per_split) -> None:
    k, per = fold_plan(np.array(ratios), 20)
    assert k == folds and per.tolist() == per_split


def test_strategies_registry_names_match() -> None:
    assert set(STRATEGIES) == {"stratified-group", "random-group"}
    assert all(name == s.name for name, s in STRATEGIES.items())


# -- ratios ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("80/10/10", (80, 10, 10)),
        ("80,10,10", (80, 10, 10)),
        ("0.8/0.1/0.1", (80, 10, 10)),
        (" 70 / 20 / 10 ", (70, 20, 10)),
        ("90/10/0", (90, 10, 0)),
        ("100/0/0", (100, 0, 0)),
    ],
)
def test_parse_ratios_accepts(text, expected) -> None:
    assert parse_ratios(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("80/10", "needs three numbers"),
        ("80/10/10/0", "needs three numbers"),
        ("80/10/20", "sums to 110"),
        ("-10/60/50", "negative"),
        ("a/b/c", "needs three numbers"),
        ("", "needs three numbers"),
        ("nan/50/50", "needs three numbers"),
        ("0/50/50", "train must be above 0"),
    ],
)
def test_parse_ratios_rejects(text, says) -> None:
    with pytest.raises(InputError) as exc:
        parse_ratios(text)
    assert says in str(exc.value) and f"'{text}'" in str(exc.value) and "80/10/10" in str(exc.value)


@PROPERTY
@given(df=manifests(), ratios=ratio_triples(), seed=st.integers(0, 2**16), data=st.data())
def test_group_by_related_keeps_every_related_group_in_one_split(df, ratios, seed, data) -> None:
    n = len(df)
    related = data.draw(st.lists(st.one_of(st.none(), st.integers(0, n // 4 + 1)), min_size=n, max_size=n))
    df[Col.RELATED_GROUP] = [None if r is None else f"r{r}" for r in related]
    cols = group_columns(df, ["related", *group_cols_of(df)])
    assert Col.RELATED_GROUP in cols and "related" not in cols
    new = assign_splits(df, ratios, seed, cols)
    act = (df[Col.STATUS] == ACTIVE).to_numpy()
    spans = new[act].groupby(df.loc[act, Col.RELATED_GROUP].to_numpy()).nunique()
    assert (spans == 1).all(), spans[spans > 1]


def test_group_by_related_needs_dedup_first() -> None:
    with pytest.raises(InputError, match="group_by 'related' needs the 'related_group' column.*fercurate dedup"):
        group_columns(frame(["happy"] * 5), ["related"])


def test_unknown_group_by_column_lists_the_columns() -> None:
    df = frame(["happy"] * 5)
    with pytest.raises(InputError, match="'subject_id' is not in the manifest; columns: image_id, path"):
        assign_splits(df, (80, 10, 10), 0, ["subject_id"])


# -- end to end ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lopsided split/class tree: 4 classes x 103 images, 2 per class in test, plus bad files."""
    root = tmp_path_factory.mktemp("split-tree") / "data"
    write_tree(root, splits={"train": 76, "val": 25, "test": 2}, seed=3)
    return root


@pytest.fixture(scope="module")
def scanned_template(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("split-ws") / "ws"
    scan(Workspace(root), ScanParams(dataset=dataset, workers=1))
    return root


@pytest.fixture
def scanned(scanned_template: Path, tmp_path: Path) -> Workspace:
    """A fresh copy of a workspace holding the scan of ``dataset`` as v0000."""
    return Workspace(shutil.copytree(scanned_template, tmp_path / "ws"))


def test_split_writes_a_new_version_and_a_chart(scanned: Workspace) -> None:
    _, before = scanned.read("v0000")
    result = split(scanned, SplitParams(seed=5))
    info, after = scanned.read()
    assert info.version == result.version.version == "v0001" and info.stage == "split" and info.parent == "v0000"
    assert info.params["ratios"] == [80, 10, 10] and info.params["seed"] == 5
    merged = before.merge(after, on=Col.IMAGE_ID, suffixes=("_a", "_b"))
    assert (merged["split_original_a"] == merged["split_original_b"]).all()
    inactive = merged[merged["status_a"] != ACTIVE]
    assert len(inactive) == 6 and (inactive["split_a"] == inactive["split_b"]).all()
    active = merged[merged["status_a"] == ACTIVE]
    assert result.moved == int((active["split_a"] != active["split_b"]).sum()) > 0
    assert sum(result.moves.values()) == result.moved
    assert result.chart is not None and result.chart.exists() and result.chart.read_bytes()[:4] == b"\x89PNG"
    assert result.chart.parent == scanned.reports_dir / "v0001"
    assert result.after.loc["all", "total"] == result.rows_active == len(active)
    # 8 rows in test before: 2 per class; 10% after
    assert result.before.loc["all", "test"] == 8 and abs(result.after_pct.loc["all", "test"] - 10) < 0.5
    # 41-row val and test splits: one image is 2.4 pp, so the shares are as close as one image allows
    smallest = min(result.after.loc["all", s] for s in SPLITS)
    assert result.max_deviation_pp <= 100 / smallest
    json.dumps(result.to_dict())
    # splitting the split again with the same seed moves nothing
    assert split(scanned, SplitParams(seed=5)).moved == 0


def test_split_keeps_dup_groups_together(scanned: Workspace) -> None:
    info, df = scanned.read()
    act = df[df[Col.STATUS] == ACTIVE].sort_values(Col.IMAGE_ID)
    # dedup stand-in: pair rows across the old splits (the leakage a re-split must not bring back)
    train_ids = act.loc[act[Col.SPLIT] == "train", Col.IMAGE_ID].to_list()[:30]
    other_ids = act.loc[act[Col.SPLIT] != "train", Col.IMAGE_ID].to_list()[:30]
    dup = pd.Series(pd.NA, index=df.index, dtype="Int64")
    for g, (a, b) in enumerate(zip(train_ids, other_ids, strict=True)):
        dup[df[Col.IMAGE_ID].isin([a, b])] = g
    df[DUP_GROUP] = dup
    scanned.commit(df, stage="dedup", parent=info, params={})
    result = split(scanned, SplitParams(ratios=(70, 15, 15), seed=1))
    _, after = scanned.read()
    assert after[DUP_GROUP].notna().sum() == 60
    assert after.dropna(subset=[DUP_GROUP]).groupby(DUP_GROUP)[Col.SPLIT].nunique().max() == 1
    assert result.groups == 30 and result.rows_in_groups == 60
    assert scanned.resolve().params["group_columns"] == [DUP_GROUP]


def test_split_keep_test_leaves_the_test_split(scanned: Workspace) -> None:
    _, before = scanned.read()
    result = split(scanned, SplitParams(keep_test=True))
    _, after = scanned.read()
    was_test = before[Col.SPLIT] == "test"
    assert (after.loc[was_test, Col.SPLIT] == "test").all()
    assert (after.loc[~was_test & (after[Col.STATUS] == ACTIVE), Col.SPLIT] != "test").all()
    train, val = result.after.loc["all", "train"], result.after.loc["all", "val"]
    assert abs(train / (train + val) - 80 / 90) < 0.01


def test_split_of_an_unknown_version_or_group_column_is_an_error(scanned: Workspace) -> None:
    with pytest.raises(Exception, match="unknown version 'v0042'"):
        split(scanned, SplitParams(version="v0042"))
    with pytest.raises(InputError, match="group_by column 'subject'"):
        split(scanned, SplitParams(group_by=("subject",)))
    assert [v.version for v in scanned.versions()] == ["v0000"]


# -- CLI -------------------------------------------------------------------------------------------
def test_cli_split_json_log_and_chart(scanned: Workspace) -> None:
    ws = str(scanned.root)
    res = runner.invoke(app, ["split", "-w", ws, "--ratios", "70,20,10", "--seed", "3", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["version"] == "v0001" and data["ratios"] == [70, 20, 10] and data["seed"] == 3
    assert data["after"]["counts"]["all"]["total"] == data["rows_active"]
    assert set(data["after"]["percent"]["happy"]) == {"train", "val", "test", "total"}
    assert data["moved"] > 0 and Path(data["chart"]).exists()
    assert data["max_deviation_pp"] >= 0 and isinstance(data["within_tolerance"], bool)
    log = json.loads(runner.invoke(app, ["log", "-w", ws, "--json"]).stdout)
    assert [(e["version"], e["stage"]) for e in log] == [("v0000", "scan"), ("v0001", "split")]
    assert log[1]["params"]["ratios"] == [70, 20, 10]


def test_cli_split_renders_tables(scanned: Workspace) -> None:
    res = runner.invoke(app, ["split", "-w", str(scanned.root), "--keep-test", "--version", "v0000"])
    assert res.exit_code == 0, res.output
    for text in ("v0001 split of v0000", "Active rows by split", "Class share of each split, after", "kept", "chart:"):
        assert text in res.stdout


@pytest.mark.parametrize("bad", ["80/10", "80/10/20", "-5/55/50", "eighty/10/10", "0/50/50"])
def test_cli_bad_ratios_exit_1_with_one_line(scanned: Workspace, bad: str) -> None:
    res = runner.invoke(app, ["split", "-w", str(scanned.root), f"--ratios={bad}"])
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --ratios") and "Traceback" not in res.output
    assert [v.version for v in scanned.versions()] == ["v0000"]


def test_cli_defaults_point_at_the_params_dataclass() -> None:
    cmd = typer.main.get_command(app).commands["split"]  # type: ignore[attr-defined]
    defaults = {p.name: p.default for p in cmd.params}
    params = SplitParams()
    assert parse_ratios(defaults["ratios"]) == params.ratios
    assert defaults["seed"] == params.seed and defaults["keep_test"] == params.keep_test
    assert defaults["strategy"] == params.strategy
    res = runner.invoke(app, ["split", "--help"])
    assert "Example: fercurate split --ratios 80/10/10 --seed 0" in res.output
    assert all(name in res.output for name in STRATEGIES)
