"""mner-serve: the pipeline over HTTP (FastAPI on uvicorn), with dynamic batching, limits and metrics.

    POST /v1/tag        {"text": "...", "image_base64": "..."?}  or multipart: text field + image file
    POST /v1/tag/batch  {"posts": [{"text", "image_base64"?}, ...]}
    GET  /healthz  /readyz  /metrics (Prometheus text)  /openapi.json
    GET  /v1/info       what is served: bundle, backend, precision, stages, entity types, main limits
    GET  /              a page to try the model in a browser (runtime/web: its files, served with a
                        Content-Security-Policy that allows only them; see _page_files)
    GET  /docs (Swagger UI)  /redoc (ReDoc): their scripts and styles served from the fastapi-offline
         package under /static-offline-docs, so the pages work without a network

The request and response shapes, and each status an endpoint returns, are documented by runtime.serve_api's
models in the OpenAPI document.

A tagged post is answered as ``mner-tag`` writes it: {"entities": [...], "objects": [...]}
(plus "image_error" where a picture was dropped). Every refusal, whatever its status, is a JSON
body {"error": {"kind", "message"[, "limit", "value"]}} (the kind also in the x-error-kind
header): 400 for malformed JSON, JSON past jsonlimits' limits (nesting, integer digits,
NaN/Infinity, 1e999), too many JSON values, malformed multipart or malformed HTTP; 404/405 for
a path or method the API lacks; 408 for headers past --header-timeout-s or a body past
--body-timeout-s; 413 for a body over --max-body-bytes; 415 for another content type; 422 for
a text over --max-text-chars, a picture over --max-pixels, too many posts, a request over
budget, invalid base64, a corrupt picture, an empty text or a text with a lone surrogate (JSON
"\\ud800", kind "bad text": refused before batching, so it never shares a batch); 503 +
Retry-After when the queue is full, the bundle is still warming up (kind "not ready": counted in
mner_not_ready_total, not mner_errors_total) or the connection is past --max-connections; 504
past --timeout-s; 500 for a post whose tagging raised (the pipeline then tags the rest of its
batch alone) or a bug (logged; the connection stays open). /v1/tag/batch
answers 200 with each bad post's own {"error": {...}} in its place among the others' results;
only a request that is wrong as a whole (not a list, too many posts, over the request budget,
bad JSON) is refused whole.

Nothing whose cost grows with the body runs long on the event loop: multipart is parsed by
python-multipart, JSON by jsonlimits and large base64 payloads decoded a slice at a time, in a
worker thread, after C-speed bounds that refuse bodies built to be slow (see _check_delimiters,
_json_body). Connections are bounded by uvicorn's keep-alive timeout and by _LimitedH11Protocol
(header timeout, connection limit).

On SIGTERM the server drains for --drain-s (see _DrainingServer): still listening, /readyz 503
"draining", every response Connection: close; then it stops listening and waits for the
requests in flight, and the batcher tags whatever was submitted before it stops, so no
accepted request goes unanswered.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.resources
import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, Callable

import h11
import uvicorn

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from uvicorn.protocols.http.h11_impl import H11Protocol

from mner.runtime import jsonlimits, serve_api
from mner.runtime.bundle import manifest_sha256
from mner.runtime.picture_cache import CacheStats
from mner.runtime.image import ImageError, read_header
from mner.runtime.pipeline import TAGGING_FAILED, Pipeline, Post, TagResult
from mner.runtime.serve_batcher import Batcher, Metrics, QueueFull, ServeConfig  # noqa: F401 -- ServeConfig is part of this API
from mner.runtime.serve_budget import OverBudget, post_costs
from mner.runtime.serve_limits import HttpLimits
from mner.runtime.tagfile import decode_base64, result_record
from mner.runtime.textcheck import text_problem

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("mner.access")  # one INFO line per request, with --access-log

WARMUP_TEXT = "Warm up the tagger in Paris"


class Drain:
    """Whether the server is draining: set by serve()'s SIGTERM handler, read by the app for every response."""

    def __init__(self) -> None:
        self.since: float | None = None  # time.monotonic() at the signal

    @property
    def active(self) -> bool:
        return self.since is not None

    def start(self) -> None:
        if self.since is None:
            self.since = time.monotonic()


class ApiError(Exception):
    """A request the service refuses: status, kind and message, and the limit it broke with its value."""

    def __init__(self, status: int, kind: str, message: str, *, limit: str | None = None, value: Any = None,
                 headers: dict[str, str] | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message
        self.limit, self.value, self.headers = limit, value, headers

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"kind": self.kind, "message": self.message}
        if self.limit is not None:
            error.update(limit=self.limit, value=self.value)
        return {"error": error}


# --------------------------------------------------------------------------- the app

@dataclass(frozen=True)
class BundleInfo:
    """What the server serves, for its start-up line and the mner_bundle_info metric."""

    path: str
    sha256: str  # of manifest.json, which lists every file's sha256: it names the bundle's whole content
    backend: str
    device: str
    precision: str  # what the runners run: fp32, fp16 (TensorRT's engines too), int8, or "fp32 (vision), int8 (tagger)"
    verified: bool  # the files' sha256 were checked against the manifest at start (not with --no-verify)
    stages: tuple[str, ...] = ()
    created: str | None = None  # when mner-export wrote it (the manifest's "created")
    # The checkpoint was mner-export's random one (no training): its tags are noise, which /v1/info and the
    # page say, so that a screenshot of a random model is not mistaken for a trained one.
    random_weights: bool = False
    # Stages exported without weights files (the detector and vision of a machine without them): what they find is
    # noise even when the tagger is trained, which /v1/info and the page say too.
    random_stages: tuple[str, ...] = ()

    @classmethod
    def of(cls, path: str | Path, *, backend: str, device: str | None, precision: str, verified: bool,
           stages: tuple[str, ...] = ()) -> BundleInfo:  # fmt: skip
        """For the bundle at ``path`` (read: its manifest.json, a few kilobytes, checked by the pipeline before)."""
        path = Path(path)
        sha = manifest_sha256(path)
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        checkpoint = manifest.get("model", {}).get("checkpoint") or {}
        return cls(str(path), sha, backend, device or ("cuda" if backend == "trt" else "cpu"),
                   "fp16" if backend == "trt" else precision, verified, tuple(stages), manifest.get("created"),
                   bool(checkpoint.get("random_weights")),
                   tuple(name for name, stage in manifest.get("stages", {}).items()
                         if (stage.get("weights") or {}).get("source") == "random"))  # fmt: skip


