"""Dynamic batching for the local model server: concurrent requests, one model call.

A replica's request threads hand their decoded inputs to a `Batcher` and wait. One model
thread takes the oldest request and every queued request of the same signature and input
shapes, up to ``max_instances`` instances in all, waiting at most ``timeout_s`` after the
oldest arrived for more to come (not at all once the batch is full), calls the model once
on the inputs stacked along the first dimension, and gives each request its own rows back.
If that call fails, each request of the batch is run alone, so that one bad input (an
image TensorFlow cannot decode) fails its own request only.

One model thread also means one model call at a time per replica: the threads TensorFlow
was given are not shared by several calls at once.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

Predict = Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Timing:
    """Where one request's model time went: queued, then in a model call."""

    queue_s: float
    model_s: float
    batch_instances: int  # instances in the model call that served it


@dataclass
class _Pending:
    signature: str
    inputs: dict[str, np.ndarray]
    key: tuple
    count: int
    arrived: float = field(default_factory=time.perf_counter)
    future: Future = field(default_factory=Future)


def batch_key(signature: str, inputs: dict[str, np.ndarray]) -> tuple:
    """Requests can share a model call when this is equal: same signature, names, dtypes
    and shapes but for the first (instances) dimension."""
    return (signature, tuple(sorted((name, a.dtype.str, a.shape[1:])
                                    for name, a in inputs.items())))


def split_rows(outputs: dict[str, np.ndarray], counts: list[int]) -> list[dict] | None:
    """Each request's rows of a batched call's outputs; None if an output is not one row
    per instance (then the batch cannot be split and each request runs alone)."""
    total = sum(counts)
    arrays = {name: np.asarray(value) for name, value in outputs.items()}
    if any(a.ndim == 0 or a.shape[0] != total for a in arrays.values()):
        return None
    bounds = np.cumsum(counts)[:-1]
    parts = {name: np.split(a, bounds) for name, a in arrays.items()}
    return [{name: parts[name][i] for name in arrays} for i in range(len(counts))]


class Batcher:
    """Runs ``predict`` on batches of concurrent requests from one model thread."""

    def __init__(self, predict: Predict, *, max_instances: int, timeout_s: float) -> None:
        if max_instances < 1:
            raise ValueError(f"max_instances must be at least 1, got {max_instances}")
        if timeout_s < 0:
            raise ValueError(f"timeout_s must be 0 or more, got {timeout_s}")
        self._predict = predict
        self.max_instances = max_instances
        self.timeout_s = timeout_s
        self._queue: collections.deque[_Pending] = collections.deque()
        self._ready = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="model", daemon=True)
        self._thread.start()

    def predict(self, signature: str, inputs: dict[str, np.ndarray]
                ) -> tuple[dict[str, np.ndarray], Timing]:
        """This request's outputs (and timing), or the exception its model call raised."""
        count = len(next(iter(inputs.values()))) if inputs else 0
        item = _Pending(signature, inputs, batch_key(signature, inputs), count)
        with self._ready:
            if self._stopped:
                raise RuntimeError("the server is stopping")
            self._queue.append(item)
            self._ready.notify()
        return item.future.result()

    def stop(self) -> None:
        """End the model thread once the queued requests are served."""
        with self._ready:
            self._stopped = True
            self._ready.notify()
        self._thread.join(timeout=30)

    # model thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._serve(batch)
            except BaseException as exc:  # never leave a caller waiting forever
                log.exception("batched prediction failed unexpectedly")
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)

    def _next_batch(self) -> list[_Pending] | None:
        with self._ready:
            while not self._queue:
                if self._stopped:
                    return None
                self._ready.wait()
            first = self._queue[0]
            deadline = first.arrived + self.timeout_s
            while True:
                batch = self._take_matching(first, dry_run=True)
                full = sum(item.count for item in batch) >= self.max_instances
                left = deadline - time.perf_counter()
                if full or left <= 0 or self._stopped:
                    return self._take_matching(first, dry_run=False)
                self._ready.wait(left)

    def _take_matching(self, first: _Pending, dry_run: bool) -> list[_Pending]:
        """The oldest request and the queued ones that can join it, oldest first."""
        batch, total = [], 0
        for item in self._queue:
            if item is not first and (item.key != first.key
                                      or total + item.count > self.max_instances):
                continue
            batch.append(item)
            total += item.count
        if not dry_run:
            taken = set(map(id, batch))
            self._queue = collections.deque(i for i in self._queue if id(i) not in taken)
        return batch

    def _serve(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        if len(batch) == 1:
            self._serve_alone(batch[0], started)
            return
        names = list(batch[0].inputs)
        stacked = {name: np.concatenate([item.inputs[name] for item in batch])
                   for name in names}
        try:
            outputs = self._predict(batch[0].signature, stacked)
        except Exception:  # one bad input spoils the batch: find it, run each alone
            log.info("a batch of %d requests failed; running each alone", len(batch))
            for item in batch:
                self._serve_alone(item, time.perf_counter())
            return
        model_s = time.perf_counter() - started
        rows = split_rows(outputs, [item.count for item in batch])
        if rows is None:
            log.warning("outputs of %s are not one row per instance; not batching them",
                        batch[0].signature)
            for item in batch:
                self._serve_alone(item, time.perf_counter())
            return
        total = sum(item.count for item in batch)
        for item, own in zip(batch, rows, strict=True):
            item.future.set_result((own, Timing(started - item.arrived, model_s, total)))

    def _serve_alone(self, item: _Pending, started: float) -> None:
        try:
            outputs = self._predict(item.signature, item.inputs)
        except Exception as exc:
            item.future.set_exception(exc)
            return
        timing = Timing(started - item.arrived, time.perf_counter() - started, item.count)
        item.future.set_result((outputs, timing))
