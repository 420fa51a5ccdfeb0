"""Dynamic micro-batching: prepared videos for one model, run in batches on one thread."""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .guard import ApiError
from .metrics import Metrics
from .runtime import Feed, OnnxModel


@dataclass
class _Job:
    x: Feed
    future: asyncio.Future


class MicroBatcher:
    """Collects prepared videos for one model and runs them in batches on a single inference
    thread: a batch closes when it holds ``max_batch_size`` videos, ``max_delay`` seconds after
    its first video arrived, or as soon as the queue is empty and no other request for this
    model is still decoding (nothing more is coming), whichever comes first."""

    def __init__(self, model: OnnxModel, name: str, max_batch_size: int, max_delay: float, metrics: Metrics):
        self.model, self.name, self.max_batch, self.max_delay = model, name, max_batch_size, max_delay
        self.metrics = metrics
        self.queue: asyncio.Queue = asyncio.Queue()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix=f"infer-{name}")
        self.task: asyncio.Task | None = None
        self.incoming = 0  # requests for this model still being read/decoded

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Finish what is queued, then stop."""
        if self.task is not None:
            await self.queue.put(None)
            await self.task
        self.pool.shutdown(wait=True)

    async def submit(self, x: Feed) -> np.ndarray:
        if self.task is None or self.task.done():
            raise ApiError(503, "shutting_down", "the service is shutting down")
        job = _Job(x, asyncio.get_running_loop().create_future())
        await self.queue.put(job)
        self.metrics.queue.labels(self.name).set(self.queue.qsize())
        return await job.future

    async def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        loop = asyncio.get_running_loop()
        batch, deadline = [first], loop.time() + self.max_delay
        while len(batch) < self.max_batch:
            try:
                job = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0 or not self.incoming:
                    break  # waiting only pays while more videos are on their way
                try:
                    job = await asyncio.wait_for(self.queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            if job is None:
                return batch, True
            batch.append(job)
        return batch, False

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self.queue.get()
            if first is None:
                return
            batch, stop = await self._collect(first)
            self.metrics.queue.labels(self.name).set(self.queue.qsize())
            batch = [j for j in batch if not j.future.done()]  # the client went away meanwhile
            if batch:
                t0 = time.perf_counter()
                try:
                    probs = await loop.run_in_executor(self.pool, self.model.run_many, [j.x for j in batch])
                except Exception as e:  # noqa: BLE001 - answered to every waiting request
                    err = ApiError(500, "inference_failed", f"model {self.name!r} failed: {e}")
                    for j in batch:
                        if not j.future.done():
                            j.future.set_exception(err)
                else:
                    self.metrics.infer.labels(self.name).observe(time.perf_counter() - t0)
                    self.metrics.batch.labels(self.name).observe(len(batch))
                    for j, p in zip(batch, probs):
                        if not j.future.done():
                            j.future.set_result(p)
            if stop:
                return
