"""The dedup stage's hash cache: the workspace keeps every file's hash, so no file is hashed twice.

It lives beside the stage, not beside the hashers: the hashers are pure kernels (arrays in, hashes
out) and know nothing of workspaces.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from fercurate.workspace import ShaKeyedCache


class HashCache(ShaKeyedCache):
    """64-bit hashes keyed by the file's sha256, one folder per hasher and image size.

    Stored as Parquet chunks under ``cache/hashes-<hasher>-<size>/`` (a ``hash`` uint64 column), added
    atomically like every :class:`fercurate.workspace.ShaKeyedCache`.
    """

    column = "hash"

    def __init__(self, cache_dir: os.PathLike[str] | str, hasher: str, size: int) -> None:
        super().__init__(Path(cache_dir) / f"hashes-{hasher}-{size}", (), np.uint64)

    def to_arrow(self, values: np.ndarray) -> pa.Array:
        return pa.array(values, type=pa.uint64())

    def from_arrow(self, column: pa.ChunkedArray) -> np.ndarray:
        return column.to_numpy().astype(np.uint64, copy=False)
