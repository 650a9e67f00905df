"""The pure parts of bench/real (scoring, the FER+ pixel match, the fer4 draw) on tiny generated inputs."""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

REAL = Path(__file__).resolve().parents[1] / "bench" / "real"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_real_{name}", REAL / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


scoring = _load("scoring")
prepare = _load("prepare")


# -- scoring -----------------------------------------------------------------------------------------
def test_annotator_class_needs_min_agree_and_maps_names():
    votes = pd.DataFrame(
        {"neutral": [6, 5, 0, 0], "happiness": [4, 5, 0, 1], "sadness": [0, 0, 7, 0], "contempt": [0, 0, 3, 9]}
    )
    got = list(scoring.annotator_class(votes, min_agree=6))
    # contempt is no fercurate class: row 3 has no agreed class although 9 annotators chose contempt
    assert got == ["neutral", None, "sad", None]


def test_mislabelled_only_where_annotators_agree_elsewhere():
    assert list(scoring.mislabelled(["sad", "sad", "happy"], ["sad", "neutral", None])) == [False, True, False]


def test_precision_at_takes_the_first_k_and_shorter_rankings_whole():
    truth = np.array([1, 1, 0, 1, 0, 0], dtype=bool)
    assert scoring.precision_at(truth, [2, 4, 100]) == {2: 1.0, 4: 0.75, 100: 0.5}
    assert scoring.precision_at(np.array([], dtype=bool), [10]) == {10: None}


def test_set_scores():
    pred = np.array([1, 1, 1, 0, 0], dtype=bool)
    truth = np.array([1, 0, 0, 1, 0], dtype=bool)
    s = scoring.set_scores(pred, truth)
    assert s["precision"] == pytest.approx(1 / 3)
    assert s["recall"] == pytest.approx(1 / 2)
    assert s["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert scoring.set_scores(np.zeros(3, bool), truth[:3])["f1"] == 0.0


@pytest.mark.parametrize(
    ("similarity", "band"),
    [(1.0, "0.99+"), (0.99, "0.99+"), (0.985, "0.97-0.99"), (0.93, "0.92-0.95"), (0.9, "0.90-0.92"), (0.5, "<0.90")],
)
def test_band_of(similarity, band):
    assert scoring.band_of(similarity) == band


def test_pair_scores_counts_groups_transitively_both_ways():
    # truth: a-b-c one photo (listed as a chain), d-e another, f-g outside the run's universe
    truth = pd.DataFrame(
        {
            "a": ["a", "b", "d", "f"],
            "b": ["b", "c", "e", "g"],
            "kind": ["exact", "recrop", "recrop", "exact"],
            "similarity": [1.0, 0.96, 0.93, 1.0],
        }
    )
    # found: a-c (right by the truth's closure), h-i (wrong); d-e missed
    found = pd.DataFrame({"a": ["a", "h", "a"], "b": ["c", "i", "b"], "kind": ["near", "near", "exact"]})
    s = scoring.pair_scores(found, truth, universe=set("abcdehi"))
    assert s["truth_pairs"] == 3
    assert s["precision"] == pytest.approx(2 / 3)
    assert s["recall"] == pytest.approx(2 / 3)  # a-b and b-c found through the a-b-c group, d-e not
    assert s["recall_by_kind"]["recrop"] == {"n": 2, "value": 0.5}
    assert s["recall_by_band"]["0.95-0.97"]["value"] == 1.0
    assert s["recall_by_band"]["0.92-0.95"]["value"] == 0.0
    assert s["precision_by_kind"]["near"] == {"n": 2, "value": 0.5}


def test_pair_scores_joins_groups_through_items_outside_the_universe():
    truth = pd.DataFrame({"a": ["a"], "b": ["c"], "kind": ["recrop"]})
    found = pd.DataFrame({"a": ["a", "x"], "b": ["x", "c"], "kind": ["near", "near"]})  # x is not covered
    s = scoring.pair_scores(found, truth, universe={"a", "c"})
    assert s["recall"] == 1.0
    assert s["found_pairs"] == 0 and s["precision"] is None


# -- the FER+ match by pixels --------------------------------------------------------------------------
def _reencode(arr: np.ndarray, quality: int = 85) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))


