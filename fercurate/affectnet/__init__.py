"""``fercurate merge-affectnet``: top up under-represented classes with faces from an AffectNet source.

In the original project surprise was rare, so about 3,000 AffectNet faces were converted to 48x48
grayscale and added until every class held about a quarter of the data. This module does that as
a stage: it reads one manifest version and commits a new one with the added rows.

The source is never modified. It can be laid out in one of two ways:

* **official**: an images root (``Manually_Annotated_Images/<dir>/<name>.jpg``) plus a CSV with
  the columns of ``training.csv`` / ``validation.csv`` (``subDirectory_filePath, face_x, face_y,
  face_width, face_height, facial_landmarks, expression, valence, arousal``), one face box a row;
  expression codes 0-7 are classes, 8-10 (none, uncertain, no-face) are skipped and counted;
* **folders**: class folders (``anger/``, ``Surprised/``, ...), optionally under split folders.

The balancing plan counts the active rows per class (the whole version, or only ``train`` with
``splits="train"``), sets a target per class (the largest class, a fixed number, or a fraction of
the largest) and adds only what each class lacks. Candidates are taken in a seeded random order and
converted in rounds, so topping up 500 faces converts a little over 500 images, not the whole
source. A candidate is added only if it converts cleanly, passes the quality checks and is not a
near-duplicate of a dataset image or of another added face.

The package reads like every stage: ``params`` (:class:`MergeParams`: defaults, choices, validation),
``sources`` (reading the two layouts), ``convert`` (the per-batch face conversion kernel), ``plan`` (the
pure merge plan) and ``stage`` (:func:`merge_affectnet`).
"""

from fercurate.affectnet.convert import convert_face, convert_faces, face_crop_box
from fercurate.affectnet.params import ADDED_COLUMNS, CSV_COLUMNS, MergeParams, parse_target
from fercurate.affectnet.plan import MergePlan, allocate, plan_merge
from fercurate.affectnet.sources import parse_mapping, read_source
from fercurate.affectnet.stage import MergeResult, merge_affectnet

__all__ = [
    "ADDED_COLUMNS",
    "CSV_COLUMNS",
    "MergeParams",
    "MergePlan",
    "MergeResult",
    "allocate",
    "convert_face",
    "convert_faces",
    "face_crop_box",
    "merge_affectnet",
    "parse_mapping",
    "parse_target",
    "plan_merge",
    "read_source",
]
