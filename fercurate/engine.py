"""Where the per-image batches and the per-model tasks of a stage run: here, or on a Ray cluster.

A stage hands its pure batch function to an :class:`Engine`; the engine decides where it runs and
gives the results back in input order, so a stage computes the same thing on either engine.

* ``local`` (the default): :func:`fercurate.images.apply_batches` (a process pool on this machine),
  whole-array kernels called directly, models trained one after the other in this process.
* ``ray``: per-item batches as a Ray Data ``map_batches`` over the item list (positions, with the
  items), streamed back in order; image batches, pair batches and model trainings as Ray tasks, the
  image and pair tasks a bounded number at a time, each sent only the rows it needs. Work may run
  on any node of the cluster; only this process (the driver) writes the workspace. Workers read
  images from the paths the driver gives them, so those must be on a filesystem every node sees
  (docs/scale.md).

Per-item results can be taken as a stream (:meth:`Engine.iter_batches`): scan writes each batch's
pixels to the cache as it comes, so the driver never holds a million faces' pixels at once.

Ray is an optional dependency (``pip install "fercurate[ray]"``) and is imported only here, only
when the ``ray`` engine is chosen.
"""

from __future__ import annotations

import functools
import importlib
import os
import pickle
import socket
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from fercurate.errors import InputError

#: The engines ``--engine`` offers.
ENGINES = ("local", "ray")
ENGINE_ENV = "FERCURATE_ENGINE"
RAY_ADDRESS_ENV = "RAY_ADDRESS"
RAY_INSTALL = 'pip install "fercurate[ray]"'
#: Batches of files per Ray Data block (one task each): about _BLOCKS_PER_CPU blocks per cluster CPU,
#: each of 4 to 64 batches. Over 30K files on 2 cores 16 measured faster than 4 (the overhead per
#: task) or 64 (blocks too few to balance); over 1M, 64 scanned in 110 s against 130 s with 16.
_BATCHES_PER_BLOCK = (4, 64)
_BLOCKS_PER_CPU = 4
#: Images per Ray image task: 16,384 (38 MB of 48x48 pixels; 123 tasks for a million faces' two
#: passes instead of 488). The hashing took 23-27 s at 1M either way; the object-store window stays
#: under 0.2 GB at two tasks per CPU on 2 CPUs.
RAY_IMAGES_PER_TASK = 16384

#: Batches per call when the local engine maps a memory-mapped image array (65,536 faces, 150 MB)
MAPPED_BATCHES = 16
#: Most pairs per call when the local engine checks pairs of a memory-mapped image array. Pairs name
#: images all over the array, and each page fault maps the pages around it too (Linux's fault-around,
#: 64 KB), so 32,768 pairs of a million faces kept 1.3-1.4 GB of the array resident between drops;
#: 4,096 pairs touch at most about 0.5 GB.
MAPPED_PAIRS = 4096

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class EngineParams:
    """Options ``--engine`` and ``--ray-address`` of the stages that do per-image or per-model work."""

    engine: str = "local"
    #: a running cluster (``host:port`` or ``ray://host:10001``); None: ``RAY_ADDRESS``, else a
    #: local Ray started for the run and stopped after it
    ray_address: str | None = None

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise InputError(f"engine '{self.engine}' is not one of: {', '.join(ENGINES)}", param="engine")
        if self.ray_address is not None and self.engine != "ray":
            raise InputError(
                f"ray_address {self.ray_address} is given but engine is '{self.engine}'; pass engine ray too",
                param=("ray_address", "engine"),
            )


