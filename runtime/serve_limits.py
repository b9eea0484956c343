"""The HTTP connection limits of mner-serve, apart from runtime.serve so that the CLI can show their defaults
without importing the web stack."""

from __future__ import annotations

from dataclasses import dataclass


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
