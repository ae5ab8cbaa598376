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

Rules: the model is fixed when the server starts (a request field `model` is rejected with 422, as is any unknown
field). A JSON `document` is always text, never a server-side file name. Limits: request body (413), pages per
document (422), max_length (422); wrong or blank fields give 422 with the field and the reason. One model worker:
concurrent requests queue (at most --max-queue waiting, then 503). With --api-key, /api/inference/* needs header
`X-API-Key: KEY` or `Authorization: Bearer KEY` (else 401).
"""

import argparse
import base64
import hmac
import io
import ipaddress
import json
import logging
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import (
    BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator, model_validator,
)

from .engine import DocumentText, InstructionEngine

logger = logging.getLogger("deepsynth.api_server")

WEB_DIR = Path(__file__).resolve().parent / "web"
TEXT_SUFFIXES = {".txt", ".md"}
UPLOAD_SUFFIXES = TEXT_SUFFIXES | {".pdf", ".png", ".jpg", ".jpeg"}
PREVIEW_WIDTH = 640  # px: page previews are downscaled to this width


@dataclass
class Settings:
    api_key: str | None = None
    max_body_bytes: int = 10 * 2**20
    max_length_limit: int = 1024
    max_queue: int = 32


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


class PagesRequest(_NoModelField):
    document: StrictStr = Field(description="Document text (always read as text, never as a file name).")

    _document_not_blank = field_validator("document")(_not_blank)


class _InstructFields(PagesRequest):
    instruction: StrictStr = Field(description="A question or instruction about the document.")
    max_length: int = Field(256, ge=1, strict=True, description="Most answer tokens (the server sets the upper bound).")
    temperature: Annotated[float, Field(ge=0, le=2, strict=True)] | None = Field(
        None, description="0 or null: greedy; > 0: sampling (Q&A 0.3, summaries 0.7)."
    )
    repetition_guard: StrictBool | dict[str, StrictInt] = Field(
        False, description='Ban n-grams repeated inside a recent window: true (30 in 90 tokens) or '
        '{"ngram_size": n, "window_size": w}.'
    )

    _instruction_not_blank = field_validator("instruction")(_not_blank)


class InstructResponse(BaseModel):
    answer: str
    confidence: float = Field(description="Geometric mean of the answer tokens' probabilities, in (0, 1].")
    tokens_generated: int
    inference_time_ms: int


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
    pages: list[Page]


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
    """At most `limit` requests waiting for or holding the model; more get 503 instead of an ever-longer queue."""

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


def create_app(engine: InstructionEngine, settings: Settings | None = None) -> FastAPI:
    """The FastAPI app serving `engine`."""
    settings = settings or Settings()
    gate = Gate(settings.max_queue)
    app = FastAPI(
        title="DeepSynth",
        version="0.1.0",
        description="Instruction-following over documents (DeepSeek-OCR vision tokens + a fused instruction encoder).",
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        # FastAPI's default echoes every bad input back (a whole document); keep where, what and why.
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

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

    @contextmanager
    def client_errors():
        """Bad documents and arguments (ValueError from the processor / engine) are the client's: 422."""
        try:
            yield
        except ValueError as e:
            raise HTTPException(422, str(e)) from None

    def answer(document, instruction, max_length, temperature, repetition_guard=False) -> dict:
        with gate.slot(), client_errors():
            if isinstance(document, str):
                document = DocumentText(document)  # client text is text, never a server file name
            return engine.generate_result(
                document, instruction, max_length, temperature, repetition_guard=repetition_guard
            ).to_dict()

    def stream(document, instruction, max_length, temperature, repetition_guard=False) -> StreamingResponse:
        gate.acquire()  # held until the event stream ends
        try:
            with client_errors():  # bad input fails here, as a plain 4xx, before the event stream starts
                if isinstance(document, str):
                    document = DocumentText(document)
                pieces = engine.stream(document, instruction, max_length, temperature,
                                       repetition_guard=repetition_guard)
        except BaseException:
            gate.release()
            raise

        def events():
            try:
                for piece in pieces:
                    yield _sse("token", {"text": piece})
                yield _sse("done", pieces.result.to_dict())
            except Exception as e:  # the status line is gone: report in-band
                logger.exception("stream failed")
                yield _sse("error", {"detail": str(e)})
            finally:
                pieces.close()
                gate.release()

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    def pages(document) -> dict:
        with gate.slot(), client_errors():
            images = engine.text_pages(document) if isinstance(document, str) else engine.load_pages(document)
        return {"page_count": len(images), "pages": [
            {"index": i, "width": p.width, "height": p.height, "png": _png_data_url(p)} for i, p in enumerate(images)
        ]}

    limit = settings.max_length_limit

    class InstructRequest(_InstructFields):  # the schema shows this server's max_length bound
        max_length: int = Field(256, ge=1, le=limit, strict=True, description=f"Most answer tokens (1..{limit}).")

    api = APIRouter(prefix="/api/inference", dependencies=[Depends(require_key)])

    def _instruction(value: str) -> str:
        if not value.strip():
            raise HTTPException(422, "instruction must not be empty or blank")
        return value

    @api.post("/instruct", response_model=InstructResponse)
    def instruct(request: InstructRequest):
        """Answer an instruction about a text document."""
        return answer(request.document, request.instruction, request.max_length, request.temperature,
                      request.repetition_guard)

    @api.post("/upload", response_model=InstructResponse)
    def upload(
        file: UploadFile = File(..., description="A .txt, .md, .pdf, .png, .jpg or .jpeg document"),
        instruction: str = Form(..., min_length=1),
        max_length: int = Form(256, ge=1, le=limit),
        temperature: float | None = Form(None, ge=0, le=2),
    ):
        """Answer an instruction about an uploaded document."""
        return answer(upload_document(file), _instruction(instruction), max_length, temperature)

    @api.post("/stream", response_class=StreamingResponse)
    def instruct_stream(request: InstructRequest):
        """As /instruct, streamed as server-sent events: `token` {text} per piece, then `done` {the result}."""
        return stream(request.document, request.instruction, request.max_length, request.temperature,
                      request.repetition_guard)

    @api.post("/upload/stream", response_class=StreamingResponse)
    def upload_stream(
        file: UploadFile = File(...),
        instruction: str = Form(..., min_length=1),
        max_length: int = Form(256, ge=1, le=limit),
        temperature: float | None = Form(None, ge=0, le=2),
    ):
        """As /upload, streamed as server-sent events."""
        return stream(upload_document(file), _instruction(instruction), max_length, temperature)

    @api.post("/pages", response_model=PagesResponse)
    def preview(request: PagesRequest):
        """The page images the model reads for a text document (PNG data URLs, at most 640 px wide)."""
        return pages(request.document)

    @api.post("/pages/upload", response_model=PagesResponse)
    def preview_upload(file: UploadFile = File(...)):
        """The page images the model reads for an uploaded document."""
        return pages(upload_document(file))

    class ExtractJsonRequest(InstructRequest):
        schema_: dict[str, Any] | None = Field(None, alias="schema", description="A JSON Schema (Draft 2020-12).")
        fields: list[StrictStr] | None = Field(None, min_length=1, description="Field names: required strings.")

        _one_of = model_validator(mode="before")(_json_request_fields)

    def extract(document, instruction, schema, fields, max_length, temperature) -> dict:
        with gate.slot(), client_errors():
            if isinstance(document, str):
                document = DocumentText(document)
            result = engine.generate_json(document, instruction, schema, max_length, temperature, fields=fields)
        return result.to_dict()

    @api.post("/extract-json", response_model=ExtractJsonResponse, response_model_by_alias=True)
    def extract_json(request: ExtractJsonRequest):
        """Extract a JSON object from a text document: decoding can only write JSON valid under the schema."""
        return extract(request.document, request.instruction, request.schema_, request.fields, request.max_length,
                       request.temperature)

    @api.post("/upload/extract-json", response_model=ExtractJsonResponse, response_model_by_alias=True)
    def upload_extract_json(
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
        return extract(upload_document(file), _instruction(instruction), schema,
                       None if fields is None else fields.split(","), max_length, temperature)

    app.include_router(api)

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
    parser.add_argument("--max-queue", type=int, default=32, help="requests waiting at most; more get 503")
    parser.add_argument("--cache-size", type=int, default=32, help="documents in the document cache (0: off)")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name, value in (("--max-length-limit", args.max_length_limit), ("--max-queue", args.max_queue)):
        if value < 1:
            parser.error(f"{name} must be >= 1")
    try:
        engine = InstructionEngine(args.model, use_text_encoder=args.use_text_encoder, device=args.device,
                                   cache_size=args.cache_size, max_pages=args.max_pages)
    except (FileNotFoundError, ValueError) as e:
        parser.exit(2, f"error: {e}\n")
    if args.api_key is None and not _is_loopback(args.host):
        logger.warning("serving on %s without --api-key: anyone who can reach it can use the model", args.host)
    settings = Settings(api_key=args.api_key, max_body_bytes=int(args.max_body_mb * 2**20),
                        max_length_limit=args.max_length_limit, max_queue=args.max_queue)
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