class Engine:
    """The local engine; :class:`RayEngine` runs the same calls on a Ray cluster.

    ``batches_by_node`` and ``tasks_by_node`` count the batches and the tasks each node ran (``local`` here).
    """

    name = "local"
    distributed = False

    def __init__(self) -> None:
        self.batches_by_node: Counter[str] = Counter()
        self.tasks_by_node: Counter[str] = Counter()

    def map_batches(
        self,
        fn: Callable[[list[T]], R],
        items: Sequence[T],
        *,
        batch_size: int = 512,
        workers: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[R]:
        """``fn`` over ``items`` in batches of ``batch_size``: the result of each batch, in order.

        ``fn`` must be picklable (a top-level function or a ``functools.partial`` of one).
        """
        return list(self.iter_batches(fn, items, batch_size=batch_size, workers=workers, progress=progress))

    def iter_batches(
        self,
        fn: Callable[[list[T]], R],
        items: Sequence[T],
        *,
        batch_size: int = 512,
        workers: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[R]:
        """:meth:`map_batches` as a stream: each batch's result in order, as it comes.

        Only a bounded number of batches is in flight or waiting to be taken, so a caller that
        stores each result as it comes (scan writes the pixels to the cache) never holds them all.
        """
        from fercurate.images import iter_batches

        for part in iter_batches(fn, items, batch_size=batch_size, workers=workers, progress=progress):
            self.batches_by_node["local"] += 1
            yield part

    def map_images(
        self,
        fn: Callable[..., R],
        pixels: np.ndarray,
        *,
        rows: np.ndarray | None = None,
        batch_size: int = 4096,
    ) -> list[R]:
        """``fn`` over an ``(N, ...)`` array (or its ``rows``, in that order), batch by batch: the results in order.

        ``fn(batch)`` must compute each image's result from that image alone, so that the batches'
        results joined equal ``fn`` of the whole. Here it is one call on the whole array (the kernels
        spread it over threads themselves); with ``rows``, ``fn(pixels, rows=rows)``, which spares a copy.
        A memory-mapped array (:func:`fercurate.workspace.mapped_array`) goes in calls of
        ``MAPPED_BATCHES`` batches instead, its pages dropped from memory after each, so that a pass
        over a million faces never has them all resident.
        """
        from fercurate.workspace import is_mapped, release_pages

        n = len(pixels) if rows is None else len(rows)
        step = batch_size * MAPPED_BATCHES if is_mapped(pixels) else max(n, 1)
        parts = []
        for s in range(0, max(n, 1), step):
            if rows is None:
                parts.append(fn(pixels if step >= n else pixels[s : s + step]))  # a slice is a view
            else:
                parts.append(fn(pixels, rows=rows[s : s + step]))
            release_pages(pixels)
        self.batches_by_node["local"] += len(parts)
        return parts

    def map_pairs(
        self,
        fn: Callable[..., R],
        shared: tuple[np.ndarray, ...],
        pairs: tuple[np.ndarray, ...],
        *,
        batch_size: int = 32768,
    ) -> list[R]:
        """``fn(*shared, *pair_slices)`` over slices of the per-pair arrays: the results in order.

        Here one call on all pairs; with memory-mapped shared arrays, one call per ``batch_size``
        pairs (at most ``MAPPED_PAIRS``), their pages dropped after each (the pairs of a million
        faces touch most of them).
        """
        from fercurate.workspace import release_pages

        n = len(pairs[0]) if pairs else 0
        if not _any_mapped(shared):
            return [fn(*shared, *pairs)]
        batch_size = min(batch_size, MAPPED_PAIRS)
        if n <= batch_size:
            return [fn(*shared, *pairs)]
        parts = []
        for s in range(0, n, batch_size):
            parts.append(fn(*shared, *(p[s : s + batch_size] for p in pairs)))
            for array in shared:
                release_pages(array)
        return parts

    def run_tasks(
        self,
        fn: Callable[..., R],
        calls: Sequence[tuple[Any, ...]],
        *,
        shared: tuple[Any, ...] = (),
        gpu: bool = False,
        cpus: int = 1,
        on_start: Callable[[int], None] | None = None,
        on_step: Callable[[int], None] | None = None,
        on_result: Callable[[int, R], None] | None = None,
    ) -> list[R]:
        """``fn(*shared, *call, step=...)`` for each call (one model each): the results in call order.

        A remote call asks for one GPU with ``gpu``, else for ``cpus`` CPUs (the threads it uses).

        ``on_result(k, result)`` runs in this process as each call finishes (to save it at once, so
        an interrupted run keeps what finished). ``step`` is ``on_step`` here (a progress tick per
        epoch); a remote task gets None.
        """
        results = []
        for k, call in enumerate(calls):
            if on_start:
                on_start(k)
            result = fn(*shared, *call, step=on_step)
            if on_result:
                on_result(k, result)
            results.append(result)
        return results

    def close(self) -> None:
        """Release what the engine started."""


class RayEngine(Engine):
    """The stages' batches and tasks on a Ray cluster: the one at ``address``, else a local one started here."""

    name = "ray"
    distributed = True

    def __init__(self, address: str | None = None) -> None:
        super().__init__()
        ray = _import_ray()
        self.address = address or os.environ.get(RAY_ADDRESS_ENV) or None
        self._started = not ray.is_initialized()
        if self._started:
            _check_reachable(self.address)
            try:
                # "local": a Ray of this run's own, even when another one runs on this machine
                ray.init(
                    address=self.address or "local",
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                )
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = f"the Ray cluster at {self.address}" if self.address else "a local Ray"
                raise InputError(
                    f"could not start or reach {where} ({str(exc).splitlines()[0][:160]}); check ray_address "
                    f"(or {RAY_ADDRESS_ENV}) and `ray status` there, or leave both unset for a local Ray",
                    param="ray_address",
                ) from None
        import logging

        importlib.import_module("ray.data")  # loads ray.data onto the ray module

        # Ray Data logs each finished dataset (and that its bars are off) itself; the CLI owns the screen
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the CLI owns the screen
        context.print_on_execution_start = False

    def iter_batches(
        self,
        fn: Callable[[list[T]], R],
        items: Sequence[T],
        *,
        batch_size: int = 512,
        workers: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[R]:
        """Ray Data ``map_batches`` over the items' positions, streamed back in order; each batch's
        items travel with it (strings as an Arrow column, anything else pickled per item)."""
        import pyarrow as pa

        listed = list(items)
        if all(isinstance(item, str) for item in listed):
            column = pa.array(listed, pa.string())
        else:
            column = pa.array([pickle.dumps(item) for item in listed], pa.binary())
        del listed
        table = pa.table({"pos": np.arange(len(column), dtype=np.int64), "item": column})
        yield from self._map(functools.partial(_items_batch, fn), table, batch_size, progress)

    def map_images(
        self,
        fn: Callable[..., R],
        pixels: np.ndarray,
        *,
        rows: np.ndarray | None = None,
        batch_size: int = RAY_IMAGES_PER_TASK,
    ) -> list[R]:
        """One Ray task per ``batch_size`` images, each sent its batch's pixels, a bounded number in flight.

        Not a Ray Data map: its input would have to be in the object store whole before the first
        batch runs (2.3 GB at a million faces, on top of the driver's copy); tasks fed a batch at a
        time keep the object store and the driver to a few batches beyond the array itself.
        """
        import ray

        order = np.arange(len(pixels), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        task = ray.remote(num_cpus=1)(_on_node)
        calls = (_image_call(fn, pixels, order[s : s + batch_size]) for s in range(0, len(order), batch_size))
        return list(self._bounded(task, calls, self.batches_by_node))

    def map_pairs(
        self,
        fn: Callable[..., R],
        shared: tuple[np.ndarray, ...],
        pairs: tuple[np.ndarray, ...],
        *,
        batch_size: int = 32768,
    ) -> list[R]:
        """One Ray task per ``batch_size`` pairs (at most ``MAPPED_PAIRS`` over memory-mapped shared
        arrays, as locally), a bounded number in flight.

        ``pairs[k]`` for ``k < len(shared)`` holds rows of ``shared[k]`` (``fn(left, right, a, b, ...)``
        reads ``left[a]`` and ``right[b]``); each task is sent only the rows its pairs name, and those
        pairs renumbered into them, so no shared array goes to the object store whole.
        """
        import ray

        n = len(pairs[0]) if pairs else 0
        if _any_mapped(shared):
            batch_size = min(batch_size, MAPPED_PAIRS)
        task = ray.remote(num_cpus=1)(_on_node)
        starts = range(0, max(n, 1), batch_size)
        calls = (_pair_call(fn, shared, [p[s : s + batch_size] for p in pairs]) for s in starts)
        return list(self._bounded(task, calls, self.tasks_by_node))

    @staticmethod
    def _bounded(task: Any, calls: Iterator[tuple[Any, ...]], by_node: Counter[str]) -> Iterator[Any]:
        """``task.remote(*call)`` for each call, at most two per cluster CPU in flight: the results in
        order (each counted in ``by_node`` under the node that ran it)."""
        import ray

        window = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
        pending: deque[Any] = deque()
        for call in calls:
            if len(pending) >= window:
                yield _take(pending.popleft(), by_node)
            pending.append(task.remote(*call))
        while pending:
            yield _take(pending.popleft(), by_node)

    def run_tasks(
        self,
        fn: Callable[..., R],
        calls: Sequence[tuple[Any, ...]],
        *,
        shared: tuple[Any, ...] = (),
        gpu: bool = False,
        cpus: int = 1,
        on_start: Callable[[int], None] | None = None,
        on_step: Callable[[int], None] | None = None,
        on_result: Callable[[int, R], None] | None = None,
    ) -> list[R]:
        """One Ray task per call, all submitted at once; a GPU each with ``gpu``, else ``cpus`` CPUs each."""
        import ray

        shared_refs = [ray.put(value) for value in shared]
        # a task asking for more CPUs than any node has would wait forever
        largest = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]), default=1)
        cpus = max(1, min(cpus, int(largest)))
        task = ray.remote(num_gpus=1, num_cpus=1)(_on_node) if gpu else ray.remote(num_cpus=cpus)(_on_node)
        futures = []
        for k, call in enumerate(calls):
            if on_start:
                on_start(k)
            futures.append(task.remote(functools.partial(fn, step=None), *shared_refs, *call))
        index = {f: k for k, f in enumerate(futures)}
        results: dict[int, R] = {}
        pending = list(futures)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            k = index[done[0]]
            node, result = ray.get(done[0])
            self.tasks_by_node[node] += 1
            results[k] = result
            if on_result:
                on_result(k, result)
        return [results[k] for k in range(len(calls))]

    def close(self) -> None:
        import ray

        if self._started:
            ray.shutdown()
            self._started = False

    def _map(
        self,
        udf: Callable[[Any], dict[str, list[Any]]],
        table: Any,
        batch_size: int,
        progress: Callable[[int], None] | None,
    ) -> Iterator[Any]:
        """The Ray Data pipeline: blocks of whole batches, ``udf`` per batch, results yielded by position.

        Blocks finish in any order; a result is held only until those before it have come (Ray Data's
        streaming executor bounds how many blocks run or wait ahead of the driver).
        """
        import ray
        import ray.data

        if table.num_rows == 0:
            return
        block = batch_size * _per_block(-(-table.num_rows // batch_size), int(ray.cluster_resources().get("CPU", 1)))
        blocks = [table.slice(s, block) for s in range(0, table.num_rows, block)]
        dataset = ray.data.from_arrow(blocks).map_batches(udf, batch_size=batch_size, batch_format="pyarrow")
        waiting: dict[int, tuple[int, Any]] = {}
        due = 0  # the position of the next result to yield
        out: Any
        for out in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            columns = (out[c].to_pylist() for c in ("start", "n", "node", "result"))
            for start, n, node, blob in zip(*columns, strict=True):
                waiting[start] = (n, pickle.loads(blob))
                self.batches_by_node[node] += 1
            del out, columns  # the blobs: a block of results is large
            while due in waiting:
                n, result = waiting.pop(due)
                due += n
                if progress:
                    progress(n)
                yield result


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InputError(f"engine ray needs Ray, which is not installed; run: {RAY_INSTALL}", param="engine") from None
    return ray


def _check_reachable(address: str | None) -> None:
    """Fail fast on a ``host:port`` nobody listens on: Ray itself retries for minutes before giving up."""
    if not address or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=10):
            pass
    except (OSError, ValueError) as exc:
        raise InputError(
            f"no Ray cluster answers at {address} ({exc}); start its head with `ray start --head`, or check "
            f"ray_address (or {RAY_ADDRESS_ENV}), or leave both unset for a local Ray",
            param="ray_address",
        ) from None


def _node() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())


def _on_node(fn: Callable[..., R], *args: Any) -> tuple[str, R]:
    """A task's body: ``fn(*args)`` and the node it ran on."""
    return _node(), fn(*args)


def _take(future: Any, by_node: Counter[str]) -> Any:
    """A task's result, counted under the node that ran it."""
    import ray

    node, result = ray.get(future)
    by_node[node] += 1
    return result


def _image_call(fn: Callable[..., Any], pixels: np.ndarray, rows: np.ndarray) -> tuple[Any, ...]:
    """The arguments of one image task: ``fn`` and a copy of its rows (a memory-mapped array's pages
    are dropped again once copied)."""
    from fercurate.workspace import release_pages

    batch = pixels[rows]
    release_pages(pixels)
    return fn, batch


def _pair_call(fn: Callable[..., Any], shared: tuple[np.ndarray, ...], pairs: list[np.ndarray]) -> tuple[Any, ...]:
    """The arguments of one pair task: ``fn``, the rows of each shared array its pairs name, then the
    pair arrays with those rows renumbered (pair arrays beyond the shared ones as they are). A
    memory-mapped array's pages are dropped again once copied."""
    from fercurate.workspace import release_pages

    subsets, renumbered = [], []
    for array, picks in zip(shared, pairs, strict=False):
        used, local = np.unique(picks, return_inverse=True)
        subsets.append(array[used])
        release_pages(array)
        renumbered.append(local.astype(picks.dtype, copy=False))
    return (fn, *subsets, *renumbered, *pairs[len(shared) :])


def _per_block(batches: int, cpus: int) -> int:
    """Batches per Ray Data block: enough blocks to keep every CPU busy, no more tasks than needed."""
    least, most = _BATCHES_PER_BLOCK
    return max(least, min(most, -(-batches // (_BLOCKS_PER_CPU * max(1, cpus)))))


def _any_mapped(arrays: tuple[np.ndarray, ...]) -> bool:
    from fercurate.workspace import is_mapped

    return any(is_mapped(a) for a in arrays)


def _batch_row(start: int, n: int, result: Any) -> dict[str, list[Any]]:
    """A batch's result as one output row: where it starts, its size, the node, the pickled result."""
    return {"start": [start], "n": [n], "node": [_node()], "result": [pickle.dumps(result, protocol=5)]}


def _items_batch(fn: Callable[[list[Any]], Any], batch: Any) -> dict[str, list[Any]]:
    """Ray Data batch: ``fn`` of the batch's items (strings as they are, anything else unpickled)."""
    pos = batch["pos"].to_numpy()
    column = batch["item"]
    items = column.to_pylist() if column.type == "string" else [pickle.loads(v) for v in column.to_pylist()]
    return _batch_row(int(pos[0]), len(pos), fn(items))


def joined_arrays(parts: Sequence[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """Per-batch tuples of arrays (a kernel's results over consecutive batches) joined element by element."""
    if len(parts) == 1:
        return parts[0]
    return tuple(np.concatenate(column) for column in zip(*parts, strict=True))


@contextmanager
def open_engine(params: EngineParams | None = None) -> Iterator[Engine]:
    """The engine ``params`` chooses, released when the block ends (a Ray started here is stopped)."""
    params = params or EngineParams()
    engine: Engine = Engine() if params.engine == "local" else RayEngine(params.ray_address)
    try:
        yield engine
    finally:
        engine.close()
