"""Dynamic batching for mner-serve: one worker thread owns the pipeline and tags coalesced requests.

``Pipeline`` keeps state between calls (a lazily made thread pool, runner sessions), so
it is used from one thread only. Requests hand their posts to ``Batcher.submit`` on the
event loop; the worker takes the first waiting request, keeps collecting until the
batch holds ``max_batch`` posts or ``max_wait_ms`` has passed since it took the first,
tags them in one ``pipeline.tag`` call, and resolves each request's future on the loop.
A request's posts are never split across batches, so a batch request larger than
``max_batch`` is tagged whole (the pipeline chunks it at its own batch size).

One request's problem stays its own: a post the pipeline cannot tag gets its error in
its result (the pipeline re-tags a failing batch post by post), and should
``pipeline.tag`` raise all the same, the batch's requests are tagged one by one, so only
the request that fails alone gets the exception (its 500).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mner.runtime.pipeline import Pipeline, Post, TagResult

logger = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class ServeConfig:
    """Batching and limits. Each default says why."""

    max_batch: int = 32  # posts per pipeline call: past ~32 the CPU tagger gains little per post
    max_wait_ms: float = 5.0  # what a lone request pays to give others a chance to join its batch
    max_queue: int = 1024  # posts waiting; at ~1 ms a post on CPU, ~1 s of work before 503
    timeout_s: float = 30.0  # a request waiting longer gets 504 (its posts are skipped if not started)
    max_body_bytes: int = 16 << 20  # a few full-size pictures in base64
    max_text_chars: int = 10_000  # far above a tweet (280); long posts are windowed, not truncated
    max_posts: int = 64  # posts in one /v1/tag/batch call

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "max_body_bytes", "max_text_chars", "max_posts"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not self.max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms!r}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s!r}")


class QueueFull(RuntimeError):
    """The bounded queue has no room for a request's posts."""


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (two apps in one process do not collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("mner_requests", "HTTP requests answered, by endpoint and status code",
                                ["endpoint", "status"], registry=self.registry)  # fmt: skip
        self.errors = Counter("mner_errors", "Requests refused or failed, by kind", ["kind"], registry=self.registry)
        self.latency = Histogram("mner_request_seconds", "Time from a request's arrival to its response, by endpoint",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)  # fmt: skip
        self.batch_size = Histogram("mner_batch_size", "Posts per pipeline call (dynamic batches)",
                                    buckets=BATCH_BUCKETS, registry=self.registry)  # fmt: skip
        self.batch_seconds = Histogram("mner_batch_seconds", "Time the pipeline took per batch",
                                       buckets=LATENCY_BUCKETS, registry=self.registry)  # fmt: skip
        self.queue_depth = Gauge("mner_queue_depth", "Posts accepted and waiting for a batch", registry=self.registry)
        self.posts = Counter("mner_posts", "Posts tagged", registry=self.registry)


@dataclass
class _Job:
    posts: Sequence[Post]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    abandoned: threading.Event = field(default_factory=threading.Event)  # the request timed out: skip it


class Batcher:
    """Coalesces requests into batches for one pipeline, tagged by one worker thread.

    ``start()`` launches the worker, which warms the pipeline up (``ready`` is set
    after); ``close()`` lets it finish every request already submitted, then stops it.
    """

    def __init__(self, pipeline: Pipeline, metrics: Metrics, config: ServeConfig, warmup_posts: Sequence[Post] = ()) -> None:
        self.pipeline = pipeline
        self.metrics = metrics
        self.max_batch = config.max_batch  # the limits come checked by ServeConfig
        self.max_wait = config.max_wait_ms / 1000
        self.max_queue = config.max_queue
        self.warmup_posts = list(warmup_posts)
        self.ready = threading.Event()
        self.failed: str | None = None  # why warm-up failed, if it did
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._depth = 0  # posts submitted and not yet taken into a batch
        self._lock = threading.Lock()
        self._closing = False
        self._thread = threading.Thread(target=self._work, name="mner-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float | None = None) -> None:
        """Finish what was submitted, then stop the worker."""
        with self._lock:
            self._closing = True
        self._queue.put(None)
        self._thread.join(timeout)

    @property
    def depth(self) -> int:
        return self._depth

    def submit(self, posts: Sequence[Post]) -> tuple[asyncio.Future, threading.Event]:
        """Queue ``posts`` for tagging; returns a future for their results and an event to set on giving up.

        Raises ``QueueFull`` when the queue lacks room and ``RuntimeError`` once closing."""
        assert posts, "submit needs at least one post"
        loop = asyncio.get_running_loop()
        job = _Job(posts, loop.create_future(), loop)
        with self._lock:
            if self._closing:
                raise RuntimeError("the service is shutting down")
            if self._depth + len(posts) > self.max_queue:
                raise QueueFull(f"the queue holds {self._depth} of at most {self.max_queue} posts")
            self._depth += len(posts)
            self.metrics.queue_depth.set(self._depth)
            self._queue.put(job)
        return job.future, job.abandoned

    # ----------------------------------------------------------------------------- worker

    def _work(self) -> None:
        try:
            if self.warmup_posts:
                started = time.perf_counter()
                self.pipeline.tag(self.warmup_posts)
                logger.info("warm-up: %d posts in %.2f s", len(self.warmup_posts), time.perf_counter() - started)
            self.ready.set()
        except Exception as error:  # noqa: BLE001 -- reported on /readyz; requests still get the pipeline's answer
            self.failed = f"warm-up failed: {error}"
            logger.exception("warm-up failed")
        stopping = False
        while not stopping:
            job = self._queue.get()
            if job is None:
                break
            jobs = [job]
            size = len(job.posts)
            deadline = time.monotonic() + self.max_wait
            while size < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    more = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:  # close(): finish this batch and what is already queued, then stop
                    stopping = True
                    break
                jobs.append(more)
                size += len(more.posts)
            self._run(jobs)
        while True:  # jobs submitted before close() but behind the sentinel
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._run([job])

    def _run(self, jobs: list[_Job]) -> None:
        with self._lock:
            self._depth -= sum(len(job.posts) for job in jobs)
            self.metrics.queue_depth.set(self._depth)
        live = [job for job in jobs if not job.abandoned.is_set()]
        if not live:
            return
        posts = [post for job in live for post in job.posts]
        started = time.perf_counter()
        try:
            results = self.pipeline.tag(posts)
        except Exception as error:  # noqa: BLE001 -- a failure outside the pipeline's own post-by-post retry
            # Tag each request alone: only one that fails alone too gets the exception (its 500).
            if len(live) == 1:
                logger.exception("the pipeline failed on a request of %d posts", len(posts))
                outcomes: list[list[TagResult] | BaseException] = [error]
            else:
                logger.warning("the pipeline failed on a batch of %d requests (%s: %s); tagging them one by one",
                               len(live), type(error).__name__, error)  # fmt: skip
                outcomes = [self._tag_alone(job) for job in live]
        else:
            ends = list(itertools.accumulate(len(job.posts) for job in live))
            outcomes = [results[end - len(job.posts) : end] for job, end in zip(live, ends)]
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        self.metrics.batch_size.observe(len(posts))
        for job, outcome in zip(live, outcomes):
            if not isinstance(outcome, BaseException):
                self.metrics.posts.inc(len(job.posts))
            job.loop.call_soon_threadsafe(_resolve, job.future, outcome)

    def _tag_alone(self, job: _Job) -> list[TagResult] | BaseException:
        try:
            return self.pipeline.tag(job.posts)
        except Exception as error:  # noqa: BLE001 -- this request's 500
            logger.exception("the pipeline failed on a request of %d posts", len(job.posts))
            return error


def _resolve(future: asyncio.Future, outcome) -> None:
    if future.done():  # cancelled by a timeout meanwhile
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