class _PrometheusText(Response):
    """/metrics' response class: the OpenAPI document then declares Prometheus' text format, not JSON."""

    media_type = CONTENT_TYPE_LATEST


_DESCRIPTION = """Multimodal named-entity recognition for posts: text and an optional picture.

Every refusal, whatever its status, is `{"error": {"kind", "message"[, "limit", "value"]}}` (the kind also in the
`x-error-kind` header); `limit` names the limit broken: an mner-serve option with underscores
(`max_text_chars` is `--max-text-chars`), or one of the JSON reader's fixed limits (`max_depth`, `max_int_digits`).
Each endpoint lists the statuses it returns; any path the API lacks is a 404 and any method a path lacks a 405,
in the same shape. `/v1/tag/batch` answers 200 with each bad post's own error in its place among the results."""


def create_app(pipeline: Pipeline, config: ServeConfig = ServeConfig(), limits: HttpLimits = HttpLimits(), *,
               bundle: BundleInfo | None = None, access_log: bool = False) -> FastAPI:  # fmt: skip
    """The ASGI app serving ``pipeline``; its lifespan starts the batcher (warm-up included) and drains it.
    ``app.state.drain`` is the switch serve() turns on at SIGTERM. ``bundle`` fills the mner_bundle_info metric;
    ``access_log`` logs a line per request on the "mner.access" logger."""
    metrics = Metrics()
    metrics.registry.register(_PictureCacheCollector(pipeline))
    if bundle is not None:
        metrics.bundle.info({"sha256": bundle.sha256, "backend": bundle.backend, "device": bundle.device,
                             "precision": bundle.precision, "stages": ",".join(bundle.stages)})  # fmt: skip
    warmup = [Post(WARMUP_TEXT)]
    if pipeline.has_images:
        warmup.append(Post(WARMUP_TEXT, _warmup_picture()))
    batcher = Batcher(pipeline, metrics, config, warmup_posts=warmup)
    counts = {"accepted": 0, "answered": 0}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await asyncio.to_thread(batcher.close)
        logger.warning("mner-serve stopped: %d tagging requests accepted, %d answered", counts["accepted"], counts["answered"])

    # FastAPIOffline: FastAPI whose /docs (Swagger UI) and /redoc load their scripts from this server
    # (/static-offline-docs, the files the fastapi-offline package ships), not from a CDN. The online validator
    # badge of Swagger UI would fetch from the network: off.
    app = FastAPIOffline(title="mner-serve", version="1", lifespan=lifespan, description=_DESCRIPTION,
                         swagger_ui_parameters={"validatorUrl": None})  # fmt: skip
    drain = Drain()
    app.state.batcher, app.state.metrics, app.state.config, app.state.counts = batcher, metrics, config, counts
    app.state.limits, app.state.drain = limits, drain

    app.add_middleware(_Accounting, metrics=metrics, counts=counts, drain=drain, access_log=access_log)

    @app.exception_handler(ApiError)
    async def refuse(request: Request, error: ApiError) -> JSONResponse:
        return _error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        """FastAPI's own refusals (no such path: 404; a method the path lacks: 405) in the service's error shape."""
        if error.status_code == 404:
            message = f"nothing at {request.url.path}; the endpoints are POST /v1/tag, POST /v1/tag/batch, GET /v1/info, " \
                      "/healthz, /readyz, /metrics, /docs, /redoc, /openapi.json, and the page at /"  # fmt: skip
        elif error.status_code == 405:
            allowed = (error.headers or {}).get("Allow", "")
            message = f"{request.method} is not allowed on {request.url.path} (allowed: {allowed})"
        else:
            message = str(error.detail)
        kind = HTTPStatus(error.status_code).phrase.lower() if error.status_code in HTTPStatus._value2member_map_ else "http"
        return _error_response(ApiError(error.status_code, kind, message, headers=error.headers))

    @app.get("/healthz", summary="The process is alive", response_model=serve_api.Health,
             responses=serve_api.error_responses("/healthz"))  # fmt: skip
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="The bundle is loaded and warmed up, and the server is not draining",
             response_model=serve_api.Ready,
             responses={**serve_api.error_responses("/readyz"), 503: {
                 "model": serve_api.NotReady, "description": "warming up (status 'not ready'), warm-up failed, "
                 "draining after SIGTERM, or the connection is past --max-connections (an error body); Retry-After: 1"}})
    async def readyz() -> JSONResponse:
        if drain.active:  # a load balancer stops sending here; requests that still come are answered
            status, message = "draining", "shutting down: finishing the requests accepted, then exiting"
        elif batcher.ready.is_set():
            return JSONResponse({"status": "ready"})
        elif batcher.failed:
            status, message = WARMUP_FAILED, batcher.failed
        else:
            status, message = NOT_READY, "warming up"
        return JSONResponse({"status": status, "error": {"kind": status, "message": message}}, status_code=503,
                            headers={"Retry-After": "1", "x-error-kind": status})  # fmt: skip

    @app.get("/metrics", summary="Prometheus metrics (text exposition format)", response_class=_PrometheusText,
             responses={200: {"description": "mner_* metrics of requests, errors, batches, the queue and the picture "
                                             "cache; mner_bundle_info; process_* and python_* of the process"},
                        **serve_api.error_responses("/metrics", json_route=False)})  # fmt: skip
    async def prometheus() -> Response:
        return _PrometheusText(generate_latest(metrics.registry))

    @app.get("/v1/info", summary="What this server serves: the bundle, backend, precision, entity types, limits",
             response_model=serve_api.Info, responses=serve_api.error_responses("/v1/info"))  # fmt: skip
    async def info() -> JSONResponse:
        return JSONResponse(_info(pipeline, config, bundle))

    for route, (content, media_type) in _page_files().items():
        _add_page_route(app, route, content, media_type)

    @app.post("/v1/tag", summary="Tag one post (JSON, or multipart/form-data with a picture file)",
              openapi_extra=serve_api.request_body(multipart=True), response_model=serve_api.TagOut,
              responses=serve_api.error_responses("/v1/tag"))  # fmt: skip
    async def tag_one(request: Request) -> JSONResponse:
        post = await _read_post(request, config, pipeline.max_pixels)
        (result,) = await _tag(batcher, config, pipeline, [post], ["the post"])
        error = _result_error(result)
        if error is not None:
            raise error
        return JSONResponse(result_record(result, with_tags=False))

    @app.post("/v1/tag/batch", summary=f"Tag up to --max-request-posts posts ({config.max_request_posts} here)",
              openapi_extra=serve_api.request_body(multipart=False), response_model=serve_api.BatchOut,
              responses=serve_api.error_responses("/v1/tag/batch"))  # fmt: skip
    async def tag_batch(request: Request) -> JSONResponse:
        most = config.max_request_posts
        value = await _json_body(await _read_body(request, config, json_only=True), posts=most, config=config)
        posts = value.get("posts") if isinstance(value, dict) else None
        if not isinstance(posts, list) or not posts:
            raise ApiError(422, "invalid request", 'expected {"posts": [{"text", "image_base64"?}, ...]} with at least one post')
        if len(posts) > most:
            raise ApiError(422, "too many posts", f"{len(posts)} posts in one call, over the limit of {most}",
                           limit="max_request_posts", value=most)  # fmt: skip
        # A post that cannot be read is that post's error, in its place; the others are tagged (as mner-tag does).
        checked: list[Post | ApiError] = []
        for i, post in enumerate(posts):
            try:
                checked.append(await _post_from_json(post, config, pipeline.max_pixels, where=f"posts[{i}]"))
            except ApiError as error:
                checked.append(error)
        good = [(i, post) for i, post in enumerate(checked) if isinstance(post, Post)]
        results = iter(await _tag(batcher, config, pipeline, [post for _, post in good], [f"posts[{i}]" for i, _ in good])
                       if good else ())  # fmt: skip
        records = []
        for post in checked:
            if isinstance(post, ApiError):
                error = post
            else:
                result = next(results)
                error = _result_error(result)
                if error is None:
                    records.append(result_record(result, with_tags=False))
                    continue
            metrics.errors.labels(error.kind).inc()  # counted as a refused request is, by kind
            records.append(error.body())
        return JSONResponse({"results": records})

    def openapi() -> dict[str, Any]:
        """FastAPI's document plus the request models, which the handlers read themselves (serve_api)."""
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            _, schemas = models_json_schema([(model, "validation") for model in serve_api.REQUEST_MODELS],
                                            ref_template="#/components/schemas/{model}")  # fmt: skip
            document.setdefault("components", {}).setdefault("schemas", {}).update(schemas["$defs"])
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi
    return app


