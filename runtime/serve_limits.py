"""The limits of mner-serve: batching and request limits (ServeConfig) and HTTP connection limits (HttpLimits).

Apart from runtime.serve and runtime.serve_batcher, and importing nothing but the standard library, so that
``mner-serve --help`` shows their defaults without importing the web stack, numpy or prometheus_client.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeConfig:
    """Batching and limits. Each default says why."""

    max_batch: int = 32  # posts per batch (--batch-size): past ~32 the CPU tagger gains little per post
    max_wait_ms: float = 5.0  # what a lone request pays to give others a chance to join its batch
    max_queue: int = 1024  # posts waiting; at ~1 ms a post on CPU, ~1 s of work before 503
    timeout_s: float = 30.0  # a request waiting longer gets 504 (its posts are skipped if not started)
    max_body_bytes: int = 16 << 20  # a few full-size pictures in base64
    max_text_chars: int = 10_000  # far above a tweet (280); long posts are windowed, not truncated
    max_request_posts: int = 64  # posts in one /v1/tag/batch call
    # The work one request may ask for (serve_budget), checked before it is queued. A 10,000-character post of
    # prose has ~2,500 word-pieces; 10,000 characters of one-piece fragments ("a a a ...") up to 10,000 (~330
    # windows of 64), which max_post_pieces refuses. max_request_pieces takes 64 tweets (~100 pieces each) twice
    # over, or 4 posts at max_post_pieces: on a CPU with the paper-size tagger (~260 windows of 128) well within
    # timeout_s, and the fair scheduling keeps other requests' latency bounded meanwhile.
    max_post_pieces: int = 4096
    max_request_pieces: int = 16_384
    max_request_pixels: int = 50_000_000  # four 12-MP phone photos, or 48 pictures of 1 MP: ~1-2 s of decoding on a core
    max_batch_pixels: int = 4_000_000  # pictures decoded in one step (~0.1-0.2 s on a core); a larger one is a step alone
    # Word-pieces per step of the worker (one tagger call; a batch of short posts is one step): ~20 tweets, or 8
    # windows of 64 / 4 of 128. What a short request waits for behind a long one: ~50 ms for the tiny test tagger
    # on a loaded 2-core machine, where 1024 doubled a short request's p99 behind the largest legal request and
    # did not speed that one up measurably; lower it for a large tagger on a CPU, raise it on a GPU.
    max_step_pieces: int = 512

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "max_body_bytes", "max_text_chars", "max_request_posts",
                     "max_post_pieces", "max_request_pieces", "max_request_pixels", "max_batch_pixels",
                     "max_step_pieces"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.max_post_pieces > self.max_request_pieces:
            raise ValueError(f"max_post_pieces ({self.max_post_pieces}) must not exceed max_request_pieces "
                             f"({self.max_request_pieces}): a request holds at least one post")  # fmt: skip
        if not self.max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms!r}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s!r}")

    @property
    def max_posts(self) -> int:
        """The old name of ``max_request_posts`` (mner-serve's --max-posts), for callers written before it."""
        return self.max_request_posts


@dataclass(frozen=True)
class HttpLimits:
    """Timeouts and limits on connections (uvicorn's where it has them, ours where not). Each default says why."""

    header_timeout_s: float = 10.0  # request line + headers, from a connection's start or a request's first byte: a
    # client trickling its headers (slowloris) holds a connection no longer than this
    body_timeout_s: float = 30.0  # the whole body, from the end of its headers: a 16 MiB body at 4.5 Mbit/s
    keep_alive_s: float = 30.0  # an idle keep-alive connection is closed after this; keep it above a load
    # balancer's own idle timeout, or the balancer may send a request on a connection being closed
    max_connections: int = 512  # open connections; one more is answered 503 "too many connections" and closed
    drain_s: float = 5.0  # after SIGTERM: still listening, /readyz 503 "draining", every response Connection: close,
    # long enough for a load balancer polling /readyz every second or two to take the server out of rotation

    def __post_init__(self) -> None:
        for name in ("header_timeout_s", "body_timeout_s", "keep_alive_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if isinstance(self.max_connections, bool) or not isinstance(self.max_connections, int) or self.max_connections < 1:
            raise ValueError(f"max_connections must be a positive int, got {self.max_connections!r}")
        if not self.drain_s >= 0:
            raise ValueError(f"drain_s must be >= 0, got {self.drain_s!r}")
