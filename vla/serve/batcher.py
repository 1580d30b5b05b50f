"""Dynamic batching: requests that arrive together share one forward pass.

A batch closes when it holds ``max_batch`` requests, when every connected client has a request in
it (so a lone client never waits), or ``max_wait_s`` after its first request. The forward pass runs
on one worker thread, so the event loop keeps accepting, validating and answering meanwhile; the
requests that arrive during a pass form the next batch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


class ServerClosing(RuntimeError):
    """The batcher was stopped: no more requests are taken."""


@dataclass
class BatchInfo:
    size: int
    queue_ms: float  # submitted -> its batch started
    infer_ms: float  # the batch's forward pass


class MicroBatcher:
    def __init__(
        self,
        run_batch: Callable[[list[Any]], list[Any]],
        max_batch: int,
        max_wait_s: float,
        expected: Callable[[], int] = lambda: 1,
        on_batch: Callable[[int, float], None] | None = None,
    ):
        self.run_batch, self.max_batch, self.max_wait_s = run_batch, max_batch, max_wait_s
        self.expected, self.on_batch = expected, on_batch
        self.queue: asyncio.Queue = asyncio.Queue()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="vla-infer")
        self.task: asyncio.Task | None = None
        self.inflight: list[tuple] = []
        self.closed = False

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self, drain_s: float = 5.0) -> None:
        """Let queued and in-flight requests finish (up to ``drain_s``), fail the rest, free the thread."""
        self.closed = True
        deadline = time.perf_counter() + drain_s
        while (self.inflight or not self.queue.empty()) and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        leftovers = list(self.inflight)
        while not self.queue.empty():
            leftovers.append(self.queue.get_nowait())
        for _, future, _ in leftovers:
            if not future.done():
                future.set_exception(ServerClosing("the server is shutting down"))
        self.pool.shutdown(wait=True)

    async def submit(self, item: Any) -> tuple[Any, BatchInfo]:
        """Queue one request; returns (its result, the batch it ran in). Raises what its pass raised."""
        if self.closed:
            raise ServerClosing("the server is shutting down")
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((item, future, time.perf_counter()))
        return await future

    async def _collect(self) -> list[tuple]:
        batch = [await self.queue.get()]
        deadline = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch:
            if not self.queue.empty():
                batch.append(self.queue.get_nowait())
                continue
            remaining = deadline - time.perf_counter()
            if len(batch) >= min(self.max_batch, self.expected()) or remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), remaining))
            except TimeoutError:
                break
        return [
            entry for entry in batch if not entry[1].done()
        ]  # a cancelled request (client gone) is dropped

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = self.inflight = await self._collect()
            if not batch:
                continue
            start = time.perf_counter()
            items = [item for item, _, _ in batch]
            try:
                results = await loop.run_in_executor(self.pool, self.run_batch, items)
            except Exception:
                # one bad request must not fail its batch mates: rerun each alone
                results = []
                for item in items:
                    try:
                        results.append((await loop.run_in_executor(self.pool, self.run_batch, [item]))[0])
                    except Exception as e:
                        results.append(e)
            infer_ms = (time.perf_counter() - start) * 1e3
            if self.on_batch is not None:
                self.on_batch(len(batch), infer_ms / 1e3)
            for (_, future, submitted), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result((result, BatchInfo(len(batch), (start - submitted) * 1e3, infer_ms)))
            self.inflight = []