class _PictureCacheCollector:
    """mner_picture_cache_* from the pipeline's picture cache (runtime.picture_cache), read at each scrape: the
    counters live in the cache, which the worker and the picture thread update. No cache (--picture-cache-mib 0,
    or a bundle without picture stages): the same series, at zero capacity."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    def collect(self):
        cache = getattr(self.pipeline, "picture_cache", None)  # a duck-typed pipeline may have none
        stats = cache.stats() if cache is not None else CacheStats(0, 0, 0, 0, 0, 0)
        yield CounterMetricFamily("mner_picture_cache_hits", "Pictures found in the picture cache: not decoded, "
                                  "and neither detector nor vision run for them", value=stats.hits)  # fmt: skip
        yield CounterMetricFamily("mner_picture_cache_misses", "Pictures looked up in the picture cache and not found "
                                  "(the warm-up picture is one)", value=stats.misses)  # fmt: skip
        yield CounterMetricFamily("mner_picture_cache_evictions", "Pictures dropped from the picture cache, least "
                                  "recently used first, to stay within --picture-cache-mib", value=stats.evictions)  # fmt: skip
        yield GaugeMetricFamily("mner_picture_cache_entries", "Pictures in the picture cache", value=stats.entries)
        yield GaugeMetricFamily("mner_picture_cache_bytes", "Bytes the picture cache holds (its arrays, errors and "
                                "a fixed overhead per picture)", value=stats.bytes)  # fmt: skip
        yield GaugeMetricFamily("mner_picture_cache_capacity_bytes", "The picture cache's bound (--picture-cache-mib; "
                                "0: no cache)", value=stats.capacity_bytes)  # fmt: skip


def _picture_cache_mib(pipeline: Pipeline) -> float:
    cache = getattr(pipeline, "picture_cache", None)
    return cache.capacity_bytes / 2**20 if cache is not None else 0


NOT_READY, WARMUP_FAILED = "not ready", "warm-up failed"  # the error kinds of a server not (yet) able to tag
_NOT_READY_REASONS = {NOT_READY: "warming up", "draining": "draining"}  # kinds counted apart from mner_errors_total


_ENDPOINTS = frozenset({"/v1/tag", "/v1/tag/batch", "/v1/info", "/healthz", "/readyz", "/metrics", "/"})
_TAGGING_ENDPOINTS = ("/v1/tag", "/v1/tag/batch")


class _Accounting:
    """ASGI middleware: requests by endpoint and status, errors by kind (the x-error-kind header; a 503 while
    warming up or draining is counted in mner_not_ready_total instead: the server is doing what it should),
    latency, the accepted/answered counts of tagging requests logged at shutdown, and with ``access_log`` a line
    per request. Plain ASGI rather than ``@app.middleware("http")``, whose per-request task costs throughput.

    It also closes what the app leaves open. An exception escaping a handler becomes a JSON 500 here: Starlette's
    own 500 handler re-raises to uvicorn, which then closes the connection under a keep-alive client. And while
    draining, every response says ``Connection: close`` (h11 then closes after it), so a keep-alive client opens its
    next connection elsewhere instead of finding this one reset."""

    def __init__(self, app, *, metrics: Metrics, counts: dict[str, int], drain: Drain, access_log: bool = False) -> None:
        self.app, self.metrics, self.counts, self.drain, self.access_log = app, metrics, counts, drain, access_log

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        endpoint = path if path in _ENDPOINTS else "other"
        tagging = path in _TAGGING_ENDPOINTS  # the shutdown log counts tagging requests only
        self.counts["accepted"] += tagging
        started = time.perf_counter()
        status, kind = 500, "internal"  # what an exception escaping the app becomes
        started_response = False

        async def account(message) -> None:
            nonlocal status, kind, started_response
            if message["type"] == "http.response.start":
                started_response = True
                status = message["status"]
                headers = list(message.get("headers", ()))
                kind = dict(headers).get(b"x-error-kind", b"http").decode("latin-1")
                if self.drain.active and (b"connection", b"close") not in headers:
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, receive, account)
        except Exception:
            logger.exception("unhandled error answering %s %s", scope["method"], path)
            if started_response:
                raise  # half a response is out: closing the connection (uvicorn does) is all that is left
            error = ApiError(500, "internal", "the server failed on this request (the error is in its log)")
            await _error_response(error)(scope, receive, account)
        finally:
            seconds = time.perf_counter() - started
            self.counts["answered"] += tagging
            if status == 503 and kind in _NOT_READY_REASONS:
                self.metrics.not_ready.labels(endpoint, _NOT_READY_REASONS[kind]).inc()
            elif status >= 400:
                self.metrics.errors.labels(kind).inc()
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(seconds)
            if self.access_log:
                _log_access(scope, status, kind if status >= 400 else None, seconds)


def _log_access(scope, status: int, kind: str | None, seconds: float) -> None:
    """One line per request: client, method, path, status, duration (and the error kind of a refusal). The path
    without its query string, which this API does not use and a client might put secrets in."""
    client = scope.get("client")
    where = f"{client[0]}:{client[1]}" if client else "-"
    method, path = scope["method"], scope["path"]
    access_logger.info('%s "%s %s" %d %.1f ms%s', where, method, path, status, seconds * 1000,
                       f" ({kind})" if kind else "", extra={"client": where, "method": method, "path": path,
                       "status": status, "duration_ms": round(seconds * 1000, 3), "error_kind": kind})  # fmt: skip


def _info(pipeline: Pipeline, config: ServeConfig, bundle: BundleInfo | None) -> dict[str, Any]:
    """/v1/info's body. The bundle by its folder's name, not its path: the path is the operator's (in the start-up
    line), not something to show every client."""
    facts: dict[str, Any] = {"bundle": None, "sha256": None, "created": None, "backend": None, "device": None,
                             "precision": None, "stages": [], "verified": None, "random_weights": None,
                             "random_stages": []}  # fmt: skip
    if bundle is not None:
        facts.update(bundle=Path(bundle.path).name, sha256=bundle.sha256, created=bundle.created, backend=bundle.backend,
                     device=bundle.device, precision=bundle.precision, stages=list(bundle.stages),
                     verified=bundle.verified, random_weights=bundle.random_weights,
                     random_stages=list(bundle.random_stages))  # fmt: skip
    return {**facts, "pictures": pipeline.has_images, "entity_types": list(pipeline.scheme.entity_types),
            "max_text_chars": config.max_text_chars, "max_pixels": pipeline.max_pixels,
            "max_body_bytes": config.max_body_bytes}  # fmt: skip


# The page (runtime/web): URL -> (file, media type). Only these are served: no directory is exposed.
_PAGE = {"/": ("index.html", "text/html; charset=utf-8"), "/web/app.js": ("app.js", "text/javascript; charset=utf-8"),
         "/web/style.css": ("style.css", "text/css; charset=utf-8"), "/web/icon.svg": ("icon.svg", "image/svg+xml")}
# The page's files and nothing else: no inline script or style, no other host. blob: for the thumbnail of the
# picture the user chose (an object URL of their own file, never sent anywhere but /v1/tag). Trusted Types with no
# policy make the browser refuse any string assigned to innerHTML and its kin: the post's text can only ever be
# inserted as text.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
                           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
                           "require-trusted-types-for 'script'; trusted-types 'none'")  # fmt: skip
_PAGE_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff",
                 "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}  # fmt: skip


def _page_files() -> dict[str, tuple[bytes, str]]:
    """The page's files, read once at start from the package (a few kilobytes): a wheel missing one fails here."""
    folder = importlib.resources.files("mner.runtime") / "web"
    return {route: ((folder / name).read_bytes(), media_type) for route, (name, media_type) in _PAGE.items()}


