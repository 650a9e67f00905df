from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fercurate.errors import WorkspaceError
from fercurate.manifest import (
    BASE_COLUMNS,
    Col,
    canonical_class,
    content_hash,
    empty_manifest,
    image_id_for,
    read_manifest,
    to_table,
    write_manifest,
)


def frame(n: int = 3, **overrides: object) -> pd.DataFrame:
    data = {
        Col.IMAGE_ID: [image_id_for(str(i)) for i in range(n)],
        Col.PATH: [f"train/happy/{i}.jpg" for i in range(n)],
        Col.SPLIT: ["train"] * n,
        Col.LABEL: ["happy"] * n,
        Col.SPLIT_ORIGINAL: ["train"] * n,
        Col.LABEL_ORIGINAL: ["happy"] * n,
        Col.SOURCE: ["original"] * n,
        Col.STATUS: ["active"] * n,
        Col.REASON: [None] * n,
        Col.WIDTH: [48] * n,
        Col.HEIGHT: [48] * n,
        Col.MODE: ["L"] * n,
        Col.SHA256: ["0" * 64] * n,
    }
    data.update(overrides)  # type: ignore[arg-type]
    return pd.DataFrame(data)


rows = st.lists(
    st.tuples(
        st.sampled_from(["train", "val", "test"]),
        st.sampled_from(["happy", "sad", "neutral", "surprise"]),
        st.sampled_from(["active", "removed", "invalid"]),
        st.one_of(st.none(), st.text(max_size=20)),
        st.one_of(st.none(), st.integers(1, 4096)),
        st.text(min_size=1, max_size=30),
    ),
    min_size=0,
    max_size=40,
)


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(rows=rows)
def test_round_trip_keeps_every_value(tmp_path: Path, rows: list[tuple]) -> None:
    n = len(rows)
    df = frame(
        n,
        **{
            Col.SPLIT: [r[0] for r in rows],
            Col.LABEL: [r[1] for r in rows],
            Col.STATUS: [r[2] for r in rows],
            Col.REASON: [r[3] for r in rows],
            Col.WIDTH: pd.array([r[4] for r in rows], dtype="Int32"),
            Col.PATH: [r[5] for r in rows],
            "phash": [f"{i:016x}" for i in range(n)],
        },
    )
    path = tmp_path / "m.parquet"
    write_manifest(df, path)
    back = read_manifest(path)
    assert list(back.columns[: len(BASE_COLUMNS)]) == list(BASE_COLUMNS)
    assert "phash" in back.columns
    for col in (Col.SPLIT, Col.LABEL, Col.STATUS, Col.PATH, "phash"):
        assert back[col].tolist() == df[col].tolist()
    assert [None if pd.isna(v) else v for v in back[Col.REASON]] == [r[3] for r in rows]
    assert [None if pd.isna(v) else int(v) for v in back[Col.WIDTH]] == [r[4] for r in rows]
    assert content_hash(back) == content_hash(df)


def test_content_hash_ignores_row_order_but_sees_values() -> None:
    df = frame(5)
    assert content_hash(df) == content_hash(df.iloc[::-1])
    changed = df.copy()
    changed.loc[2, Col.LABEL] = "sad"
    assert content_hash(changed) != content_hash(df)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({Col.SPLIT: ["train", "validation", "test"]}, "split"),
        ({Col.STATUS: ["active", "gone", "active"]}, "status"),
        ({Col.IMAGE_ID: ["a", "a", "b"]}, "repeated image_id"),
        ({Col.LABEL: ["happy", None, "sad"]}, "missing values"),
    ],
)
def test_schema_violations_are_refused(tmp_path: Path, bad: dict, message: str) -> None:
    with pytest.raises(WorkspaceError, match=message):
        write_manifest(frame(3, **bad), tmp_path / "m.parquet")
    assert not (tmp_path / "m.parquet").exists()
    assert list(tmp_path.iterdir()) == []  # no temp file left behind


def test_missing_column_is_named(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="sha256"):
        write_manifest(frame(2).drop(columns=[Col.SHA256]), tmp_path / "m.parquet")


def test_unreadable_file_is_a_workspace_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not parquet")
    with pytest.raises(WorkspaceError, match="not readable"):
        read_manifest(path)


@pytest.mark.parametrize(
    "name, canonical",
    [("Happiness", "happy"), ("SADNESS", "sad"), ("anger", "angry"), ("Surprised", "surprise"), ("neutral", "neutral")],
)
def test_class_aliases_fold(name: str, canonical: str) -> None:
    assert canonical_class(name) == canonical


def test_image_id_is_stable_and_distinct() -> None:
    assert image_id_for("train/happy/1.jpg") == image_id_for("train/happy/1.jpg")
    assert image_id_for("train/happy/1.jpg") != image_id_for("train/happy/2.jpg")
    assert len(image_id_for("x")) == 16


def test_the_schema_declares_every_hasher_column_and_casts_declared_columns() -> None:
    from fercurate.dedup import HASHERS
    from fercurate.manifest import COLUMNS, declared

    for name in HASHERS:
        assert declared(name) is not None and declared(name).stage == "dedup"  # type: ignore[union-attr]
    assert declared("prob_happy") is not None and declared("prob_") is None
    assert declared("subject_id") is None  # a user's own column is carried, not declared
    assert len({c.name for c in COLUMNS}) == len(COLUMNS)
    df = empty_manifest()
    df["dup_group_size"] = pd.Series([], dtype="int64")
    df["subject_id"] = pd.Series([], dtype="int64")
    table = to_table(df)
    assert table.schema.field("dup_group_size").type == pa.int32()  # cast to the declared type
    assert table.schema.field("subject_id").type == pa.int64()  # undeclared: as written