def test_match_ferplus_one_to_one_with_duplicates_and_dropped_rows():
    rng = np.random.default_rng(0)
    base = np.kron(rng.integers(0, 256, (20, 12, 12)), np.ones((4, 4))).astype(np.uint8)
    targets = base.copy()
    targets[7] = targets[3]  # two rows with identical pixels (FER2013 holds such rows)
    target_keys = ["Training"] * 10 + ["PublicTest"] * 10
    # queries: JPEG re-encodings of targets 0..18 (row 19 "dropped" from the targets side is simulated
    # by a query with no target), shuffled; one query whose pixels appear only under another Usage
    order = rng.permutation(19)
    queries = np.stack([_reencode(targets[i]) for i in order] + [_reencode(base[19] // 2)])
    query_keys = [target_keys[i] for i in order] + ["Training"]
    m = prepare.match_ferplus(queries, query_keys, targets[:19], target_keys[:19], max_distance=4.0, candidates=4)
    slot = m["slot"]
    fixed = [s if s != 7 else 3 for s in slot[:19]]
    want = [s if s != 7 else 3 for s in order]
    assert fixed == want
    assert sorted(slot[:19].tolist()) == list(range(19))  # one to one
    assert slot[19] == -1 and m["distance"][19] > 4.0
    dup = np.isin(order, [3, 7])
    assert m["ambiguous"][:19][dup].all() and not m["ambiguous"][:19][~dup].any()
    assert (m["group_size"][:19][dup] == 2).all()
    assert (m["distance"][:19] < 4.0).all() and (m["second"][:19] > m["distance"][:19]).all()


def test_match_ferplus_respects_usage():
    img = np.full((1, 48, 48), 100, dtype=np.uint8)
    m = prepare.match_ferplus(img, ["Training"], img, ["PublicTest"], max_distance=4.0)
    assert m["slot"][0] == -1


# -- the fer4 draw -------------------------------------------------------------------------------------
def test_fer4_plan_counts_seed_and_no_repeats():
    files = []
    for label, n in {"happy": 6000, "neutral": 5300, "sad": 5200, "surprise": 4002, "angry": 10}.items():
        files += [(f"train/{label}/Training_{label}{i}.jpg", label) for i in range(n)]
    plan = prepare.fer4_plan(files, seed=1)
    assert len(plan) == 20214 and len({src for src, _, _ in plan}) == 20214
    got = pd.DataFrame(plan, columns=["src", "label", "split"]).groupby(["split", "label"]).size()
    for split, counts in prepare.FER4_COUNTS.items():
        for label, n in counts.items():
            assert got[(split, label)] == n
    assert prepare.fer4_plan(files, seed=1) == plan
    assert prepare.fer4_plan(files, seed=2) != plan


def test_fer4_plan_too_few_images_is_an_error():
    files = [(f"train/happy/Training_{i}.jpg", "happy") for i in range(10)]
    with pytest.raises(prepare.PrepareError, match="class happy has 10 images"):
        prepare.fer4_plan(files, seed=0)


def test_match_ferplus_assigns_near_identical_rows_jointly():
    # two rows 4 grey levels apart; both queries are nearest to row 0, but only one can have it
    targets = np.stack([np.full((48, 48), v, dtype=np.uint8) for v in (100, 104)])
    queries = np.stack([np.full((48, 48), v, dtype=np.uint8) for v in (101, 100)])
    m = prepare.match_ferplus(queries, ["Training"] * 2, targets, ["Training"] * 2, max_distance=4.0)
    assert list(m["slot"]) == [1, 0]
    assert list(m["distance"]) == [3.0, 0.0] and list(m["second"]) == [1.0, 4.0]  # matched, then the other row
    assert not m["ambiguous"].any()
