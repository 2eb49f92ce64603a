"""Adaptive batching: the rows of concurrent requests go through the graph in one run.

One runner per worker takes whatever requests are waiting (up to ``max_rows`` rows, all for the
same model version), runs them as one batch in a thread of its own, and hands each request its
slice of the outputs. There is no fixed wait: at low load a batch is one request and nothing is
added to its latency; under load the requests that arrive while a batch runs form the next one,
so the batch grows with the load. A neural graph's cost per run is mostly fixed (kernel
launches, the recurrent loop), so this is where batching pays.

A request's rows are validated before they join a batch, so one bad request never fails the
others; a batch that fails in the graph fails each of its requests with the same error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import deque
from collections.abc import Callable

import numpy as np

from driftloop.models.onnx_model import OnnxModel

Outputs = tuple[np.ndarray, np.ndarray | None]


class Batcher:
    def __init__(self, max_rows: int, observe: Callable[[int], None] = lambda n: None) -> None:
        self.max_rows = max_rows
        self._observe = observe  # rows per graph run (a histogram)
        self._queue: deque[tuple[OnnxModel, dict[str, np.ndarray], int, asyncio.Future[Outputs]]] = deque()
        self._wake: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="batch")

    async def run(self, model: OnnxModel, feeds: dict[str, np.ndarray], rows: int) -> Outputs:
        """The graph's outputs for these (validated) feeds, computed in a batch with others."""
        loop = asyncio.get_running_loop()
        if self._runner is None or self._runner.done():
            self._wake = asyncio.Event()
            self._runner = loop.create_task(self._run_batches(), name="batcher")
        future: asyncio.Future[Outputs] = loop.create_future()
        self._queue.append((model, feeds, rows, future))
        assert self._wake is not None
        self._wake.set()
        return await future

    def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
        self._pool.shutdown(wait=True)

    async def _run_batches(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            batch = self._take()
            model = batch[0][0]
            try:
                feeds = batch[0][1] if len(batch) == 1 else {
                    name: np.concatenate([item[1][name] for item in batch]) for name in batch[0][1]}
                total = sum(item[2] for item in batch)
                preds, scores = await loop.run_in_executor(self._pool, model.predict, feeds)
            except Exception as exc:  # the graph failed: every request of the batch learns why
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self._observe(total)
            start = 0
            for _, _, rows, future in batch:
                if not future.done():  # a cancelled request (client gone) is skipped
                    future.set_result((preds[start:start + rows], None if scores is None else scores[start:start + rows]))
                start += rows

    def _take(self) -> list[tuple[OnnxModel, dict[str, np.ndarray], int, asyncio.Future[Outputs]]]:
        """The waiting requests for the first one's model, up to ``max_rows`` rows (always at
        least one request, however many rows it has)."""
        first = self._queue.popleft()
        batch, rows = [first], first[2]
        while self._queue and self._queue[0][0] is first[0] and rows + self._queue[0][2] <= self.max_rows:
            item = self._queue.popleft()
            batch.append(item)
            rows += item[2]
        return batch


def batching_enabled(setting: str, model: OnnxModel) -> bool:
    """``serving.batching``: on, off, or auto (on for neural kinds, whose graphs gain from it)."""
    if setting != "auto":
        return setting == "on"
    from driftloop.models.families import FAMILIES

    family = FAMILIES.get(str(model.metadata.get("kind")))
    return bool(family and family.neural)
