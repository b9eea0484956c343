"""Dynamic batching and fair scheduling for mner-serve: one worker thread owns the pipeline.

``Pipeline`` keeps state between calls (a lazily made thread pool, runner sessions), so
it is used from one thread only. Requests hand their posts, with their costs
(``serve_budget``: word-pieces, windows, pixels), to ``Batcher.submit`` on the event
loop. The worker forms batches from the waiting requests and tags each batch in steps
(``Pipeline.tag_steps``: a step is a batch's pictures and first tagger call, or one more
tagger call, of at most ``max_step_pieces`` word-pieces: the pipeline is made with
``chunk_pieces=max_step_pieces``), taking the steps of all running batches in turn. So a
large request never holds the worker for its whole length:

- a batch holds at most ``max_batch`` posts, ``max_step_pieces`` word-pieces and
  ``max_batch_pixels`` decoded pixels (a post larger than that is a batch of its own, and
  a long post's windows are steps of their own): a request of many posts is cut into
  several batches, one running at a time;
- posts are taken from the waiting requests in turn, one each per round, the requests
  served least recently first (a request whose batch was just tagged goes behind those
  that arrived meanwhile), so a short request's posts start the next batch, and posts that
  would overflow it wait for a later one;
- a new batch is stepped ahead of the running ones, but then the running ones get the
  next step before another new batch goes ahead (a stream of short requests cannot
  starve a long one). A short request arriving while the largest legal request is being
  tagged waits for about one step of it, not for all of it.

Inside a batch, the posts are tagged in order of length: the pipeline sorts the batch's tagger
windows by word-pieces before it cuts them into calls of at most ``max_step_pieces`` padded
pieces (``Pipeline._run_tagger``; ``runtime.batching``), so a batch of short and long requests
is padded as little as its posts allow, and each result still goes back to its own post.

Each request's results are assembled in order and its future resolved once, when its
last post is tagged. An idle worker waits up to ``max_wait_ms`` after a first request for
others to join its batch.

Pictures are decoded off the worker: a batch with pictures is handed to one "mner-pictures"
thread (``Pipeline.prepare_image``) when it is formed, and stepped once they are ready, the
worker stepping other batches meanwhile; each request has at most one batch there, so a
short request's picture waits for at most one batch of each other request's. What a step
cannot cut: the detector and vision stages of one batch's pictures.

One request's problem stays its own: a post the pipeline cannot tag gets its error in
its result (the pipeline re-tags a failing batch post by post), and should the pipeline
raise all the same, the batch's requests are tagged one by one, so only the request that
fails alone gets the exception (its 500).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

from prometheus_client import (CollectorRegistry, Counter, Gauge, GCCollector, Histogram, Info, PlatformCollector,
                               ProcessCollector)

from mner.runtime.pipeline import Pipeline, Post, Steps, TagResult
from mner.runtime.serve_budget import PostCost
from mner.runtime.serve_limits import ServeConfig  # defined there (cheap for the CLI to import); part of this API

logger = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class QueueFull(RuntimeError):
    """The bounded queue has no room for a request's posts."""


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (two apps in one process do not collide), with
    the process (CPU, memory, file descriptors), platform (Python version) and garbage-collector collectors that
    prometheus_client puts on its default registry, and ``mner_bundle_info`` once ``describe`` is called."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        PlatformCollector(registry=self.registry)  # python_info
        GCCollector(registry=self.registry)  # python_gc_objects_collected_total, ...
        self.requests = Counter("mner_requests", "HTTP requests answered, by endpoint and status code",
                                ["endpoint", "status"], registry=self.registry)  # fmt: skip
        self.errors = Counter("mner_errors", "Requests refused or failed, by kind (not those answered 503 while "
                              "warming up or draining: mner_not_ready_total)", ["kind"], registry=self.registry)  # fmt: skip
        self.not_ready = Counter("mner_not_ready", "Requests answered 503 because the bundle was still warming up, or "
                                 "the server was draining (/readyz), by endpoint and reason", ["endpoint", "reason"],
                                 registry=self.registry)  # fmt: skip
        self.bundle = Info("mner_bundle", "The bundle served: the sha256 of its manifest.json (which lists every "
                           "file's sha256), backend, device and precision", registry=self.registry)  # fmt: skip
        self.latency = Histogram("mner_request_seconds", "Time from a request's arrival to its response, by endpoint",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)  # fmt: skip
        self.batch_size = Histogram("mner_batch_size", "Posts per pipeline call (dynamic batches)",
                                    buckets=BATCH_BUCKETS, registry=self.registry)  # fmt: skip
        self.batch_seconds = Histogram("mner_batch_seconds", "Time the pipeline took per batch",
                                       buckets=LATENCY_BUCKETS, registry=self.registry)  # fmt: skip
        self.queue_depth = Gauge("mner_queue_depth", "Posts accepted and waiting for a batch", registry=self.registry)
        self.posts = Counter("mner_posts", "Posts tagged", registry=self.registry)


