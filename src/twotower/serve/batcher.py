"""Micro-batching of concurrent requests: one inference thread, batches formed from whatever is waiting.

While the inference thread runs a batch, newly arrived requests queue; the next batch takes all of them (up
to ``max_batch``). Under light load every batch has one request and nothing waits; under heavy load the
online head's fixed per-call cost (dozens of small torch ops) is paid once per batch instead of once per
request. ``max_wait_s`` > 0 additionally holds a non-full batch that long; 0 (the default) adds no latency.
A single inference thread also keeps torch and FAISS from fighting over the two cores of a small box.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
P = TypeVar("P")
R = TypeVar("R")


class MicroBatcher(Generic[P, R]):
    """``await submit(items)`` -> results of ``run_batch`` for those items, in order."""

    def __init__(self, run_batch: Callable[[list[P]], Sequence[R]], max_batch: int = 32, max_wait_s: float = 0.0):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.run_batch, self.max_batch, self.max_wait_s = run_batch, max_batch, max_wait_s
        self._pending: list[tuple[P, asyncio.Future]] = []
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="twotower-infer")
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    async def submit(self, items: Sequence[P]) -> list[R]:
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._worker(), name="twotower-micro-batcher")
        futures = [loop.create_future() for _ in items]
        self._pending.extend(zip(items, futures))
        self._wake.set()
        return list(await asyncio.gather(*futures))

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            if self.max_wait_s and len(self._pending) < self.max_batch:
                await asyncio.sleep(self.max_wait_s)
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            if not self._pending:
                self._wake.clear()
            batch = [(p, f) for p, f in batch if not f.done()]  # a client that went away cancelled its future
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self.run_batch, [p for p, _ in batch])
            except Exception as exc:  # a bug: fail these requests (500), keep serving the next ones
                log.exception("inference batch of %d failed", len(batch))
                for _, f in batch:
                    if not f.done():
                        f.set_exception(exc)
                continue
            for (_, f), res in zip(batch, results):
                if not f.done():
                    f.set_result(res)

    async def close(self) -> None:
        """Stop the worker (after the server drained its requests) and the inference thread."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._executor.shutdown(wait=True)
