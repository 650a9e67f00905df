"""Annotator votes: FER+ readers, statistics, schemes, pixel matching, import, FER+ scanning."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import blob_image, jpeg_bytes, png_bytes
from typer.testing import CliRunner

from fercurate.cli import app
from fercurate.errors import DatasetError, InputError
from fercurate.manifest import VOTE_COUNT_COLUMNS, Col, VoteCol
from fercurate.scan import ScanParams, scan
from fercurate.votes import VotesParams, import_votes, match_images, scheme_labels
from fercurate.votes.ferplus import read_label_csv, read_new_csv
from fercurate.votes.match import AMBIGUOUS, MATCHED, UNMATCHED
from fercurate.votes.stats import agreement, class_map, entropy_bits, vote_distribution
from fercurate.workspace import Workspace

runner = CliRunner()
EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # FER2013 codes 0-6
FOLDER = {"Training": "FER2013Train", "PublicTest": "FER2013Valid", "PrivateTest": "FER2013Test"}
#: votes (10 FER+ columns) by kind, for an image whose Kaggle label is happy (code 3)
VOTES = {
    "agree": [0, 9, 1, 0, 0, 0, 0, 0, 0, 0],
    "wrong": [8, 1, 0, 1, 0, 0, 0, 0, 0, 0],  # clearly neutral
    "split": [4, 3, 0, 3, 0, 0, 0, 0, 0, 0],
    "nf": [0, 0, 0, 0, 0, 0, 0, 0, 0, 10],
}


@dataclass
class FerPlus:
    """A generated FER2013 + FER+ pair: the CSV, fer2013new.csv, the FER+ folders and a Kaggle tree."""

    root: Path
    csv: Path
    new_csv: Path
    data: Path
    kaggle: Path
    usages: list[str]
    kinds: list[str]
    kept: list[bool]  # FER+ kept the image (the last one of each usage is dropped)
    kaggle_names: list[str]


def _ferplus(tmp: Path, per_usage: int = 6) -> FerPlus:
    rng = np.random.default_rng(7)
    usages = ["Training"] * per_usage + ["PublicTest"] * per_usage + ["PrivateTest"] * per_usage
    images = [blob_image(rng, i % 4) for i in range(len(usages))]
    images[1] = images[0].copy()  # the same photo twice (FER2013 has such rows): one to one
    kinds = [list(VOTES)[i % len(VOTES)] for i in range(len(usages))]
    kept = [(i % per_usage) != per_usage - 1 for i in range(len(usages))]
    root = tmp / "ferplus"
    data = root / "data"
    kaggle = tmp / "kaggle"
    csv_lines = ["emotion,pixels,Usage"]
    new_lines = ["Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"]
    labels: dict[str, list[str]] = {u: [] for u in FOLDER}
    names = []
    for i, (usage, img, kind, keep) in enumerate(zip(usages, images, kinds, kept, strict=True)):
        code = 6 if kind == "nf" else 3  # the given labels: neutral for the not-a-face ones, else happy
        csv_lines.append(f"{code},{' '.join(map(str, img.ravel()))},{usage}")
        name = f"fer{i:07d}.png" if keep else ""
        votes = VOTES[kind]
        new_lines.append(f"{usage},{name},{','.join(map(str, votes))}")
        if keep:
            folder = data / FOLDER[usage]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(png_bytes(img))
            labels[usage].append(f'{name},"(0, 0, 48, 48)",{",".join(map(str, votes))}')
        split = "train" if usage == "Training" else "test"
        kname = f"{split}/{EMOTIONS[code]}/{usage}_{1000 + i}.jpg"
        (kaggle / kname).parent.mkdir(parents=True, exist_ok=True)
        (kaggle / kname).write_bytes(jpeg_bytes(img, quality=85))
        names.append(kname)
    for usage, lines in labels.items():
        (data / FOLDER[usage] / "label.csv").write_text("\n".join(lines) + "\n")
    csv = tmp / "fer2013.csv"
    csv.write_text("\n".join(csv_lines) + "\n")
    new_csv = root / "fer2013new.csv"
    new_csv.write_text("\n".join(new_lines) + "\n")
    return FerPlus(root, csv, new_csv, data, kaggle, usages, kinds, kept, names)


@pytest.fixture(scope="module")
def ferplus(tmp_path_factory: pytest.TempPathFactory) -> FerPlus:
    return _ferplus(tmp_path_factory.mktemp("ferplus"))


# -- readers ---------------------------------------------------------------------------------------
def test_label_csv_reads_names_and_counts(ferplus: FerPlus) -> None:
    table = read_label_csv(ferplus.data / "FER2013Train" / "label.csv", "Training")
    assert table.names[0] == "fer0000000.png"
    assert table.counts.shape == (5, 10)
    assert table.counts[0].tolist() == VOTES["agree"]
    assert table.lines == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('a.png,"(0, 0, 48, 48)",1,2,3', "5 columns, expected 12"),
        ('a.png,"(0, 0, 48, 48)",1,2,3,-1,0,0,0,0,0,0', "the sadness count -1 is negative"),
        ('a.png,"(0, 0, 48, 48)",1,2,x,0,0,0,0,0,0,0', "the surprise count 'x' is not a whole number"),
        ('a.png,"0 0 48 48",1,2,3,0,0,0,0,0,0,0', "face box"),
    ],
)
def test_label_csv_errors_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "label.csv"
    path.write_text('ok.png,"(0, 0, 48, 48)",1,2,3,0,0,0,0,0,0,0\n' + line + "\n")
    with pytest.raises(DatasetError) as exc:
        read_label_csv(path, "Training")
    assert f"{path} line 2: " in str(exc.value) and message in str(exc.value)


def test_new_csv_keeps_dropped_rows_and_checks_the_header(ferplus: FerPlus, tmp_path: Path) -> None:
    table = read_new_csv(ferplus.new_csv)
    assert len(table) == len(ferplus.usages)
    assert [bool(n) for n in table.names] == ferplus.kept
    bad = tmp_path / "new.csv"
    bad.write_text("Usage,Image name,neutral\nTraining,a.png,1\n")
    with pytest.raises(DatasetError, match="line 1: header"):
        read_new_csv(bad)
    bad.write_text(ferplus.new_csv.read_text().replace("PublicTest,", "Public,", 1))
    with pytest.raises(DatasetError, match=r"line \d+: Usage 'Public'"):
        read_new_csv(bad)


# -- statistics and schemes ------------------------------------------------------------------------
def test_agreement_and_entropy() -> None:
    counts = np.array([[10, 0, 0, 0, 0, 0, 0, 0, 0, 0], [5, 5, 0, 0, 0, 0, 0, 0, 0, 0], [0] * 10])
    assert agreement(counts)[:2].tolist() == [1.0, 0.5]
    assert np.isnan(agreement(counts)[2])
    entropy = entropy_bits(counts)
    assert entropy[0] == 0.0 and entropy[1] == pytest.approx(1.0) and np.isnan(entropy[2])


def test_schemes_on_ties_unknown_and_absent_classes() -> None:
    classes = ["happy", "neutral", "sad", "surprise"]
    mapping = class_map(classes)
    assert mapping["happiness"] == "happy" and mapping["anger"] is None and mapping["NF"] is None
    counts = np.array(
        [
            [6, 4, 0, 0, 0, 0, 0, 0, 0, 0],  # neutral has a majority
            [4, 4, 0, 2, 0, 0, 0, 0, 0, 0],  # neutral / happy tie, no majority
            [0, 0, 0, 0, 6, 0, 0, 0, 0, 4],  # anger: no class of this dataset
            [1, 2, 0, 0, 0, 0, 0, 0, 7, 0],  # mostly unknown
        ]
    )
    current = ["neutral", "happy", "sad", "neutral"]
    majority = scheme_labels(counts, mapping, classes, "majority", current)
    assert majority.labels == ["neutral", None, None, None]
    assert majority.reasons[1] == "no_majority" and majority.reasons[2] == "not_a_dataset_class"
    assert majority.reasons[3] == "unknown"
    plurality = scheme_labels(counts, mapping, classes, "plurality", current)
    # a tie keeps the row's label when tied; unknown is an abstention, so happy wins row 4
    assert plurality.labels == ["neutral", "happy", None, "happy"]
    drop = scheme_labels(counts, mapping, classes, "drop", current)
    assert drop.labels == ["neutral", None, None, None]
    assert drop.reasons[1] == "tie"


def test_map_merges_classes_and_checks_the_dataset() -> None:
    classes = ["disgust", "happy"]
    mapping = class_map(classes, {"contempt": "disgust"})
    dist = vote_distribution(np.array([[0, 2, 0, 0, 0, 1, 0, 1, 0, 0]]), mapping, classes)
    assert dist.tolist() == [[0.5, 0.5]]
    with pytest.raises(InputError, match="'sadly' is not a class of the dataset"):
        class_map(classes, {"sadness": "sadly"})
    with pytest.raises(InputError, match="not SOURCE=CLASS"):
        VotesParams(votes=Path("x"), mapping="contempt")
    with pytest.raises(InputError, match="scheme 'vote'"):
        VotesParams(votes=Path("x"), scheme="vote")


# -- pixel matching --------------------------------------------------------------------------------
def _jpeg(img: np.ndarray) -> np.ndarray:
    from io import BytesIO

    from PIL import Image

    return np.asarray(Image.open(BytesIO(jpeg_bytes(img, quality=85))).convert("L"))


def test_match_finds_reencodings_one_to_one_within_usage() -> None:
    rng = np.random.default_rng(3)
    faces = np.stack([blob_image(rng, i % 4) for i in range(10)])
    faces[1] = faces[0]
    rows = np.stack([_jpeg(f) for f in faces])[::-1]  # rows in another order than the queries
    row_usage = ["Training"] * 10
    query = np.concatenate([faces, blob_image(rng, 2)[None]])  # the last one is in no row
    usage = ["Training"] * 9 + ["PublicTest", "Training"]  # the 10th is filed under another Usage
    found = match_images(query, usage, rows, row_usage, max_distance=4.0, min_margin=1.0)
    truth = np.arange(9, -1, -1)  # row of each face
    assert found.status.tolist() == [MATCHED] * 9 + [UNMATCHED, UNMATCHED]
    assert {int(found.row[0]), int(found.row[1])} == {int(truth[0]), int(truth[1])}  # identical pair: one each
    assert (found.row[2:9] == truth[2:9]).all()
    assert (found.distance[:9] < 4).all() and (found.distance[:9] > 0).all()
    exact = match_images(faces[:3], ["Training"] * 3, faces, row_usage, 0.0, 0.0)
    assert exact.distance.tolist() == [0.0, 0.0, 0.0] and len(set(exact.row.tolist())) == 3
    # three identical FER+ images and two rows with those pixels: the third is ambiguous, not doubled
    triple = match_images(faces[[0, 0, 0]], ["Training"] * 3, faces, row_usage, 0.0, 0.0)
    assert sorted(triple.status.tolist()) == [AMBIGUOUS, MATCHED, MATCHED]


# -- import ----------------------------------------------------------------------------------------
def _scanned(tmp_path: Path, dataset: Path) -> Workspace:
    ws = Workspace(tmp_path / "ws")
    scan(ws, ScanParams(dataset=dataset, workers=1))
    return ws


def test_import_label_csv_against_kaggle_folders_by_pixels(ferplus: FerPlus, tmp_path: Path) -> None:
    ws = _scanned(tmp_path, ferplus.kaggle)
    result = import_votes(ws, VotesParams(votes=ferplus.root))
    kept = sum(ferplus.kept)
    assert (result.matched, result.unmatched, result.ambiguous) == (kept, 0, 0)
    _, df = ws.read()
    by_path = df.set_index(Col.PATH)
    for i, name in enumerate(ferplus.kaggle_names):
        row = by_path.loc[name]
        if not ferplus.kept[i]:
            assert pd.isna(row[VoteCol.N]) and pd.isna(row[VoteCol.MAJORITY])
            continue
        assert [int(row[c]) for c in VOTE_COUNT_COLUMNS] == VOTES[ferplus.kinds[i]]
        assert row[VoteCol.MATCH] == "pixels" and 0 < row[VoteCol.MATCH_DISTANCE] < 4
        if ferplus.kinds[i] != "agree" or i > 1:  # the identical pair may swap rows: same pixels
            assert row[VoteCol.IMAGE] == f"fer{i:07d}.png"
    expected = {"agree": "happy", "wrong": "neutral", "split": None, "nf": None}
    for i, name in enumerate(ferplus.kaggle_names):
        if ferplus.kept[i]:
            got = by_path.loc[name, VoteCol.MAJORITY]
            assert (None if pd.isna(got) else got) == expected[ferplus.kinds[i]]
    report = pd.read_csv(result.report)
    assert len(report) == kept and set(report["status"]) == {MATCHED}


def test_import_new_csv_by_row_order_full_and_rebuilt(ferplus: FerPlus, tmp_path: Path) -> None:
    ws = _scanned(tmp_path / "full", ferplus.csv)
    result = import_votes(ws, VotesParams(votes=ferplus.new_csv))
    assert result.method == "row" and result.matched == len(ferplus.usages)
    _, df = ws.read()
    assert df[VoteCol.N].notna().all()
    # a CSV rebuilt from the images FER+ kept: its rows are fer2013new.csv's named lines
    rebuilt = tmp_path / "rebuilt.csv"
    lines = ferplus.csv.read_text().splitlines()
    rebuilt.write_text("\n".join([lines[0]] + [ln for ln, k in zip(lines[1:], ferplus.kept, strict=True) if k]) + "\n")
    ws2 = _scanned(tmp_path / "rebuilt", rebuilt)
    result2 = import_votes(ws2, VotesParams(votes=ferplus.new_csv))
    assert result2.matched == sum(ferplus.kept) and result2.unmatched == len(ferplus.usages) - sum(ferplus.kept)
    _, df2 = ws2.read()
    order = df2[Col.PATH].str.extract(r"(\d+)\.png$")[0].astype(int).argsort().to_numpy()
    kinds = [k for k, kept in zip(ferplus.kinds, ferplus.kept, strict=True) if kept]
    got = df2.iloc[order][list(VOTE_COUNT_COLUMNS)].astype(int).to_numpy().tolist()
    assert got == [VOTES[k] for k in kinds]


def test_import_subset_new_csv_matches_its_images_by_pixels(ferplus: FerPlus, tmp_path: Path) -> None:
    ws = _scanned(tmp_path, ferplus.csv)
    subset = ferplus.root / "subset.csv"
    lines = ferplus.new_csv.read_text().splitlines()
    chosen = [ln for ln in lines[1:] if ",," not in ln][::2]  # named lines only, every other one
    subset.write_text("\n".join([lines[0], *chosen]) + "\n")
    try:
        result = import_votes(ws, VotesParams(votes=subset))
    finally:
        subset.unlink()
    assert result.method == "pixels" and (result.matched, result.unmatched) == (len(chosen), 0)
    _, df = ws.read()
    with_votes = df[df[VoteCol.N].notna()]
    assert sorted(with_votes[VoteCol.IMAGE]) == sorted(ln.split(",")[1] for ln in chosen)
    assert (with_votes[VoteCol.MATCH_DISTANCE] == 0).all()
    # each row got the votes of the FER+ image with its very pixels (the CSV row index names it)
    index = with_votes[Col.PATH].str.extract(r"(\d+)\.png$")[0].astype(int)
    for row_index, (_, row) in zip(index, with_votes.iterrows(), strict=True):
        if row_index > 1:  # rows 0 and 1 hold the same pixels: either may carry either's votes
            assert row[VoteCol.IMAGE] == f"fer{row_index:07d}.png"


def test_import_errors_write_nothing(ferplus: FerPlus, tmp_path: Path) -> None:
    ws = _scanned(tmp_path, ferplus.csv)
    before = len(ws.versions())
    shifted = tmp_path / "shifted.csv"
    lines = ferplus.new_csv.read_text().splitlines()
    shifted.write_text("\n".join([lines[0], *lines[2:], lines[1]]) + "\n")  # out of order: Usage disagrees
    with pytest.raises(DatasetError, match="Usage .* but CSV row"):
        import_votes(ws, VotesParams(votes=shifted))
    folder = tmp_path / "FER2013Train"
    folder.mkdir()
    (folder / "label.csv").write_text('ghost.png,"(0, 0, 48, 48)",1,0,0,0,0,0,0,0,0,0\n')
    with pytest.raises(DatasetError, match=r"label.csv line 1: votes for image 'ghost.png'"):
        import_votes(ws, VotesParams(votes=tmp_path))
    assert len(ws.versions()) == before


def test_cli_votes_import_json_and_one_line_errors(ferplus: FerPlus, tmp_path: Path) -> None:
    ws = _scanned(tmp_path, ferplus.kaggle)
    ok = runner.invoke(app, ["votes", "import", str(ferplus.data), "-w", str(ws.root), "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["matched"] == sum(ferplus.kept)
    bad = tmp_path / "FER2013Valid"
    bad.mkdir()
    (bad / "label.csv").write_text('a.png,"(0, 0, 48, 48)",1,0,0,-2,0,0,0,0,0,0\n')
    before = len(ws.versions())
    res = runner.invoke(app, ["votes", "import", str(tmp_path), "-w", str(ws.root)])
    assert res.exit_code == 1
    # off a terminal, phase lines may precede it; the error itself is one line
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "line 1" in errors[0] and "negative" in errors[0]
    assert res.output.strip().splitlines()[-1] == errors[0]
    assert len(ws.versions()) == before
    assert "Example:" in runner.invoke(app, ["votes", "import", "--help"]).output


# -- scanning the FER+ release ---------------------------------------------------------------------
def test_scan_reads_the_ferplus_release_with_votes(ferplus: FerPlus, tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    result = scan(ws, ScanParams(dataset=ferplus.root, workers=1))
    assert result.layout == "ferplus"
    _, df = ws.read()
    assert len(df) == sum(ferplus.kept)
    assert set(df[Col.SPLIT]) == {"train", "val", "test"}
    kinds = {f"fer{i:07d}.png": k for i, k in enumerate(ferplus.kinds)}
    kind = df[Col.PATH].str.split("/").str[-1].map(kinds)
    assert (df.loc[kind == "agree", Col.LABEL] == "happy").all()
    assert (df.loc[kind == "wrong", Col.LABEL] == "neutral").all()
    split_rows = df[kind == "split"]
    assert (split_rows[Col.STATUS] == "removed").all() and (split_rows[Col.REASON] == "votes:no_majority").all()
    assert (df.loc[kind == "nf", Col.REASON] == "votes:not_a_face").all()
    assert df[VoteCol.N].notna().all() and (df[VoteCol.MATCH] == "file").all()
    plural = scan(Workspace(tmp_path / "ws2"), ScanParams(dataset=ferplus.root, workers=1, vote_scheme="plurality"))
    _, df2 = Workspace(tmp_path / "ws2").read()
    assert plural.by_status.get("active", 0) > result.by_status.get("active", 0)
    assert (df2.loc[(kind == "split").to_numpy(), Col.LABEL] == "neutral").all()


# -- flagging and applying with votes --------------------------------------------------------------
@pytest.fixture(scope="module")
def voted(ferplus: FerPlus, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """The Kaggle tree scanned, with FER+ votes imported (classes: happy, neutral)."""
    ws = _scanned(tmp_path_factory.mktemp("voted"), ferplus.kaggle)
    import_votes(ws, VotesParams(votes=ferplus.root))
    return ws


def _kinds_by_path(ferplus: FerPlus) -> dict[str, str]:
    return {
        name: kind for name, kind, kept in zip(ferplus.kaggle_names, ferplus.kinds, ferplus.kept, strict=True) if kept
    }


def test_vote_flags_rules() -> None:
    from fercurate.votes.flagging import vote_flags

    classes = ["happy", "neutral"]
    counts = np.array([VOTES["agree"], VOTES["wrong"], VOTES["split"], VOTES["nf"], [0] * 10])
    labels = np.array(["happy", "happy", "happy", "neutral", "happy"])
    flags = vote_flags(counts, labels, classes, class_map(classes), max_support=0.1, min_majority=0.8)
    assert flags.kind.tolist() == [None, "wrong", "ambiguous", "wrong", None]
    assert flags.suggested.tolist() == [None, "neutral", "neutral", None, None]
    assert flags.score[:4].tolist() == pytest.approx([0.1, 0.9, 0.7, 1.0]) and np.isnan(flags.score[4])
    strict = vote_flags(counts, labels, classes, class_map(classes), max_support=0.0, min_majority=0.8)
    assert strict.kind[1] == "ambiguous"  # one annotator agreed with the label: not clearly wrong at 0
    assert vote_flags(counts, labels, classes, class_map(classes), 0.1, 0.9).kind[1] == "ambiguous"  # 8 < 9


def test_flag_votes_only_writes_a_reviewable_version(ferplus: FerPlus, voted: Workspace) -> None:
    from fercurate.relabel.flag import FLAGGED, SUGGESTED_LABEL, FlagParams, flag

    result = flag(voted, FlagParams(votes="only", min_majority=0.8))
    assert result.folds_trained == 0
    _, df = voted.read(result.version.version)
    kinds = df[Col.PATH].map(_kinds_by_path(ferplus))
    assert (df.loc[kinds == "wrong", "flag_kind"] == "wrong").all()
    assert (df.loc[kinds == "wrong", SUGGESTED_LABEL] == "neutral").all()
    assert (df.loc[kinds == "split", "flag_kind"] == "ambiguous").all()
    assert df.loc[kinds == "nf", SUGGESTED_LABEL].isna().all() and (df.loc[kinds == "nf", "flag_kind"] == "wrong").all()
    assert not df.loc[kinds == "agree", FLAGGED].any()
    assert df.loc[kinds.isna(), FLAGGED].isna().all()  # rows without votes: not judged
    assert result.flagged == int((kinds != "agree").sum() - kinds.isna().sum())
    assert (df.loc[kinds == "agree", "prob_happy"] == 0.9).all()  # vote shares stand in for probabilities
    queue = pd.read_parquet(result.queue_path)
    assert len(queue) == result.flagged


def test_cli_votes_only_summary_claims_no_model_estimates(voted: Workspace) -> None:
    """With --votes only no model ran: the summary has no queue estimates (no table, no zero budget)."""
    result = runner.invoke(app, ["relabel-review", "flag", "-w", str(voted.root), "--votes", "only"])
    assert result.exit_code == 0, result.output
    assert "annotator votes only" in result.output and "review queue:" in result.output
    for claim in ("expected precision", "estimated wrong labels", "review budget"):
        assert claim not in result.output


def test_votes_decide_where_they_exist_when_combined(ferplus: FerPlus, voted: Workspace) -> None:
    from fercurate.relabel.flag import FLAGGED, MISLABEL_SCORE, SUGGESTED_LABEL
    from fercurate.votes.flagging import combine_with_model

    info, df = voted.read()
    rows = df[df[Col.STATUS] == "active"]
    model = df.copy()
    model[FLAGGED] = pd.array([True] * len(df), dtype="boolean")  # the model doubts every label
    model[SUGGESTED_LABEL] = pd.array(["sad"] * len(df), dtype="string")
    model[MISLABEL_SCORE] = 0.5
    out = combine_with_model(model, rows, ["happy", "neutral"], voted, info, 0.1, 0.8)
    kinds = out[Col.PATH].map(_kinds_by_path(ferplus))
    assert not out.loc[kinds == "agree", FLAGGED].any()  # ten people outvote the model
    assert (out.loc[kinds == "wrong", SUGGESTED_LABEL] == "neutral").all()
    no_votes = kinds.isna()
    assert out.loc[no_votes, FLAGGED].all() and (out.loc[no_votes, "flag_kind"] == "wrong").all()
    assert (out.loc[no_votes, SUGGESTED_LABEL] == "sad").all()


def test_apply_accept_votes(ferplus: FerPlus, voted: Workspace) -> None:
    from fercurate.relabel.apply import ApplyParams, apply

    base = voted.resolve().version
    none = apply(voted, ApplyParams(version=base, accept_votes=9))
    assert none.relabeled_by_votes == 0  # the wrong labels have 8 votes against them, not 9
    result = apply(voted, ApplyParams(version=base, accept_votes=8))
    _, df = voted.read(result.version.version)
    kinds = df[Col.PATH].map(_kinds_by_path(ferplus))
    assert result.relabeled_by_votes == int((kinds == "wrong").sum()) > 0
    assert (df.loc[kinds == "wrong", Col.LABEL] == "neutral").all()
    assert df.loc[kinds == "wrong", Col.REASON].str.endswith("relabel:happy->neutral by votes").all()
    assert (df.loc[kinds == "nf", Col.LABEL] == "neutral").all()  # NF is no class: nothing to accept
    again = apply(voted, ApplyParams(version=result.version.version, accept_votes=8))
    assert again.relabeled_by_votes == 0  # applying twice changes nothing
    with pytest.raises(InputError, match="accept_votes 0"):
        apply(voted, ApplyParams(version=base, accept_votes=0))


# -- training on vote distributions ----------------------------------------------------------------
def test_soft_targets_loss_and_check() -> None:
    import torch

    from fercurate.train import ArraySplit, make_config, train
    from fercurate.train.loop import focal_loss

    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    target = torch.tensor([0, 2])
    kw = {"gamma": 2.0, "alpha": 0.25, "label_smoothing": 0.1}
    onehot = torch.nn.functional.one_hot(target, 3).float()
    assert torch.allclose(focal_loss(logits, target, **kw), focal_loss(logits, target, soft_target=onehot, **kw))
    split_votes = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.2, 0.8]])
    assert not torch.allclose(
        focal_loss(logits, target, **kw), focal_loss(logits, target, soft_target=split_votes, **kw)
    )

    rng = np.random.default_rng(0)
    x = np.stack([blob_image(rng, i % 2) for i in range(40)])
    y = np.arange(40) % 2
    config = make_config("tiny", epochs=1, targets="votes", device="cpu", num_threads=1)
    with pytest.raises(InputError, match="targets='votes' needs"):
        train(config, ArraySplit(x, y), ArraySplit(x, y), ["a", "b"])
    soft = np.eye(2)[y] * 0.7 + 0.15
    result = train(config, ArraySplit(x, y, soft), ArraySplit(x, y), ["a", "b"])
    assert result.config.targets == "votes" and len(result.history) == 1
    with pytest.raises(InputError, match="targets='vote'"):
        make_config("tiny", targets="vote")


# -- log, diff and export ----------------------------------------------------------------------------
def test_log_diff_show_vote_coverage_and_export_writes_fer2013new(ferplus: FerPlus, tmp_path: Path) -> None:
    from fercurate.export import ExportParams, export
    from fercurate.history import diff, log

    ws = _scanned(tmp_path, ferplus.csv)
    import_votes(ws, VotesParams(votes=ferplus.new_csv))
    entries = log(ws)
    assert entries[0]["votes"] is None
    assert entries[1]["votes"] == {"active_with_votes": len(ferplus.usages), "active": len(ferplus.usages)}
    d = diff(ws, "v0000", "v0001")
    assert d.votes_before is None and d.votes_after == entries[1]["votes"]
    res = runner.invoke(app, ["log", "-w", str(ws.root)])
    assert f"{len(ferplus.usages)}/{len(ferplus.usages)}" in res.output
    export(ws, ExportParams(version="latest", dest=tmp_path / "out", format="csv"))
    written = (tmp_path / "out" / "fer2013new.csv").read_text()
    assert written == ferplus.new_csv.read_text()  # the same rows, order, names and votes as FER+'s


def test_benchmark_vote_targets_and_gold_labels() -> None:
    from fercurate.benchmark import BenchmarkParams
    from fercurate.votes.stats import gold_against_votes, soft_targets

    classes = ["happy", "neutral"]
    rows = pd.DataFrame({c: pd.array([pd.NA] * 3, dtype="Int16") for c in VOTE_COUNT_COLUMNS})
    rows[VoteCol.N] = pd.array([10, pd.NA, 10], dtype="Int16")
    rows.loc[0, ["votes_neutral", "votes_happiness"]] = [2, 8]
    rows.loc[2, "votes_nf"] = 10  # votes, but none for a dataset class: the label's one-hot
    y = np.array([1, 0, 1])
    soft = soft_targets(rows, y, classes)
    assert soft is not None and np.allclose(soft, [[0.8, 0.2], [1.0, 0.0], [0.0, 1.0]])
    assert soft_targets(rows.drop(columns=[VoteCol.N]), y, classes) is None
    rows[VoteCol.MAJORITY] = pd.array(["happy", None, None], dtype="string")
    gold, note = gold_against_votes(rows, y, classes)
    assert gold.tolist() == [0, 0, 1] and "on 1 of 3 gold images" in note and "1 differ" in note
    with pytest.raises(InputError, match="targets 'vote'"):
        BenchmarkParams(targets="vote")


def test_vote_targets_use_the_recorded_mapping_and_key_the_model_cache(ferplus: FerPlus, tmp_path: Path) -> None:
    from fercurate.benchmark.stage import _soft_targets, _trained_model
    from fercurate.progress import NullProgress
    from fercurate.train import make_config
    from fercurate.votes.stage import recorded_mapping

    ws = _scanned(tmp_path, ferplus.kaggle)
    import_votes(ws, VotesParams(votes=ferplus.root, mapping="sadness=neutral"))
    info, df = ws.read()
    classes = ["happy", "neutral"]
    assert recorded_mapping(ws, info, classes)["sadness"] == "neutral"
    split = df[df[Col.PATH].isin([n for n, k in zip(ferplus.kaggle_names, ferplus.kinds, strict=True) if k == "split"])]
    split = split[split[VoteCol.N].notna()]
    y = np.zeros(len(split), dtype=np.int64)
    soft = _soft_targets(ws, info, split, y, classes)
    # votes [neutral 4, happiness 3, sadness 3]: sadness counts for neutral as recorded (not dropped)
    assert soft is not None and np.allclose(soft, [[0.3, 0.7]] * len(split))

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (16, 48, 48), dtype=np.uint8)
    labels = np.arange(16) % 2
    soft_a = np.eye(2, dtype=np.float32)[labels]
    soft_b = np.full((16, 2), 0.5, dtype=np.float32)
    models = ws.cache_dir / "models"
    for targets, expected in (("votes", 2), ("labels", 3)):
        config = make_config("tiny", epochs=1, device="cpu", targets=targets)
        for soft_tr in (soft_a, soft_b):
            _trained_model(ws, config, targets, "key", x, labels, x, labels, classes, NullProgress(), "t", soft_tr)
        # other votes train another model; label training ignores the votes, so one model serves both
        assert len(list(models.glob("*.pt"))) == expected


def test_benchmark_cli_trains_on_votes_and_scores_gold_against_them(tmp_path: Path) -> None:
    from fercurate.split import SplitParams, split

    data = _ferplus(tmp_path / "data", per_usage=24)
    ws = _scanned(tmp_path, data.kaggle)
    import_votes(ws, VotesParams(votes=data.root))
    split(ws, SplitParams(ratios=(60.0, 20.0, 20.0)))
    version = ws.resolve().version
    common = [version, "--preset", "tiny", "--epochs", "1", "--seeds", "1", "--device", "cpu"]
    common += ["-w", str(ws.root), "--json"]
    runs = {}
    for targets in ("labels", "votes"):
        res = runner.invoke(app, ["benchmark", *common, "--targets", targets, "--gold-labels", "votes"])
        assert res.exit_code == 0, res.output
        runs[targets] = json.loads(res.stdout)
    dirs = {Path(r["report_dir"]).name for r in runs.values()}
    assert dirs == {f"{version}-tiny-gold-votes", f"{version}-tiny-targets-votes-gold-votes"}
    gold = pd.read_parquet(Path(runs["votes"]["report_dir"]) / "gold.parquet")
    voted = gold[Col.PATH].map(ws.read()[1].set_index(Col.PATH)[VoteCol.MAJORITY]).notna()
    note = next(w for w in runs["votes"]["warnings"] if "vote majority" in w)
    assert f"on {int(voted.sum())} of {len(gold)} gold images" in note