@dataclass(eq=False)
class _Job:
    """A request: its posts and their costs, and how far its tagging has got."""

    posts: Sequence[Post]
    costs: Sequence[PostCost]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    abandoned: threading.Event = field(default_factory=threading.Event)  # the request timed out: skip it
    taken: int = 0  # posts handed to batches so far (in order)
    results: list[TagResult] = field(default_factory=list)  # of the posts tagged so far, in order

    @property
    def left(self) -> int:
        return len(self.posts) - self.taken


@dataclass(eq=False)
class _Part:
    """A request's posts [start, end) in a batch."""

    job: _Job
    start: int
    end: int

    @property
    def posts(self) -> Sequence[Post]:
        return self.job.posts[self.start : self.end]


@dataclass(eq=False)
class _Batch:
    """Posts of one or more requests, tagged together in steps."""

    parts: list[_Part]
    steps: Steps | None = None  # made at the first step
    seconds: float = 0.0  # spent in its steps
    prepared: Future | None = None  # its posts with their pictures decoded (mner-pictures thread), if it has any

    @property
    def posts(self) -> list[Post]:
        return [post for part in self.parts for post in part.posts]

    @property
    def ready(self) -> bool:
        return self.prepared is None or self.prepared.done()


_WAKE = object()  # put on the queue when a batch's pictures are ready: an idle worker wakes up


