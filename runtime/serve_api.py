"""What mner-serve's HTTP API accepts and answers, as pydantic models: the OpenAPI document (``/openapi.json``,
rendered at ``/docs`` and ``/redoc``) is generated from them.

The models document; they do not parse. The server reads bodies itself (``runtime.serve``: its JSON and
multipart limits, a bad post's error in its place in a batch) and builds responses as ``mner-tag`` writes its
records, so a request's cost is what those readers allow, not what a validator would. The tests check that
what the server really answers fits these models.

Every refusal, whatever its status, is an :class:`ErrorBody`. ``ERRORS`` says which statuses each endpoint
really returns, and why, for the document.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema


class PostIn(BaseModel):
    """One post: its raw text and, optionally, its picture."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"text": "Obama meets Merkel in Berlin"}]})

    text: str = Field(description="The post as written (raw text; split into words by the bundle's splitter). "
                      "Not empty, at most --max-text-chars characters, and within --max-post-pieces word-pieces.")
    image_base64: str | None = Field(None, description="The picture's bytes (JPEG, PNG, GIF, BMP or WEBP) in "
                                     "standard or URL-safe base64, or a data: URL; at most --max-pixels pixels.")


class MultipartPostIn(BaseModel):
    """One post as multipart/form-data: a 'text' field and an optional 'image' file, no other part."""

    text: str = Field(description="The post as written (UTF-8).")
    # A plain binary string (no null): what Swagger UI shows as a file to upload.
    image: Annotated[bytes | None, WithJsonSchema({"type": "string", "format": "binary"})] = Field(
        None, description="The picture file (JPEG, PNG, GIF, BMP or WEBP); at most --max-pixels pixels.")


class BatchIn(BaseModel):
    """Posts tagged in one call: at least one, at most --max-request-posts (GET /openapi.json's
    /v1/tag/batch summary gives this server's limit)."""

    model_config = ConfigDict(extra="forbid")

    posts: list[PostIn] = Field(min_length=1)


class EntityOut(BaseModel):
    """A named entity: its type, its text, and where it is in the post's text."""

    type: str = Field(description="The entity type, from the bundle's tag scheme (PER, LOC, ORG, OTHER).",
                      examples=["PER"])
    text: str = Field(description="Exactly text[start:end] of the post.", examples=["Obama"])
    start: int = Field(description="Offset of its first character in the post's text, in code points.", ge=0)
    end: int = Field(description="One past its last character.", ge=0)
    score: float = Field(description="The marginal probability of its first word's tag.", ge=0, le=1)


class TagOut(BaseModel):
    """A tagged post, as ``mner-tag`` writes it (without id and line)."""

    entities: list[EntityOut]
    objects: list[str] = Field(description="COCO classes the detector found in the picture, best first; "
                               "empty without a picture or for a text-only bundle.")
    image_error: str | None = Field(None, description="Only with --on-bad-image text-only: why the picture was not "
                                    "used (the text was tagged alone).")


class ErrorOut(BaseModel):
    """What was refused and why. ``limit`` and ``value`` name the server's limit broken and its setting: an
    option of mner-serve with underscores (``max_text_chars`` is ``--max-text-chars``), or one of the JSON
    reader's fixed limits (``max_depth``, ``max_int_digits``)."""

    kind: str = Field(description="A short, stable name of the refusal (also in the x-error-kind header).",
                      examples=["text too long"])
    message: str = Field(description="What was expected and what arrived.",
                         examples=["body.text has 12000 characters, over the limit of 10000"])
    limit: str | None = Field(None, description="The limit broken, where one was.", examples=["max_text_chars"])
    value: int | float | None = Field(None, description="That limit's setting.", examples=[10000])


class ErrorBody(BaseModel):
    """The one shape of every refusal, whatever its status."""

    error: ErrorOut


class BatchOut(BaseModel):
    """One result per post, in order: the tagged post, or that post's own error (its picture, its text)."""

    results: list[Union[TagOut, ErrorBody]]


class Health(BaseModel):
    status: str = Field(description="'ok' while the process answers.", examples=["ok"])


class Ready(BaseModel):
    status: str = Field(description="'ready': the bundle is loaded and warmed up.", examples=["ready"])


class NotReady(BaseModel):
    """/readyz while the server should get no traffic."""

    status: str | None = Field(None, description="'not ready' (warming up), 'warm-up failed', or 'draining' (after "
                               "SIGTERM); absent when the connection is past --max-connections.", examples=["not ready"])
    error: ErrorOut


