"""REST API and web UI over one `InstructionEngine`.

    PYTHONPATH=./src python3 -m deepsynth.inference.api_server --model ./models/deepsynth-qa --port 5000 \
        [--host 127.0.0.1] [--api-key KEY]

Endpoints (OpenAPI schema at /openapi.json):
  POST /api/inference/instruct        JSON {document, instruction, max_length, temperature, repetition_guard}
                                      -> {answer, confidence, tokens_generated, inference_time_ms}
  POST /api/inference/upload          multipart: file (.txt .md .pdf .png .jpg .jpeg), instruction, max_length, temperature
  POST /api/inference/stream          JSON as /instruct -> server-sent events: `token` {text} ..., then `done` {result}
  POST /api/inference/upload/stream   multipart as /upload -> the same events
  POST /api/inference/extract-json    JSON {document, instruction, schema | fields, max_length, temperature}
                                      -> {answer, json, field_confidence, json_error, confidence, ...}: decoding
                                      constrained to JSON valid under the schema (422 for an invalid schema)
  POST /api/inference/upload/extract-json  multipart: file, instruction, schema (JSON text) | fields (a,b,c), ...
  POST /api/inference/pages           JSON {document} -> rendered pages as PNG data URLs (UI preview)
  POST /api/inference/pages/upload    multipart: file -> the same
  GET  /api/health                    status, model, limits, cache statistics (no API key needed)
  GET  /                              the web UI

  POST /v1/chat/completions           OpenAI's chat completions (openai_api.py), GET /v1/models

Rules: the model is fixed when the server starts (a request field `model` is rejected with 422, as is any unknown
field, JSON or multipart). A JSON `document` is always text, never a server-side file name. Limits: request body
(413), max_length (422); wrong or blank fields give 422 with the field and the reason. A document longer than the
page limit is read up to its first pages and every answer says so (`pages_used`, `pages_total`, `truncated`).
Concurrent requests are batched (`--batch-window-ms`, `--max-batch-size`; batching.py); at most --max-queue wait,
then 503. With --api-key, /api/inference/* and /v1/* need `X-API-Key: KEY` or `Authorization: Bearer KEY` (else
401). Host headers other than loopback names and --allowed-host get 400; cross-origin requests are refused (403)
unless their origin is given with --cors-origin.
"""

import argparse
import asyncio
import base64
import hmac
import io
import ipaddress
import json
import logging
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import (
    BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator, model_validator,
)
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from .batching import Batcher
from .engine import MIN_TEMPERATURE, DocumentText, GenerationResult, InstructionEngine, TextStream

logger = logging.getLogger("deepsynth.api_server")

WEB_DIR = Path(__file__).resolve().parent / "web"
TEXT_SUFFIXES = {".txt", ".md"}
UPLOAD_SUFFIXES = TEXT_SUFFIXES | {".pdf", ".png", ".jpg", ".jpeg"}
PREVIEW_WIDTH = 640  # px: page previews are downscaled to this width
LOOPBACK_HOSTS = ["localhost", "127.0.0.1", "[::1]"]  # Host header names (IPv6 literals in brackets)
DISCONNECT_POLL_S = 0.05  # how often a waiting request checks whether its client is still there


@dataclass
class Settings:
    api_key: str | None = None
    max_body_bytes: int = 10 * 2**20
    max_length_limit: int = 1024
    max_queue: int = 256
    batch_window_ms: float = 5.0
    max_batch_size: int = 16
    batch_max_wait_ms: float = 200.0  # waiting for requests still being rendered ends here
    allowed_hosts: list[str] = field(default_factory=list)  # on top of LOOPBACK_HOSTS; "*" allows any
    cors_origins: list[str] = field(default_factory=list)
    allow_remote_images: bool = False  # /v1/chat/completions: fetch http(s) image_url parts