def _add_page_route(app: FastAPI, route: str, content: bytes, media_type: str) -> None:
    async def page_file() -> Response:
        return Response(content, media_type=media_type, headers=_PAGE_HEADERS)

    app.add_api_route(route, page_file, methods=["GET", "HEAD"], include_in_schema=False, name=f"page {route}")


def _result_error(result: TagResult) -> ApiError | None:
    """A post the pipeline could not tag, as the error it is answered with: 500 when its tagging raised (not
    known to be the post's fault), 422 for its picture or text; None for a tagged post."""
    if result.ok:
        return None
    if result.error.startswith(TAGGING_FAILED):
        return ApiError(500, "internal", result.error)
    return ApiError(422, "bad image" if result.error.startswith("image:") else "invalid request", result.error)


def _error_response(error: ApiError) -> JSONResponse:
    headers = {"x-error-kind": error.kind, **(error.headers or {})}
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


async def _tag(batcher: Batcher, config: ServeConfig, pipeline: Pipeline, posts: list[Post], names: list[str]) -> list[TagResult]:
    if batcher.failed:  # the server cannot tag: an error, unlike warming up
        raise ApiError(503, WARMUP_FAILED, batcher.failed)
    if not batcher.ready.is_set():
        raise ApiError(503, NOT_READY, "the bundle is warming up; retry shortly", headers={"Retry-After": "1"})
    try:  # the budget (serve_budget): counted in a thread, off the event loop, before anything is queued
        costs = await asyncio.to_thread(post_costs, pipeline, posts, names, max_post_pieces=config.max_post_pieces,
                                        max_request_pieces=config.max_request_pieces,
                                        max_request_pixels=config.max_request_pixels)  # fmt: skip
    except OverBudget as error:
        raise ApiError(422, "over budget", str(error), limit=error.limit, value=error.value) from error
    try:
        future, abandoned = batcher.submit(posts, costs)
    except QueueFull as error:
        raise ApiError(503, "queue full", str(error), limit="max_queue", value=config.max_queue,
                       headers={"Retry-After": "1"}) from error  # fmt: skip
    except RuntimeError as error:
        raise ApiError(503, "shutting down", str(error)) from error
    try:
        return await asyncio.wait_for(future, config.timeout_s)
    except asyncio.TimeoutError as error:
        abandoned.set()
        raise ApiError(504, "timeout", f"not tagged within {config.timeout_s} s", limit="timeout_s",
                       value=config.timeout_s) from error  # fmt: skip
    except Exception as error:  # the pipeline failed on the whole batch
        raise ApiError(500, "internal", f"the pipeline failed: {error}") from error