class Info(BaseModel):
    """What the server serves (GET /v1/info; the page shows it). The bundle's facts are null for an app made
    without them (``create_app`` with no ``bundle``)."""

    bundle: str | None = Field(description="The bundle folder's name (not its path).", examples=["bundle"])
    sha256: str | None = Field(description="sha256 of its manifest.json, which lists every file's sha256.")
    created: str | None = Field(description="When mner-export wrote it (ISO 8601).")
    backend: str | None = Field(description="'ort' (ONNX Runtime) or 'trt' (TensorRT).", examples=["ort"])
    device: str | None = Field(description="'cpu' or 'cuda'.", examples=["cpu"])
    precision: str | None = Field(description="What the runners run: fp32, fp16, int8, or per stage.", examples=["fp32"])
    stages: list[str] = Field(description="The stages it runs: detector, vision, tagger (text-only: tagger).")
    verified: bool | None = Field(description="Every file's sha256 was checked at start (not --no-verify).")
    random_weights: bool | None = Field(description="Made from mner-export's random checkpoint: its tags are noise.")
    random_stages: list[str] = Field(description="Stages exported with random weights (no weights file): what they "
                                     "find is noise, even with a trained tagger.", examples=[["detector", "vision"]])
    pictures: bool = Field(description="The bundle has picture stages (detector and vision); without them a post "
                           "with a picture is refused (422 'bad image').")
    entity_types: list[str] = Field(description="The types an entity may have.", examples=[["LOC", "MISC", "ORG", "PER"]])
    max_text_chars: int = Field(description="--max-text-chars: characters of one post's text.")
    max_pixels: int = Field(description="--max-pixels: pixels of one picture.")
    max_body_bytes: int = Field(description="--max-body-bytes: bytes of one request body.")


# Statuses every request may get, whatever its path: the connection's limits (runtime.serve._LimitedH11Protocol)
# and a bug.
_ANY_REQUEST = {
    400: "malformed HTTP (the request line or headers), answered before the app sees the request",
    408: "the request line and headers did not arrive within --header-timeout-s (the connection closes)",
    500: "the server failed (logged; the connection stays open)",
    503: "the connection is past --max-connections (Retry-After: 1; the connection closes)",
}
_TAGGING = {
    400: "malformed JSON; JSON past its limits (nesting, integer digits, NaN/Infinity, 1e999, too many values); "
         "malformed multipart; malformed HTTP; the client went away mid-body",
    408: "the headers did not arrive within --header-timeout-s, or the body within --body-timeout-s of them",
    413: "the body is over --max-body-bytes (the connection closes)",
    415: "another Content-Type than the endpoint takes",
    422: "a text over --max-text-chars, empty, or with a lone surrogate; a picture over --max-pixels, not a picture "
         "or corrupt; invalid base64; a request over --max-post-pieces, --max-request-pieces or "
         "--max-request-pixels (kind 'over budget'); an unknown or missing field",
    500: "the post's tagging raised (the rest of its batch is tagged alone), or a bug",
    503: "the queue is full (--max-queue), the bundle is still warming up (kind 'not ready'), its warm-up failed, "
         "the server is shutting down, or the connection is past --max-connections; Retry-After where a retry helps",
    504: "not tagged within --timeout-s",
}
ERRORS: dict[str, dict[int, str]] = {
    "/v1/tag": _TAGGING,
    "/v1/tag/batch": {**_TAGGING, 415: "another Content-Type than application/json (no multipart here)",
                      422: "not {\"posts\": [...]} with at least one post, more than --max-request-posts posts, or "
                           "over --max-request-pieces or --max-request-pixels; a single post's problem is its own "
                           "error among the results (200)"},
    "/v1/info": _ANY_REQUEST,
    "/healthz": _ANY_REQUEST,
    "/readyz": _ANY_REQUEST,
    "/metrics": _ANY_REQUEST,
}


def error_responses(path: str, *, json_route: bool = True) -> dict[int | str, dict[str, Any]]:
    """FastAPI's ``responses=`` for ``path``: each status it really returns, as an :class:`ErrorBody`.
    ``json_route=False`` for a route whose own responses are not JSON (/metrics): FastAPI would give the
    errors that route's media type, so they name the schema as JSON themselves (the document has it, as
    the other routes' errors use it)."""
    if json_route:
        return {status: {"model": ErrorBody, "description": why} for status, why in sorted(ERRORS[path].items())}
    body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    return {status: {"description": why, "content": body} for status, why in sorted(ERRORS[path].items())}


def request_body(*, multipart: bool) -> dict[str, Any]:
    """``openapi_extra`` declaring a request body the handler reads itself (so FastAPI does not parse it)."""
    content: dict[str, Any] = {"application/json": {"schema": {"$ref": "#/components/schemas/PostIn"}}}
    if multipart:
        content["multipart/form-data"] = {"schema": {"$ref": "#/components/schemas/MultipartPostIn"}}
    else:
        content = {"application/json": {"schema": {"$ref": "#/components/schemas/BatchIn"}}}
    return {"requestBody": {"required": True, "content": content}}


REQUEST_MODELS = (PostIn, MultipartPostIn, BatchIn)  # referenced by request_body(); added to the components