class Batcher:
    """Coalesces requests into batches for one pipeline, tagged in interleaved steps by one worker thread.

    ``start()`` launches the worker, which warms the pipeline up (``ready`` is set
    after); ``close()`` lets it finish every request already submitted, then stops it.
    """

    def __init__(self, pipeline: Pipeline, metrics: Metrics, config: ServeConfig, warmup_posts: Sequence[Post] = ()) -> None:
        self.pipeline = pipeline
        self.metrics = metrics
        self.max_batch = config.max_batch  # the limits come checked by ServeConfig
        self.max_batch_pixels = config.max_batch_pixels
        self.max_step_pieces = config.max_step_pieces
        self.max_wait = config.max_wait_ms / 1000
        self.max_queue = config.max_queue
        self.warmup_posts = list(warmup_posts)
        self.ready = threading.Event()
        self.failed: str | None = None  # why warm-up failed, if it did
        self._queue: queue.Queue = queue.Queue()  # _Job, _WAKE, or None from close()
        self._pictures = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mner-pictures")
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
        if not self._thread.is_alive():  # else the worker may still hand it pictures
            self._pictures.shutdown(wait=False)

    @property
    def depth(self) -> int:
        return self._depth

    def submit(self, posts: Sequence[Post],
               costs: Sequence[PostCost] | None = None) -> tuple[asyncio.Future, threading.Event]:  # fmt: skip
        """Queue ``posts`` for tagging; returns a future for their results and an event to set on giving up.

        ``costs`` (``serve_budget.post_costs``) let the worker cut the request into batches of
        bounded work; without them each post counts as one window and no pixels. Raises
        ``QueueFull`` when the queue lacks room and ``RuntimeError`` once closing."""
        assert posts, "submit needs at least one post"
        costs = [PostCost()] * len(posts) if costs is None else list(costs)
        assert len(costs) == len(posts), "one cost per post"
        loop = asyncio.get_running_loop()
        job = _Job(posts, costs, loop.create_future(), loop)
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
                logger.info("ready: warm-up took %.2f s (%d post%s)", time.perf_counter() - started, len(self.warmup_posts),
                            "" if len(self.warmup_posts) == 1 else "s")  # fmt: skip
            self.ready.set()
        except Exception as error:  # noqa: BLE001 -- reported on /readyz; requests still get the pipeline's answer
            self.failed = f"warm-up failed: {error}"
            logger.exception("warm-up failed")
        waiting: deque[_Job] = deque()  # requests with posts to batch and none running: served least recently first
        rejoining: list[_Job] = []  # requests whose batch was just tagged, with posts left: behind new arrivals
        running: deque[_Batch] = deque()  # batches with steps left, in turn
        owed = False  # a new batch was stepped ahead of running ones: they get the next step
        stopping = False
        while True:
            if stopping and not waiting and not running and not rejoining:
                break
            idle = not waiting and not rejoining and not any(batch.ready for batch in running)
            stopping = self._take_jobs(waiting, block=idle) or stopping  # close(): finish what came before it
            waiting.extend(rejoining)
            rejoining.clear()
            self._drop_abandoned(waiting)
            if waiting and not (owed and any(batch.ready for batch in running)):
                running.appendleft(self._form(waiting))
            for _ in range(len(running)):  # the first batch whose pictures are ready, in turn
                if running[0].ready:
                    break
                running.rotate(-1)
            if not running or not running[0].ready:
                continue
            batch = running.popleft()
            owed = batch.steps is None and bool(running)
            if not self._step(batch, rejoining):
                running.append(batch)

    def _take_jobs(self, waiting: deque[_Job], *, block: bool) -> bool:
        """Move submitted requests to ``waiting``; True once close()'s sentinel is read. With ``block`` (the
        worker is idle), wait for a first request, then up to max_wait for others to fill a batch."""
        if not block:
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    return False
                if job is None:
                    return True
                if job is not _WAKE:
                    waiting.append(job)
        job = self._queue.get()
        if job is None:
            return True
        if job is _WAKE:  # a batch's pictures are ready: step it
            return False
        waiting.append(job)
        size = len(job.posts)
        deadline = time.monotonic() + self.max_wait
        while size < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                return False
            if job is None:
                return True
            if job is not _WAKE:
                waiting.append(job)
                size += len(job.posts)
        return False

    def _drop_abandoned(self, waiting: deque[_Job]) -> None:
        """Requests that timed out leave the queue with their posts not yet batched."""
        for job in [job for job in waiting if job.abandoned.is_set()]:
            waiting.remove(job)
            self._release(job)

    def _release(self, job: _Job) -> None:
        """The request's posts not yet batched will never be: out of the queue's depth."""
        with self._lock:
            self._depth -= job.left
            self.metrics.queue_depth.set(self._depth)
        job.taken = len(job.posts)

    def _form(self, waiting: deque[_Job]) -> _Batch:
        """A batch of posts from the waiting requests, in turn (one post each per round, from the front),
        up to max_batch posts, max_step_pieces word-pieces and max_batch_pixels; a post that does not fit is left
        for a later batch (its request keeps its place), unless the batch is empty. The requests that
        gave posts leave ``waiting`` until this batch is tagged."""
        parts: dict[_Job, _Part] = {}
        open_jobs = list(waiting)
        posts = pieces = pixels = 0
        while open_jobs and posts < self.max_batch:
            for job in list(open_jobs):
                cost = job.costs[job.taken]
                tagged = cost.pieces + 2 * cost.windows  # [CLS] and [SEP] per window
                if posts and (pieces + tagged > self.max_step_pieces or pixels + cost.pixels > self.max_batch_pixels):
                    open_jobs.remove(job)
                    continue
                part = parts.setdefault(job, _Part(job, job.taken, job.taken))
                part.end = job.taken = job.taken + 1
                posts, pieces, pixels = posts + 1, pieces + tagged, pixels + cost.pixels
                if not job.left:
                    open_jobs.remove(job)
                if posts == self.max_batch:
                    break
        for job in parts:
            waiting.remove(job)
        with self._lock:
            self._depth -= posts
            self.metrics.queue_depth.set(self._depth)
        self.metrics.batch_size.observe(posts)
        batch = _Batch(list(parts.values()))
        if any(isinstance(post.image, (bytes, bytearray, memoryview)) for post in batch.posts):
            batch.prepared = self._pictures.submit(self._prepare, batch.posts)
            batch.prepared.add_done_callback(lambda _: self._queue.put(_WAKE))
        return batch

    def _prepare(self, posts: list[Post]) -> list[Post]:
        """The posts with their pictures decoded and resized (on the mner-pictures thread)."""
        return [Post(post.text, self.pipeline.prepare_image(post.image))
                if isinstance(post.image, (bytes, bytearray, memoryview)) else post for post in posts]  # fmt: skip

    def _step(self, batch: _Batch, rejoining: list[_Job]) -> bool:
        """Take one step of ``batch``; True when it is done (its requests answered when complete, or in
        ``rejoining`` with posts left)."""
        if all(part.job.abandoned.is_set() for part in batch.parts):
            if batch.steps is not None:
                batch.steps.close()
            self._finish(batch, [], rejoining)
            return True
        started = time.perf_counter()
        try:
            if batch.steps is None:
                batch.steps = self.pipeline.tag_steps(batch.posts if batch.prepared is None else batch.prepared.result())
            next(batch.steps)
        except StopIteration as done:
            outcome: list[TagResult] | BaseException = done.value
        except Exception as error:  # noqa: BLE001 -- a failure outside the pipeline's own post-by-post retry
            outcome = error
        else:
            batch.seconds += time.perf_counter() - started
            return False
        batch.seconds += time.perf_counter() - started
        self.metrics.batch_seconds.observe(batch.seconds)
        self._finish(batch, outcome, rejoining)
        return True

    def _finish(self, batch: _Batch, outcome: list[TagResult] | BaseException, rejoining: list[_Job]) -> None:
        live = [part for part in batch.parts if not part.job.abandoned.is_set()]
        if isinstance(outcome, BaseException) and live:
            # Tag each request's part alone: only one that fails alone too gets the exception (its 500).
            if len(live) == 1:
                logger.error("the pipeline failed on a request of %d posts", len(batch.posts), exc_info=outcome)
                outcomes: list[list[TagResult] | BaseException] = [outcome]
            else:
                logger.warning("the pipeline failed on a batch of %d requests (%s: %s); tagging them one by one",
                               len(live), type(outcome).__name__, outcome)  # fmt: skip
                outcomes = [self._tag_alone(part.posts) for part in live]
        elif live:
            ends = list(itertools.accumulate(len(part.posts) for part in batch.parts))
            by_part = {id(part): outcome[end - len(part.posts) : end] for part, end in zip(batch.parts, ends)}
            outcomes = [by_part[id(part)] for part in live]
        else:
            outcomes = []
        for part, result in zip(live, outcomes):
            job = part.job
            if isinstance(result, BaseException):
                self._release(job)
                job.loop.call_soon_threadsafe(_resolve, job.future, result)
                continue
            self.metrics.posts.inc(len(result))
            job.results.extend(result)
            if len(job.results) == len(job.posts):
                job.loop.call_soon_threadsafe(_resolve, job.future, job.results)
            else:
                rejoining.append(job)
        for part in batch.parts:
            if part.job.abandoned.is_set():
                self._release(part.job)

    def _tag_alone(self, posts: Sequence[Post]) -> list[TagResult] | BaseException:
        try:
            return self.pipeline.tag(posts)
        except Exception as error:  # noqa: BLE001 -- this request's 500
            logger.exception("the pipeline failed on a request of %d posts", len(posts))
            return error


def _resolve(future: asyncio.Future, outcome) -> None:
    if future.done():  # cancelled by a timeout meanwhile
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