# --------------------------------------------------------------------------- request bodies


async def _read_body(request: Request, config: ServeConfig, *, json_only: bool = False) -> bytes:
    """The body, within --max-body-bytes and --body-timeout-s. uvicorn has no body read timeout, so it is here: the
    whole body must arrive within body_timeout_s of its headers (a client declaring 1,000 bytes and sending 40 is
    answered 408 then). A refusal before the body's end closes the connection, whose unread rest is not a request."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    allowed = ("application/json",) if json_only else ("application/json", "multipart/form-data")
    if content_type not in allowed:
        raise ApiError(415, "content type", f"expected Content-Type {' or '.join(allowed)}, got {content_type or 'none'!r}")
    declared = request.headers.get("content-length")
    too_large = ApiError(413, "body too large", f"the request body is over the limit of {config.max_body_bytes} bytes",
                         limit="max_body_bytes", value=config.max_body_bytes, headers={"Connection": "close"})  # fmt: skip
    if declared is not None and declared.isdigit() and int(declared) > config.max_body_bytes:
        raise too_large
    limits: HttpLimits = request.app.state.limits
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.body_timeout_s
    chunks, size = [], 0
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), max(deadline - loop.time(), 0))
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            raise ApiError(408, "body timeout", f"the request body did not arrive within {limits.body_timeout_s} s "
                           f"({size} of {declared or 'an undeclared number of'} bytes did)", limit="body_timeout_s",
                           value=limits.body_timeout_s, headers={"Connection": "close"}) from None  # fmt: skip
        except ClientDisconnect:
            raise ApiError(400, "client disconnected", f"the client went away after {size} bytes of the body") from None
        size += len(chunk)  # chunked bodies declare no length: count as they come
        if size > config.max_body_bytes:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


# Bodies longer than this are parsed in a worker thread: the event loop gets the GIL back between the parser's steps.
_JSON_INLINE_BYTES = 1 << 16


async def _json_body(body: bytes, *, posts: int, config: ServeConfig) -> Any:
    """The body as JSON, by ``jsonlimits`` (nesting depth, integer digits, finite numbers), or a 400 naming the
    rule it broke.

    First, at C speed, a bound on its commas and brackets (each can open a JSON value): the C parser holds the GIL,
    and so the event loop, while it builds values (16 MiB of "[]," took 7 s; 213,000 "[]," 0.3 s). A post needs
    a few; its text may hold more, each then a word-piece of its own (BERT's tokenizer splits off every
    punctuation character), so a request within its word-piece budget holds at most that many more."""
    in_texts = min(posts * config.max_text_chars, config.max_request_pieces if posts > 1 else config.max_post_pieces)
    most = in_texts + 8 * posts + 8
    if len(body) > _JSON_INLINE_BYTES:
        return await asyncio.to_thread(_parse_json, body, most)
    return _parse_json(body, most)


def _parse_json(body: bytes, most_values: int) -> Any:
    values = body.count(b",") + body.count(b"[") + body.count(b"{")
    if values > most_values:
        raise ApiError(400, "too many JSON values", f"the body holds {values} commas and brackets; the posts it may hold "
                       f"within the word-piece budget have at most {most_values}")  # fmt: skip
    try:
        return jsonlimits.loads(body)
    except jsonlimits.JsonLimitError as error:
        raise ApiError(400, error.kind, f"the body is not valid JSON: {error.message}" if error.kind == jsonlimits.MALFORMED
                       else f"the body is refused: {error.message}", limit=error.limit, value=error.value) from None  # fmt: skip


async def _read_post(request: Request, config: ServeConfig, max_pixels: int) -> Post:
    body = await _read_body(request, config)
    if request.headers["content-type"].lower().startswith("multipart/form-data"):
        fields = await asyncio.to_thread(_multipart, body, request.headers["content-type"])
        if "text" not in fields:
            raise ApiError(422, "invalid request", "a multipart post needs a 'text' field and may have an 'image' file; "
                           "this one has no 'text' field")  # fmt: skip
        try:
            text = fields["text"].decode("utf-8")
        except UnicodeDecodeError as error:
            raise ApiError(422, "invalid request", "the 'text' field is not UTF-8") from error
        image = fields.get("image") or None
        _check_text(text, config, "text")
        if image is not None:
            _check_image(image, max_pixels, "image")
        return Post(text, image)
    return await _post_from_json(await _json_body(body, posts=1, config=config), config, max_pixels, where="body")


async def _post_from_json(value: Any, config: ServeConfig, max_pixels: int, *, where: str) -> Post:
    if not isinstance(value, dict):
        raise ApiError(422, "invalid request", f'{where}: expected an object {{"text", "image_base64"?}}, got {type(value).__name__}')
    unknown = sorted(set(value) - {"text", "image_base64"})
    if "text" not in value or unknown:
        what = "has no 'text'" if "text" not in value else f"has unknown keys {unknown}"
        raise ApiError(422, "invalid request", f"{where}: a post needs 'text' and may have 'image_base64'; this one {what}")
    text = value["text"]
    if not isinstance(text, str):
        raise ApiError(422, "invalid request", f"{where}.text must be a string, got {type(text).__name__}")
    _check_text(text, config, f"{where}.text")
    image = value.get("image_base64")
    if image is None:
        return Post(text)
    if not isinstance(image, str):
        raise ApiError(422, "invalid request", f"{where}.image_base64 must be a string, got {type(image).__name__}")
    data = await _decode_base64(image, f"{where}.image_base64")
    _check_image(data, max_pixels, f"{where}.image_base64")
    return Post(text, data)


def _check_text(text: str, config: ServeConfig, where: str) -> None:
    if len(text) > config.max_text_chars:
        raise ApiError(422, "text too long", f"{where} has {len(text)} characters, over the limit of {config.max_text_chars}",
                       limit="max_text_chars", value=config.max_text_chars)  # fmt: skip
    if not text.strip():
        raise ApiError(422, "empty text", f"{where} is {'empty' if not text else 'whitespace only'}: nothing to tag")
    problem = text_problem(text, name=where)
    if problem is not None:
        raise ApiError(422, "bad text", problem)


async def _decode_base64(value: str, where: str) -> bytes:
    """Plain or URL-safe base64, or a data: URL, read as mner-tag reads an input line's image string; a large
    payload in a worker thread, a slice at a time (see _decode_base64_in_slices)."""
    if value.startswith("data:"):
        header, comma, value = value.partition(",")
        if not comma or not header.endswith(";base64"):
            raise ApiError(422, "invalid base64", f"{where}: a data URL must look like data:image/jpeg;base64,<payload>")
    if len(value) > _BASE64_SLICE:
        data, problem = await asyncio.to_thread(_decode_base64_in_slices, value)
    else:
        data, problem = decode_base64(value)
    if problem is not None:
        raise ApiError(422, "invalid base64", f"{where}: {problem}")
    return data


_BASE64_SLICE = 1 << 18  # characters per step, a multiple of 4: a slice's regex check and decode take ~10 ms


def _decode_base64_in_slices(payload: str) -> tuple[bytes | None, str | None]:
    """``tagfile.decode_base64`` (plain or URL-safe, whitespace ignored, padding optional), a slice at a time: over
    a whole 11 MiB payload its regex check and decode are single C calls that held the GIL, and so the event loop,
    for most of a second. Between slices the loop gets it back."""
    text = "".join(payload.split())  # MIME base64 wraps its lines
    if ("-" in text or "_" in text) and ("+" in text or "/" in text):
        return None, "invalid base64: it mixes the standard (+/) and URL-safe (-_) alphabets"
    padding = text.find("=")
    if padding != -1 and padding < len(text) - 2:
        return None, "invalid base64: unexpected character '=' before the end"
    pieces = []
    for start in range(0, len(text), _BASE64_SLICE):
        data, problem = decode_base64(text[start : start + _BASE64_SLICE])
        if problem is not None:
            return None, problem
        pieces.append(data)
    return b"".join(pieces), None


def _check_image(data: bytes, max_pixels: int, where: str) -> None:
    """Refuse from the header alone what is not a picture or is over the pixel limit; corrupt pixel data is
    found when the batch decodes it (that post's error)."""
    if not data:
        raise ApiError(422, "bad image", f"{where} is empty (omit it for a post without a picture)")
    try:
        fmt, width, height = read_header(data)
    except ImageError as error:
        raise ApiError(422, "bad image", f"{where}: {error}") from error
    if width * height > max_pixels:
        raise ApiError(422, "image too large", f"{where} is a {width}×{height} {fmt} = {width * height} pixels, over the "
                       f"limit of {max_pixels}", limit="max_pixels", value=max_pixels)  # fmt: skip


# The parts a multipart post may have, and what python-multipart allows of each part's headers: a few short
# lines (Content-Disposition, Content-Type). Past these the parser stops at once, so a hostile part header
# (the same field repeated for megabytes) costs a few kilobytes of scanning, not a regex over all of it.
_MULTIPART_FIELDS = ("text", "image")
_MULTIPART_MAX_HEADERS = 8
_MULTIPART_MAX_HEADER_BYTES = 4096
_MULTIPART_MAX_PADDING = 64  # spaces or tabs RFC 2046 lets a sender put after a boundary delimiter


def _check_delimiters(body: bytes, delimiter: bytes) -> None:
    """Refuse, at C speed, the two things python-multipart steps through byte by byte in Python: text that
    starts like the boundary delimiter inside a part (~4 µs each: 16 MiB of "\\r\\n--B" + one byte took 12 s)
    and transport padding after a delimiter (16 MiB of spaces took 33 s). RFC 2046 forbids the first (the
    delimiter never occurs inside a part), so a two-part post has it at most three times, each followed by
    "--" or by CRLF after a little padding."""
    found = body.count(delimiter)
    if found > len(_MULTIPART_FIELDS) + 1:
        raise ApiError(400, "malformed multipart", f"the boundary delimiter occurs {found} times; a post of at most "
                       f"{len(_MULTIPART_FIELDS)} parts has it at most {len(_MULTIPART_FIELDS) + 1} times (RFC 2046: "
                       "never inside a part)")  # fmt: skip
    at = body.find(delimiter)
    while at >= 0:
        after = body[at + len(delimiter) : at + len(delimiter) + _MULTIPART_MAX_PADDING + 2]
        if not (after.startswith(b"--") or after.lstrip(b" \t").startswith(b"\r\n")):
            raise ApiError(400, "malformed multipart", f"the boundary delimiter at byte {at} is followed by neither "
                           f"'--' nor CRLF (after at most {_MULTIPART_MAX_PADDING} spaces or tabs)")  # fmt: skip
        at = body.find(delimiter, at + len(delimiter))


def _multipart(body: bytes, content_type: str) -> dict[str, bytes]:
    """The fields of a multipart/form-data body, by name (RFC 7578), parsed by python-multipart (the parser
    Starlette's ``request.form()`` uses) in one linear pass: at most one part per name in _MULTIPART_FIELDS.
    Called off the event loop (``asyncio.to_thread``): even a linear pass over 16 MiB of Python-level
    parsing is too long to hold /healthz for."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise ApiError(400, "malformed multipart", "multipart/form-data without a boundary parameter")
    _check_delimiters(body, b"\r\n--" + boundary)
    fields: dict[str, bytes] = {}
    part: dict[str, Any] = {}  # the part being read: its headers so far and its data chunks

    def on_part_begin() -> None:
        if len(fields) == len(_MULTIPART_FIELDS):
            raise ApiError(422, "invalid request", f"a multipart post has at most {len(_MULTIPART_FIELDS)} parts "
                           f"({' and '.join(_MULTIPART_FIELDS)}); this one has more")  # fmt: skip
        part.clear()
        part.update(field=bytearray(), value=bytearray(), disposition=None, chunks=[])

    def on_header_end() -> None:
        if bytes(part["field"]).strip().lower() == b"content-disposition":
            part["disposition"] = part["value"].decode("latin-1")
        part["field"], part["value"] = bytearray(), bytearray()

    def on_headers_finished() -> None:
        _, disposition = parse_options_header(part["disposition"])
        name = disposition.get(b"name")
        if name is None:
            raise ApiError(400, "malformed multipart", "a multipart part has no Content-Disposition name")
        key = name.decode("utf-8", "replace")
        if key not in _MULTIPART_FIELDS:
            raise ApiError(422, "invalid request", f"a multipart post needs a 'text' field and may have an 'image' "
                           f"file; this one has an unknown field {key!r}")  # fmt: skip
        if key in fields:
            raise ApiError(422, "invalid request", f"the multipart field {key!r} is given twice")
        part["name"] = key
        fields[key] = b""  # counted now, so a repeated name is refused before its data is read

    def on_part_end() -> None:
        fields[part["name"]] = b"".join(part["chunks"])

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": lambda data, start, end: part["field"].extend(data[start:end]),
        "on_header_value": lambda data, start, end: part["value"].extend(data[start:end]),
        "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
        "on_part_data": lambda data, start, end: part["chunks"].append(data[start:end]),
        "on_part_end": on_part_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks, max_header_count=_MULTIPART_MAX_HEADERS,
                                 max_header_size=_MULTIPART_MAX_HEADER_BYTES)  # fmt: skip
        parser.write(body)
    except FormParserError as error:  # a framing error, a header over the limits, a boundary over 70 bytes
        raise ApiError(400, "malformed multipart", f"the multipart body is malformed: {error}") from error
    if parser.state != MultipartState.END:
        raise ApiError(400, "malformed multipart", "the multipart body is not closed by its boundary")
    return fields


def _warmup_picture() -> bytes:
    """A small PNG (encoded here, so warm-up needs no file) that runs the detector and vision stages."""
    import cv2  # noqa: PLC0415 -- already imported by the pipeline; only warm-up needs it here
    import numpy as np  # noqa: PLC0415

    gradient = np.linspace(0, 255, 64 * 64 * 3).reshape(64, 64, 3).astype(np.uint8)
    return cv2.imencode(".png", gradient)[1].tobytes()


# --------------------------------------------------------------------------- running


class _LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus what uvicorn (0.54) lacks and cannot be added from the app, which first hears of
    a request once its headers are in: a header read timeout, a connection limit answered in the service's error
    shape (uvicorn's limit_concurrency answers plain text), and JSON for the 400 it sends for malformed HTTP.
    ``limits`` is set on the subclass serve() makes."""

    limits: HttpLimits = HttpLimits()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        if len(self.connections) > self.limits.max_connections:
            self.app = functools.partial(_too_many_connections, self.limits)  # its request is refused, then it closes
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:  # a request has begun but its headers are not all in
            self._arm_header_timer()
        elif self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is None and not self.transport.is_closing():
            self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._headers_too_slow)

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        error = ApiError(408, "header timeout", f"the request line and headers did not arrive within "
                         f"{self.limits.header_timeout_s} s", limit="header_timeout_s", value=self.limits.header_timeout_s)  # fmt: skip
        self._send_raw(error)

    def send_400_response(self, msg: str) -> None:
        self._send_raw(ApiError(400, "malformed HTTP", f"not a valid HTTP/1.1 request: {msg}"))

    def _send_raw(self, error: ApiError) -> None:
        """Answer outside h11's request cycle (none has begun), then close."""
        body = JSONResponse(error.body()).body
        head = (f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nx-error-kind: {error.kind}\r\nconnection: close\r\n\r\n")
        self.transport.write(head.encode("latin-1") + body)
        self.transport.close()


async def _too_many_connections(limits: HttpLimits, scope, receive, send) -> None:
    """The ASGI app a connection over --max-connections gets: 503, and the connection is closed after it."""
    error = ApiError(503, "too many connections", "the server holds its limit of open connections; retry shortly",
                     limit="max_connections", value=limits.max_connections, headers={"Retry-After": "1", "Connection": "close"})  # fmt: skip
    await _error_response(error)(scope, receive, send)


class _DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain a load balancer can see. uvicorn stops listening at SIGTERM and cuts keep-alive
    connections without saying so; here the first SIGTERM (or SIGINT) only turns ``drain`` on: the server goes on
    answering -- /readyz 503 "draining", every response Connection: close -- for drain_s, then exits as uvicorn does
    (stops listening, waits for the requests in flight, then the batcher tags what it was given). A second signal
    ends the drain period at once. Once listening, it calls ``announce`` with the port it listens on (the one the
    system chose, for port 0)."""

    def __init__(self, config: uvicorn.Config, drain: Drain, drain_s: float,
                 announce: Callable[[int], None] | None = None) -> None:  # fmt: skip
        super().__init__(config)
        self.drain, self.drain_s, self.announce = drain, drain_s, announce
        self._signal: int | None = None

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started and self.announce is not None:  # not started: the app's start-up failed, or the bind (logged)
            self.announce(self.servers[0].sockets[0].getsockname()[1])

    def handle_exit(self, sig: int, frame) -> None:
        if self.drain.active or self.drain_s == 0:
            self.drain.start()
            super().handle_exit(sig, frame)  # records the signal, re-raised once stopped, so the exit status tells it
            return
        self._signal = sig
        self.drain.start()
        logger.warning("signal %d: draining for %.1f s (/readyz 503, Connection: close), then stopping", sig, self.drain_s)

    async def on_tick(self, counter: int) -> bool:
        if self._signal is not None and time.monotonic() - self.drain.since >= self.drain_s:
            signal, self._signal = self._signal, None
            super().handle_exit(signal, None)
        return await super().on_tick(counter)


def serve(pipeline: Pipeline, config: ServeConfig = ServeConfig(), limits: HttpLimits = HttpLimits(), *,
          host: str = "127.0.0.1", port: int = 8000, bundle: BundleInfo | None = None, access_log: bool = False) -> None:
    """Serve until SIGTERM/SIGINT, then drain (see _DrainingServer): every accepted request is answered before this
    returns. Once listening, one INFO line says where, what and within which limits (``startup_line``).

    Logging is the caller's (mner-serve configures it): uvicorn's own configuration is not applied, so its
    records reach the same handlers, and at WARNING, so that its start-up lines do not repeat ours."""
    app = create_app(pipeline, config, limits, bundle=bundle, access_log=access_log)
    protocol = type("LimitedH11Protocol", (_LimitedH11Protocol,), {"limits": limits})
    # Past the drain, uvicorn waits for the requests in flight; each ends by its own timeouts (body, then
    # --timeout-s), so this bound only cuts off a client that stopped reading its response.
    grace = limits.body_timeout_s + config.timeout_s + 10
    batcher: Batcher = app.state.batcher

    def announce(bound_port: int) -> None:
        message, fields = startup_line(pipeline, config, limits, bundle, host=host, port=bound_port,
                                       ready=batcher.ready.is_set(), access_log=access_log)  # fmt: skip
        logger.info("%s", message, extra=fields)

    server = _DrainingServer(uvicorn.Config(app, host=host, port=port, http=protocol, log_config=None,
                                            log_level="warning", access_log=False, backlog=2048,
                                            timeout_keep_alive=limits.keep_alive_s, timeout_graceful_shutdown=grace),
                             app.state.drain, limits.drain_s, announce)  # fmt: skip
    logging.getLogger("python_multipart").setLevel(logging.ERROR)  # it logs every malformed body a client sends
    server.run()


def startup_line(pipeline: Pipeline, config: ServeConfig, limits: HttpLimits, bundle: BundleInfo | None, *,
                 host: str, port: int, ready: bool, access_log: bool = False) -> tuple[str, dict[str, Any]]:  # fmt: skip
    """The line mner-serve logs once listening, and its parts as fields (for --log-format json): the URL, the
    bundle (path, sha256, whether verified), backend, device, precision, and the main limits by option name."""
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    shown = {
        "batch-size": config.max_batch, "max-wait-ms": config.max_wait_ms, "max-queue": config.max_queue,
        "timeout-s": config.timeout_s, "max-request-posts": config.max_request_posts,
        "max-text-chars": config.max_text_chars, "max-body-bytes": config.max_body_bytes,
        "max-pixels": pipeline.max_pixels, "max-request-pixels": config.max_request_pixels,
        "max-request-pieces": config.max_request_pieces, "max-connections": limits.max_connections,
        "picture-cache-mib": _picture_cache_mib(pipeline),
    }  # fmt: skip
    parts = [f"mner-serve listening on {url}" + (" (all interfaces)" if host in ("0.0.0.0", "::") else "")]
    fields: dict[str, Any] = {"url": url, "ready": ready, "access_log": access_log,
                              "limits": {name.replace("-", "_"): value for name, value in shown.items()}}  # fmt: skip
    if bundle is not None:
        verified = "verified" if bundle.verified else "not verified: --no-verify"
        parts.append(f"bundle {bundle.path} (sha256 {bundle.sha256}, {verified})")
        parts.append(f"backend {bundle.backend} on {bundle.device}, {bundle.precision}, stages {'+'.join(bundle.stages)}")
        fields.update(bundle=bundle.path, sha256=bundle.sha256, verified=bundle.verified, backend=bundle.backend,
                      device=bundle.device, precision=bundle.precision, stages=list(bundle.stages))  # fmt: skip
    parts.append(", ".join(f"--{name} {value:g}" if isinstance(value, float) else f"--{name} {value}"
                           for name, value in shown.items()))  # fmt: skip
    parts.append(f"docs {url}/docs; " + ("ready" if ready else "warming up (/readyz says when ready)"))
    return " | ".join(parts), fields
