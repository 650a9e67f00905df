"""Where the per-image batches and the per-model tasks of a stage run: here, or on a Ray cluster.

A stage hands its pure batch function to an :class:`Engine`; the engine decides where it runs and
gives the results back in input order, so a stage computes the same thing on either engine.

* ``local`` (the default): :func:`fercurate.images.apply_batches` (a process pool on this machine),
  whole-array kernels called directly, models trained one after the other in this process.
* ``ray``: per-item batches as a Ray Data ``map_batches`` over the item list (positions, with the
  items or a shared array), pair batches and model trainings as Ray tasks. Work may run on any node
  of the cluster; only this process (the driver) writes the workspace. Workers read images from the
  paths the driver gives them, so those must be on a filesystem every node sees (docs/scale.md).

Ray is an optional dependency (``pip install "fercurate[ray]"``) and is imported only here, only
when the ``ray`` engine is chosen.
"""

from __future__ import annotations

import functools
import importlib
import os
import pickle
import socket
from collections import Counter
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
#: Batches of files per Ray Data block (one task each): 16 measured faster than 4 (the overhead per
#: task) or 64 (blocks too few to balance) over 30K files on 2 cores
_BATCHES_PER_BLOCK = 16

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
        from fercurate.images import apply_batches

        parts = apply_batches(fn, items, batch_size=batch_size, workers=workers, progress=progress)
        self.batches_by_node["local"] += len(parts)
        return parts

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
        """
        self.batches_by_node["local"] += 1
        return [fn(pixels) if rows is None else fn(pixels, rows=rows)]

    def map_pairs(
        self,
        fn: Callable[..., R],
        shared: tuple[np.ndarray, ...],
        pairs: tuple[np.ndarray, ...],
        *,
        batch_size: int = 32768,
    ) -> list[R]:
        """``fn(*shared, *pair_slices)`` over slices of the per-pair arrays: the results in order."""
        return [fn(*shared, *pairs)]

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
        #: arrays already in the object store (id -> (array, ref)): dedup maps the same pixels up to
        #: five times, and each put would copy them again
        self._puts: dict[int, tuple[Any, Any]] = {}
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

    def map_batches(
        self,
        fn: Callable[[list[T]], R],
        items: Sequence[T],
        *,
        batch_size: int = 512,
        workers: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[R]:
        """Ray Data ``map_batches`` over the items' positions; each batch's items travel with it
        (strings as an Arrow column, anything else pickled per item)."""
        import pyarrow as pa

        listed = list(items)
        if all(isinstance(item, str) for item in listed):
            column = pa.array(listed, pa.string())
        else:
            column = pa.array([pickle.dumps(item) for item in listed], pa.binary())
        table = pa.table({"pos": np.arange(len(listed), dtype=np.int64), "item": column})
        return self._map(functools.partial(_items_batch, fn), table, batch_size, _BATCHES_PER_BLOCK, progress)

    def map_images(
        self,
        fn: Callable[..., R],
        pixels: np.ndarray,
        *,
        rows: np.ndarray | None = None,
        batch_size: int = 4096,
    ) -> list[R]:
        """Ray Data ``map_batches`` over the image positions; the array is put in the object store once
        (workers on the driver's node read it in place, other nodes fetch it once)."""
        import pyarrow as pa

        order = np.arange(len(pixels), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        table = pa.table({"pos": np.arange(len(order), dtype=np.int64), "row": order})
        ref = self._put(pixels)
        # a batch of images is large already (thousands): one per block, so they spread over the nodes
        return self._map(functools.partial(_array_batch, fn, ref), table, batch_size, 1, None)

    def map_pairs(
        self,
        fn: Callable[..., R],
        shared: tuple[np.ndarray, ...],
        pairs: tuple[np.ndarray, ...],
        *,
        batch_size: int = 32768,
    ) -> list[R]:
        """One Ray task per ``batch_size`` pairs; the shared arrays are put in the object store once."""
        import ray

        shared_refs = [self._put(a) for a in shared]
        n = len(pairs[0]) if pairs else 0
        task = ray.remote(num_cpus=1)(_on_node)
        futures = [
            task.remote(fn, *shared_refs, *(p[s : s + batch_size] for p in pairs)) for s in range(0, n, batch_size)
        ] or [task.remote(fn, *shared_refs, *pairs)]
        return self._gather(futures)

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

    def _put(self, array: np.ndarray) -> Any:
        """``array`` in the object store, put there once per engine (the array is kept alive meanwhile)."""
        import ray

        if id(array) not in self._puts:
            self._puts[id(array)] = (array, ray.put(array))
        return self._puts[id(array)][1]

    def close(self) -> None:
        import ray

        self._puts.clear()
        if self._started:
            ray.shutdown()
            self._started = False

    def _map(
        self,
        udf: Callable[[Any], dict[str, list[Any]]],
        table: Any,
        batch_size: int,
        per_block: int,
        progress: Callable[[int], None] | None,
    ) -> list[Any]:
        """The Ray Data pipeline: blocks of whole batches, ``udf`` per batch, results sorted back by position."""
        import ray.data

        if table.num_rows == 0:
            return []
        block = batch_size * per_block
        blocks = [table.slice(s, block) for s in range(0, table.num_rows, block)]
        dataset = ray.data.from_arrow(blocks).map_batches(udf, batch_size=batch_size, batch_format="pyarrow")
        found: list[tuple[int, Any]] = []
        out: Any
        for out in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            columns = (out[c].to_pylist() for c in ("start", "n", "node", "result"))
            for start, n, node, blob in zip(*columns, strict=True):
                found.append((start, pickle.loads(blob)))
                self.batches_by_node[node] += 1
                if progress:
                    progress(n)
        found.sort(key=lambda pair: pair[0])
        return [result for _, result in found]

    def _gather(self, futures: list[Any]) -> list[Any]:
        import ray

        out = []
        for node, result in ray.get(futures):
            self.tasks_by_node[node] += 1
            out.append(result)
        return out


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


def _batch_row(start: int, n: int, result: Any) -> dict[str, list[Any]]:
    """A batch's result as one output row: where it starts, its size, the node, the pickled result."""
    return {"start": [start], "n": [n], "node": [_node()], "result": [pickle.dumps(result, protocol=5)]}


def _items_batch(fn: Callable[[list[Any]], Any], batch: Any) -> dict[str, list[Any]]:
    """Ray Data batch: ``fn`` of the batch's items (strings as they are, anything else unpickled)."""
    pos = batch["pos"].to_numpy()
    column = batch["item"]
    items = column.to_pylist() if column.type == "string" else [pickle.loads(v) for v in column.to_pylist()]
    return _batch_row(int(pos[0]), len(pos), fn(items))


def _array_batch(fn: Callable[[np.ndarray], Any], ref: Any, batch: Any) -> dict[str, list[Any]]:
    """Ray Data batch: ``fn`` of the batch's rows of the shared array (read in place from the object store)."""
    import ray

    pixels = ray.get(ref)
    rows = batch["row"].to_numpy()
    return _batch_row(int(batch["pos"].to_numpy()[0]), len(rows), fn(pixels[rows]))


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