# ---- request / response schemas ---------------------------------------------------------------------------------
class _NoModelField(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _reject_model(cls, data):
        if isinstance(data, dict) and "model" in data:
            raise ValueError("'model' cannot be chosen per request: the server serves the model given at start (--model)")
        return data


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or blank")
    return value


def _usable_temperature(value: float | None) -> float | None:
    if value and value < MIN_TEMPERATURE:
        raise ValueError(f"temperature {value!r} is too small to sample with: use 0 for greedy or >= {MIN_TEMPERATURE}")
    return value


class PagesRequest(_NoModelField):
    document: StrictStr = Field(description="Document text (always read as text, never as a file name).")

    _document_not_blank = field_validator("document")(_not_blank)


class _InstructFields(PagesRequest):
    instruction: StrictStr = Field(description="A question or instruction about the document.")
    max_length: int = Field(256, ge=1, strict=True, description="Most answer tokens (the server sets the upper bound).")
    temperature: Annotated[float, Field(ge=0, le=2, strict=True)] | None = Field(
        None, description=f"0 or null: greedy; {MIN_TEMPERATURE}..2: sampling (Q&A 0.3, summaries 0.7)."
    )
    repetition_guard: StrictBool | dict[str, StrictInt] = Field(
        False, description='Ban n-grams repeated inside a recent window: true (30 in 90 tokens) or '
        '{"ngram_size": n, "window_size": w}.'
    )

    _instruction_not_blank = field_validator("instruction")(_not_blank)
    _temperature_usable = field_validator("temperature")(_usable_temperature)


class InstructResponse(BaseModel):
    answer: str
    confidence: float = Field(description="Geometric mean of the answer tokens' probabilities, in (0, 1].")
    tokens_generated: int
    inference_time_ms: int = Field(description="Rendering + model time of this request (queue wait excluded).")
    queue_time_ms: int = Field(description="Time the request waited for the model.")
    pages_used: int = Field(description="Pages the model read: the first --max-pages of the document.")
    pages_total: int | None = Field(description="Pages the document has (null when truncated: the layout stops at "
                                                "the page limit, so a long text costs its first pages only).")
    truncated: bool = Field(description="True when the document had more pages than the model read.")


class ExtractJsonResponse(InstructResponse):
    json_: Any = Field(None, alias="json", description="The parsed object, valid under the schema (null: see json_error).")
    field_confidence: dict[str, float | None] = Field(
        description="Per top-level field: geometric mean probability of its value's tokens.")
    json_error: str | None = Field(None, description="Why json is null: generation ran out of tokens first.")


def _json_request_fields(data):
    """Exactly one of `schema` / `fields` (pydantic `model_validator(mode="before")`)."""
    if isinstance(data, dict) and ("schema" in data) == ("fields" in data):
        raise ValueError("pass exactly one of 'schema' (a JSON Schema object) or 'fields' (a list of field names)")
    return data


class Page(BaseModel):
    index: int
    width: int
    height: int
    png: str = Field(description="data:image/png;base64,...")


class PagesResponse(BaseModel):
    page_count: int
    pages_total: int | None = Field(description="Pages the document has (null when truncated: the layout stops at "
                                                "the page limit); only the first page_count are read.")
    truncated: bool
    pages: list[Page]


class OriginPolicy:
    """ASGI middleware: a request from a web page of another origin (its `Origin` header is neither this server nor
    one of `allowed`) gets 403 before anything runs: a page in the user's browser cannot drive a local server, not
    even with a "simple" cross-origin POST that needs no preflight."""

    def __init__(self, app, allowed: list[str]):
        self.app, self.allowed = app, {o.rstrip("/") for o in allowed}

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            origin = headers.get(b"origin", b"").decode("latin-1").rstrip("/")
            own = f"{scope.get('scheme', 'http')}://{headers.get(b'host', b'').decode('latin-1')}"
            if origin and origin != own and origin not in self.allowed and "*" not in self.allowed:
                message = f"cross-origin request from {origin} refused (allow it with --cors-origin {origin})"
                return await JSONResponse({"detail": message}, status_code=403)(scope, receive, send)
        await self.app(scope, receive, send)


# ---- plumbing ---------------------------------------------------------------------------------------------------
class BodySizeLimit:
    """ASGI middleware: 413 for a body over `max_bytes`, whether announced by Content-Length or streamed."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            response = JSONResponse({"detail": self._message()}, status_code=413)
            return await response(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, self._message())  # FastAPI turns it into the response
            return message

        await self.app(scope, limited_receive, send)

    def _message(self) -> str:
        return f"request body larger than the server limit of {self.max_bytes} bytes (--max-body-mb)"


class Gate:
    """At most `limit` requests waiting for or holding the model; more get 503 instead of an ever-longer queue (the
    default, 256, is well above what batching keeps waiting: 64 concurrent clients are all served)."""

    def __init__(self, limit: int):
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)

    def acquire(self):
        if not self._slots.acquire(blocking=False):
            busy = f"server busy: {self.limit} requests queued; retry later"
            raise HTTPException(503, busy, headers={"Retry-After": "1"})

    def release(self):
        self._slots.release()

    @contextmanager
    def slot(self):
        self.acquire()
        try:
            yield
        finally:
            self.release()


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _png_data_url(page) -> str:
    if page.width > PREVIEW_WIDTH:
        page = page.resize((PREVIEW_WIDTH, max(1, round(page.height * PREVIEW_WIDTH / page.width))))
    buffer = io.BytesIO()
    page.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


class Serving:
    """What every endpoint does with a request: hold a queue slot, prepare it in a worker thread (rendering never
    blocks the event loop or other requests), hand it to the batcher, and cancel it if the client goes away."""

    def __init__(self, engine: InstructionEngine, settings: Settings):
        self.engine, self.settings = engine, settings
        self.gate = Gate(settings.max_queue)
        self.batcher = Batcher(engine, settings.batch_window_ms, settings.max_batch_size, settings.batch_max_wait_ms)
        self.stream_stats = {"streams": 0, "tokens_generated": 0}
        self._stats_lock = threading.Lock()  # one counting thread per stream

    @staticmethod
    @contextmanager
    def client_errors():
        """Bad documents and arguments (ValueError from the processor / engine) are the client's: 422."""
        try:
            yield
        except ValueError as e:
            raise HTTPException(422, str(e)) from None

    async def answer(self, raw: Request, document, instruction, max_length, temperature, **extra) -> GenerationResult:
        with self.gate.slot(), self.client_errors():
            if isinstance(document, str):
                document = DocumentText(document)  # client text is text, never a server file name
            kwargs = self.engine.generation_kwargs(max_length, temperature, **extra)
            self.batcher.expect()  # the batch being gathered waits for this one while it renders
            try:
                example = await run_in_threadpool(self.engine.prepare, document, instruction)
            except BaseException:
                self.batcher.forget()
                raise
            job = self.batcher.submit(example, kwargs, expected=True)
            waiter = asyncio.wrap_future(job.future)
            while not (await asyncio.wait({waiter}, timeout=DISCONNECT_POLL_S))[0]:
                if await raw.is_disconnected():
                    job.cancel.set()  # its row stops at the next token (or it never starts)
                    raise ClientGone()
            return waiter.result()

    async def open_stream(self, document, instruction, max_length, temperature, **extra) -> TextStream:
        """A started `TextStream`, holding a queue slot until `close_stream`. Bad input fails here, as a plain 4xx,
        before any event is sent. Streams do not join batches: transformers' streamers take one row."""
        self.gate.acquire()
        try:
            with self.client_errors():
                if isinstance(document, str):
                    document = DocumentText(document)
                pieces = await run_in_threadpool(self.engine.stream, document, instruction, max_length,
                                                 temperature, **extra)
            threading.Thread(target=self._count, args=(pieces,), daemon=True).start()
            return pieces
        except BaseException:
            self.gate.release()
            raise

    def _count(self, pieces: TextStream):
        result = pieces.wait()
        with self._stats_lock:
            self.stream_stats["streams"] += 1
            self.stream_stats["tokens_generated"] += result.tokens_generated if result else 0

    def close_stream(self, pieces: TextStream):
        pieces.close()  # a client that left stops the generation here (the response task is cancelled)
        self.gate.release()

    @staticmethod
    async def pieces_of(pieces: TextStream):
        """The stream's text pieces, read in a worker thread (the event loop never blocks on the model)."""
        iterator, end = iter(pieces), object()
        while (piece := await run_in_threadpool(next, iterator, end)) is not end:
            yield piece


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


def _unknown_form_fields(*allowed: str):
    """Multipart endpoints reject unknown fields like the JSON ones (`model=...` included)."""

    async def check(request: Request):
        names = set((await request.form()).keys())  # parsed once: FastAPI reads the same cached form
        if "model" in names:
            raise HTTPException(422, "'model' cannot be chosen per request: the server serves the model given at "
                                     "start (--model)")
        if unknown := sorted(names - set(allowed)):
            raise HTTPException(422, f"unknown form field(s) {unknown}: this endpoint takes {sorted(allowed)}")

    return Depends(check)


UPLOAD_RESPONSES = {415: {"description": "Unsupported file type"}, 413: {"description": "Request body too large"}}


def create_app(engine: InstructionEngine, settings: Settings | None = None) -> FastAPI:
    """The FastAPI app serving `engine`."""
    settings = settings or Settings()
    serving = Serving(engine, settings)
    gate = serving.gate
    app = FastAPI(
        title="DeepSynth",
        version="0.1.0",
        description="Instruction-following over documents (DeepSeek-OCR vision tokens + a fused instruction encoder).",
    )
    app.state.serving = serving
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-API-Key"])
    app.add_middleware(OriginPolicy, allowed=settings.cors_origins)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_HOSTS + settings.allowed_hosts,
                       www_redirect=False)

    from .openai_api import add_openai_routes, is_openai_path, openai_error

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        # FastAPI's default echoes every bad input back (a whole document); keep where, what and why.
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        if is_openai_path(request):
            first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
            param = ".".join(str(p) for p in first["loc"] if p != "body") or None
            return openai_error(400, f"{param}: {first['msg']}" if param else first["msg"], param=param)
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            # FastAPI's answer to a body it cannot decode (invalid UTF-8, a broken multipart): the docs promise 422
            exc = StarletteHTTPException(422, "the request body cannot be parsed: not UTF-8 JSON or a valid form")
        if is_openai_path(request):
            return openai_error(exc.status_code, str(exc.detail), headers=exc.headers)
        detail = exc.detail
        if exc.status_code == 422 and isinstance(detail, str):  # the schema's 422 shape: a list of errors
            detail = [{"loc": ["body"], "msg": detail, "type": "value_error"}]
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(ClientGone)
    async def _client_gone(request, exc):
        return Response(status_code=499)  # nobody reads it: nginx's "client closed request"

    def require_key(request: Request):
        if settings.api_key is None:
            return
        given = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not given or not hmac.compare_digest(given.encode(), settings.api_key.encode()):
            raise HTTPException(
                401, "missing or wrong API key: send 'X-API-Key: KEY' or 'Authorization: Bearer KEY'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def upload_document(file: UploadFile):
        """Text files -> their text (as `DocumentText`); PDFs and images -> their bytes, for the processor."""
        suffix = Path(file.filename or "").suffix.lower()
        if suffix not in UPLOAD_SUFFIXES:
            kind = suffix or "(none)"
            raise HTTPException(415, f"unsupported file type {kind!r}: upload one of {sorted(UPLOAD_SUFFIXES)}")
        data = file.file.read()
        if not data:
            raise HTTPException(422, f"empty document: {file.filename} has no bytes")
        if suffix in TEXT_SUFFIXES:
            try:
                return DocumentText(data.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise HTTPException(422, f"{file.filename} is not UTF-8 text: {e}") from None
        return data

    async def answer(raw, document, instruction, max_length, temperature, **extra) -> dict:
        result = await serving.answer(raw, document, instruction, max_length, temperature, **extra)
        return result.to_dict()

    async def stream(document, instruction, max_length, temperature, **extra) -> StreamingResponse:
        pieces = await serving.open_stream(document, instruction, max_length, temperature, **extra)

        async def events():
            try:
                async for piece in serving.pieces_of(pieces):
                    yield _sse("token", {"text": piece})
                yield _sse("done", pieces.result.to_dict())
            except Exception as e:  # the status line is gone: report in-band
                logger.exception("stream failed")
                yield _sse("error", {"detail": str(e)})
            finally:
                serving.close_stream(pieces)

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    def pages(document) -> dict:
        with gate.slot(), serving.client_errors():
            if isinstance(document, str):
                document = DocumentText(document)
            images, total, truncated = engine.document_pages(document)
        return {"page_count": len(images), "pages_total": total, "truncated": truncated,
                "pages": [{"index": i, "width": p.width, "height": p.height, "png": _png_data_url(p)}
                          for i, p in enumerate(images)]}

    limit = settings.max_length_limit

    class InstructRequest(_InstructFields):  # the schema shows this server's max_length bound
        max_length: int = Field(256, ge=1, le=limit, strict=True, description=f"Most answer tokens (1..{limit}).")

    api = APIRouter(prefix="/api/inference", dependencies=[Depends(require_key)])

    def _instruction(value: str) -> str:
        if not value.strip():
            raise HTTPException(422, "instruction must not be empty or blank")
        return value

    def _temperature(value: float | None) -> float | None:
        try:
            return _usable_temperature(value)
        except ValueError as e:
            raise HTTPException(422, f"temperature: {e}") from None

    upload_fields = _unknown_form_fields("file", "instruction", "max_length", "temperature")

    @api.post("/instruct", response_model=InstructResponse)
    async def instruct(request: InstructRequest, raw: Request):
        """Answer an instruction about a text document."""
        return await answer(raw, request.document, request.instruction, request.max_length, request.temperature,
                            repetition_guard=request.repetition_guard)

    @api.post("/upload", response_model=InstructResponse, responses=UPLOAD_RESPONSES, dependencies=[upload_fields])
    async def upload(
        raw: Request,
        file: UploadFile = File(..., description="A .txt, .md, .pdf, .png, .jpg or .jpeg document"),
        instruction: str = Form(..., min_length=1),
        max_length: int = Form(256, ge=1, le=limit),
        temperature: float | None = Form(None, ge=0, le=2),
    ):
        """Answer an instruction about an uploaded document."""
        document = await run_in_threadpool(upload_document, file)
        return await answer(raw, document, _instruction(instruction), max_length, _temperature(temperature))

    @api.post("/stream", response_class=StreamingResponse)
    async def instruct_stream(request: InstructRequest):
        """As /instruct, streamed as server-sent events: `token` {text} per piece, then `done` {the result}."""
        return await stream(request.document, request.instruction, request.max_length, request.temperature,
                            repetition_guard=request.repetition_guard)

    @api.post("/upload/stream", response_class=StreamingResponse, responses=UPLOAD_RESPONSES,
              dependencies=[upload_fields])
    async def upload_stream(
        file: UploadFile = File(...),
        instruction: str = Form(..., min_length=1),
        max_length: int = Form(256, ge=1, le=limit),
        temperature: float | None = Form(None, ge=0, le=2),
    ):
        """As /upload, streamed as server-sent events."""
        document = await run_in_threadpool(upload_document, file)
        return await stream(document, _instruction(instruction), max_length, _temperature(temperature))

    @api.post("/pages", response_model=PagesResponse)
    def preview(request: PagesRequest):
        """The page images the model reads for a text document (PNG data URLs, at most 640 px wide)."""
        return pages(request.document)

    @api.post("/pages/upload", response_model=PagesResponse, responses=UPLOAD_RESPONSES,
              dependencies=[_unknown_form_fields("file")])
    def preview_upload(file: UploadFile = File(...)):
        """The page images the model reads for an uploaded document."""
        return pages(upload_document(file))

    class ExtractJsonRequest(InstructRequest):
        schema_: dict[str, Any] | None = Field(None, alias="schema", description="A JSON Schema (Draft 2020-12).")
        fields: list[StrictStr] | None = Field(None, min_length=1, description="Field names: required strings.")

        _one_of = model_validator(mode="before")(_json_request_fields)

    async def extract(document, instruction, schema, fields, max_length, temperature, **extra) -> dict:
        # Each schema is its own constraint: these requests run one by one (not batched), in a worker thread.
        with gate.slot(), serving.client_errors():
            if isinstance(document, str):
                document = DocumentText(document)
            result = await run_in_threadpool(engine.generate_json, document, instruction, schema, max_length,
                                             temperature, fields=fields, **extra)
        return result.to_dict()

    @api.post("/extract-json", response_model=ExtractJsonResponse, response_model_by_alias=True)
    async def extract_json(request: ExtractJsonRequest):
        """Extract a JSON object from a text document: decoding can only write JSON valid under the schema."""
        return await extract(request.document, request.instruction, request.schema_, request.fields,
                             request.max_length, request.temperature, repetition_guard=request.repetition_guard)

    extract_fields = _unknown_form_fields("file", "instruction", "schema", "fields", "max_length", "temperature")

    @api.post("/upload/extract-json", response_model=ExtractJsonResponse, response_model_by_alias=True,
              responses=UPLOAD_RESPONSES, dependencies=[extract_fields])
    async def upload_extract_json(
        file: UploadFile = File(...),
        instruction: str = Form(..., min_length=1),
        schema: str | None = Form(None, description="A JSON Schema as JSON text"),
        fields: str | None = Form(None, description="Comma-separated field names"),
        max_length: int = Form(256, ge=1, le=limit),
        temperature: float | None = Form(None, ge=0, le=2),
    ):
        """As /extract-json, for an uploaded document."""
        if (schema is None) == (fields is None):
            raise HTTPException(422, "pass exactly one of 'schema' (JSON text) or 'fields' (comma-separated names)")
        document = await run_in_threadpool(upload_document, file)
        return await extract(document, _instruction(instruction), schema,
                             None if fields is None else fields.split(","), max_length, _temperature(temperature))

    app.include_router(api)
    add_openai_routes(app, serving, Depends(require_key))

    @app.get("/api/health")
    def health():
        return {
            "status": "ok",
            "model": Path(engine.model_path).name,
            "device": str(engine.device),
            "instruction_fusion": engine.model.config.instruction_fusion,
            "auth_required": settings.api_key is not None,
            "limits": {"max_pages": engine.max_pages, "max_length": settings.max_length_limit,
                       "max_body_bytes": settings.max_body_bytes, "max_queue": settings.max_queue},
            "batching": {"window_ms": settings.batch_window_ms, "max_batch_size": settings.max_batch_size,
                         "max_wait_ms": settings.batch_max_wait_ms,
                         **serving.batcher.stats},
            "streams": serving.stream_stats,
            "cache": engine.cache_stats(),
        }

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(WEB_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app


def main(argv=None):
    parser = argparse.ArgumentParser(description="Serve a DeepSynth model over REST, with a web UI at /.")
    parser.add_argument("--model", default=None, help="checkpoint folder (default: the bundled demo model)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--api-key", default=os.environ.get("DEEPSYNTH_API_KEY"),
                        help="require this key on /api/inference/* (default: $DEEPSYNTH_API_KEY, else none)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-text-encoder", dest="use_text_encoder", action="store_false",
                        help="only for checkpoints trained without an instruction encoder")
    parser.add_argument("--max-pages", type=int, default=None, help="pages per document (default: the checkpoint's)")
    parser.add_argument("--max-length-limit", type=int, default=1024, help="largest max_length a request may ask")
    parser.add_argument("--max-body-mb", type=float, default=10.0, help="largest request body, MiB")
    parser.add_argument("--max-queue", type=int, default=256, help="requests waiting at most; more get 503")
    parser.add_argument("--batch-window-ms", type=float, default=5.0,
                        help="how long the first waiting request waits for others to batch with (default 5 ms)")
    parser.add_argument("--max-batch-size", type=int, default=16, help="most requests in one generate() call")
    parser.add_argument("--batch-max-wait-ms", type=float, default=200.0,
                        help="a batch waits for requests still being rendered at most this long (default 200 ms)")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="HOST",
                        help="also accept this Host header (loopback names always; repeat; '*' for any)")
    parser.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                        help="let web pages from this origin call the API (e.g. https://app.example; repeat)")
    parser.add_argument("--allow-remote-images", action="store_true",
                        help="/v1/chat/completions: fetch http(s) image_url parts (default: data: URIs only)")
    parser.add_argument("--cache-size", type=int, default=32, help="documents in the document cache (0: off)")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name, value in (("--max-length-limit", args.max_length_limit), ("--max-queue", args.max_queue),
                        ("--max-batch-size", args.max_batch_size)):
        if value < 1:
            parser.error(f"{name} must be >= 1")
    if not 0 <= args.batch_window_ms <= args.batch_max_wait_ms:
        parser.error("need 0 <= --batch-window-ms <= --batch-max-wait-ms")
    try:
        engine = InstructionEngine(args.model, use_text_encoder=args.use_text_encoder, device=args.device,
                                   cache_size=args.cache_size, max_pages=args.max_pages)
    except (FileNotFoundError, ValueError) as e:
        parser.exit(2, f"error: {e}\n")
    if args.api_key is None and not _is_loopback(args.host):
        logger.warning("serving on %s without --api-key: anyone who can reach it can use the model", args.host)
    allowed_hosts = list(args.allowed_host)
    if args.host not in ("0.0.0.0", "::", ""):
        allowed_hosts.append(args.host)  # the name the server was started on
    settings = Settings(api_key=args.api_key, max_body_bytes=int(args.max_body_mb * 2**20),
                        max_length_limit=args.max_length_limit, max_queue=args.max_queue,
                        batch_window_ms=args.batch_window_ms, max_batch_size=args.max_batch_size,
                        batch_max_wait_ms=args.batch_max_wait_ms,
                        allowed_hosts=allowed_hosts, cors_origins=list(args.cors_origin),
                        allow_remote_images=args.allow_remote_images)
    import uvicorn

    print(f"DeepSynth serving {engine.model_path} at http://{args.host}:{args.port}", flush=True)
    uvicorn.run(create_app(engine, settings), host=args.host, port=args.port, log_level=args.log_level)


def _is_loopback(host: str) -> bool:
    import socket

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: resolve it
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
        except OSError:
            return False


if __name__ == "__main__":
    main()
