"""``fercurate merge-affectnet``: top up under-represented classes with faces from an AffectNet source."""

from fercurate.affectnet.stage import (
    ADDED_COLUMNS,
    CSV_COLUMNS,
    MergeParams,
    MergeResult,
    allocate,
    convert_face,
    convert_faces,
    face_crop_box,
    merge_affectnet,
    parse_mapping,
    parse_target,
    read_source,
)

__all__ = [
    "ADDED_COLUMNS",
    "CSV_COLUMNS",
    "MergeParams",
    "MergeResult",
    "allocate",
    "convert_face",
    "convert_faces",
    "face_crop_box",
    "merge_affectnet",
    "parse_mapping",
    "parse_target",
    "read_source",
]
