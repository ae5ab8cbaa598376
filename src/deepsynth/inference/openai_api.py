"""OpenAI-compatible chat completions over the same engine and batcher as the REST API.

    POST /v1/chat/completions   GET /v1/models

How a chat maps onto (document, instruction): only `user` messages are read (system / assistant messages are
accepted and ignored: the model answers one instruction about one document). Over all user messages, in order, the
LAST text part is the instruction; every other part is the document, in order:
  - text parts (a message's string content is one text part): document text, consecutive ones joined by "\\n\\n";
  - `image_url` parts: a page image, `data:image/...;base64,...` (http(s) URLs only with --allow-remote-images);
  - `file` parts: `{"file": {"file_data": "data:application/pdf;base64,...", "filename": "report.pdf"}}`, a PDF,
    an image, or UTF-8 text (text/plain, text/markdown, or a .txt/.md filename).
Sampling: `temperature` omitted or 0 is greedy (as everywhere in DeepSynth, unlike OpenAI's default of 1).
Structured output: `response_format: {"type": "json_schema", "json_schema": {"name", "schema"}}` (or
`{"type": "json_object"}`: any object) constrains decoding to JSON valid under the schema (`generate_json`, the same
xgrammar constraint as the REST /extract-json endpoint); the content is the JSON text and `deepsynth` adds the
parsed `json`, `field_confidence` and `json_error`. Not with `stream` (the object is returned whole).
Answers carry an extra `deepsynth` object: confidence, pages_used, pages_total, truncated, inference_time_ms,
queue_time_ms. Errors use OpenAI's shape `{"error": {"message", "type", "param", "code"}}` with a 4xx status.
"""

import base64
import binascii
import json
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, field_validator

from .engine import DocumentText, GenerationResult

TEXT_MIME_TYPES = {"text/plain", "text/markdown"}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "invalid_request_error", 415: "invalid_request_error",
               422: "invalid_request_error", 429: "rate_limit_error", 503: "server_overloaded"}


def is_openai_path(request: Request) -> bool:
    return request.url.path.startswith("/v1/")


def openai_error(status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": ERROR_TYPES.get(status, "invalid_request_error"), "param": param,
                      "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: StrictStr


class ImageURL(_Strict):
    url: StrictStr
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


class FileData(_Strict):
    file_data: StrictStr = Field(description="data:<mime>;base64,<bytes>: a PDF, an image or UTF-8 text")
    filename: StrictStr | None = None


class FilePart(_Strict):
    type: Literal["file"]
    file: FileData


Part = Annotated[TextPart | ImagePart | FilePart, Field(discriminator="type")]


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[Part]
    name: StrictStr | None = None


class StreamOptions(_Strict):
    include_usage: StrictBool = False


class JsonSchemaFormat(_Strict):
    name: StrictStr
    schema_: dict[str, Any] = Field(alias="schema", description="A JSON Schema (Draft 2020-12)")
    description: StrictStr | None = None
    strict: StrictBool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    def schema_or_none(self) -> dict | None:
        """The schema the answer must follow (None: free text)."""
        if self.type == "json_schema":
            if self.json_schema is None:
                raise HTTPException(400, "response_format: type 'json_schema' needs a json_schema object")
            return self.json_schema.schema_
        return {"type": "object"} if self.type == "json_object" else None


class ChatCompletionRequest(_Strict):
    model: StrictStr = Field(description="The served model's id (GET /v1/models)")
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, strict=True)
    max_completion_tokens: int | None = Field(None, ge=1, strict=True)
    temperature: Annotated[float, Field(ge=0, le=2, strict=True)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1, strict=True)] | None = None
    stop: StrictStr | Annotated[list[StrictStr], Field(max_length=4)] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] | None = Field(None, description="one answer per request")
    response_format: ResponseFormat | None = None
    user: StrictStr | None = None

    @field_validator("stop")
    @classmethod
    def _stop_not_empty(cls, value):
        stops = [value] if isinstance(value, str) else value or []
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return value


def _data_uri(url: str, what: str) -> tuple[str, bytes]:
    """(mime type, bytes) of a base64 data URI."""
    header, sep, payload = url.partition(",")
    if not sep or not header.startswith("data:") or not header.endswith(";base64"):
        raise HTTPException(400, f"{what}: expected a data URI 'data:<mime>;base64,<data>'")
    try:
        return header[5:-7].lower(), base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise HTTPException(400, f"{what}: invalid base64 ({e})") from None


def _fetch(url: str, limit: int) -> bytes:
    """A remote image, at most `limit` bytes (only with --allow-remote-images)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            data = response.read(limit + 1)
    except OSError as e:
        raise HTTPException(400, f"cannot fetch {url}: {e}") from None
    if len(data) > limit:
        raise HTTPException(413, f"{url} is larger than the server limit of {limit} bytes")
    return data


def document_and_instruction(messages: list[Message], allow_remote: bool, max_bytes: int):
    """(document, instruction) of a chat: see the module docstring."""
    parts: list[tuple[str, TextPart | ImagePart | FilePart]] = []
    for m, message in enumerate(messages):
        if message.role != "user":
            continue
        content = [TextPart(type="text", text=message.content)] if isinstance(message.content, str) else message.content
        parts += [(f"messages.{m}.content" + ("" if isinstance(message.content, str) else f".{p}"), part)
                  for p, part in enumerate(content)]
    texts = [i for i, (_, part) in enumerate(parts) if isinstance(part, TextPart)]
    if not texts:
        raise HTTPException(400, "no instruction: the last text part of the user messages is the instruction")
    instruction = parts.pop(texts[-1])[1].text
    if not instruction.strip():
        raise HTTPException(400, "the instruction (the last user text part) is empty")
    document: list = []
    for where, part in parts:
        if isinstance(part, TextPart):
            if document and isinstance(document[-1], DocumentText):
                document[-1] = DocumentText(document[-1] + "\n\n" + part.text)
            elif part.text.strip():
                document.append(DocumentText(part.text))
        elif isinstance(part, ImagePart):
            url = part.image_url.url
            if url.startswith(("http://", "https://")):
                if not allow_remote:
                    raise HTTPException(400, f"{where}: remote image URLs are refused; send a data: URI (the "
                                             "operator can allow URLs with --allow-remote-images)")
                document.append(_fetch(url, max_bytes))
            else:
                mime, data = _data_uri(url, where)
                if not mime.startswith("image/"):
                    raise HTTPException(400, f"{where}: an image_url must be an image, got {mime or 'no type'}")
                document.append(data)
        else:
            mime, data = _data_uri(part.file.file_data, where)
            suffix = Path(part.file.filename or "").suffix.lower()
            if mime in TEXT_MIME_TYPES or suffix in (".txt", ".md"):
                try:
                    document.append(DocumentText(data.decode("utf-8")))
                except UnicodeDecodeError as e:
                    raise HTTPException(400, f"{where}: the file is not UTF-8 text ({e})") from None
            elif mime == "application/pdf" or mime.startswith("image/"):
                document.append(data)
            else:
                raise HTTPException(415, f"{where}: unsupported file type {mime or 'none'}: send a PDF, an image, "
                                         "or text/plain")
    if not document:
        raise HTTPException(400, "no document: put it in the user message as a text part before the instruction, "
                                 "an image_url part, or a file part")
    return (document[0] if len(document) == 1 else document), instruction


def _extra(result: GenerationResult) -> dict:
    return {"confidence": result.confidence, "pages_used": result.pages_used, "pages_total": result.pages_total,
            "truncated": result.truncated, "inference_time_ms": result.inference_time_ms,
            "queue_time_ms": result.queue_time_ms}


def _usage(result: GenerationResult) -> dict:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.tokens_generated,
            "total_tokens": result.prompt_tokens + result.tokens_generated}


def add_openai_routes(app: FastAPI, serving, require_key) -> None:
    engine, settings = serving.engine, serving.settings
    model_id = Path(engine.model_path).name

    @app.get("/v1/models", dependencies=[require_key])
    def list_models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "deepsynth"}]}

    @app.post("/v1/chat/completions", dependencies=[require_key],
              responses={400: {"description": "Invalid request (OpenAI error shape)"},
                         404: {"description": "Unknown model"}, 413: {"description": "Request body too large"},
                         415: {"description": "Unsupported file type"}})
    async def chat_completions(request: ChatCompletionRequest, raw: Request):
        """OpenAI's chat completions: see the openai_api module docstring for how messages become a document and an
        instruction. `stream: true` answers with `chat.completion.chunk` server-sent events ending in `[DONE]`."""
        if request.model != model_id:
            raise HTTPException(404, f"model {request.model!r} is not served here: this server serves {model_id!r}")
        max_tokens = request.max_completion_tokens or request.max_tokens or 256
        if max_tokens > settings.max_length_limit:
            raise HTTPException(400, f"max_tokens: at most {settings.max_length_limit} (--max-length-limit)")
        document, instruction = document_and_instruction(request.messages, settings.allow_remote_images,
                                                         settings.max_body_bytes)
        extra = {}
        if request.top_p is not None:
            extra["top_p"] = request.top_p
        if request.stop:
            extra["stop_strings"] = [request.stop] if isinstance(request.stop, str) else request.stop
        try:
            serving.engine.generation_kwargs(max_tokens, request.temperature, **extra)
        except ValueError as e:
            raise HTTPException(400, str(e)) from None
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": completion_id, "created": created, "model": model_id}
        schema = request.response_format.schema_or_none() if request.response_format else None
        if schema is not None:
            if request.stream:
                raise HTTPException(400, "response_format json_schema / json_object is not streamed: the object is "
                                         "returned whole (set stream to false)")
            result = await _constrained_answer(serving, document, instruction, schema, max_tokens,
                                               request.temperature, **extra)
            extras = {**_extra(result), "json": result.json, "field_confidence": result.field_confidence,
                      "json_error": result.json_error}
            return {**head, "object": "chat.completion", "choices": [{
                "index": 0, "message": {"role": "assistant", "content": result.answer},
                "finish_reason": result.finish_reason, "logprobs": None,
            }], "usage": _usage(result), "deepsynth": extras}
        if not request.stream:
            try:
                result = await serving.answer(raw, document, instruction, max_tokens, request.temperature, **extra)
            except HTTPException as e:
                raise HTTPException(400 if e.status_code == 422 else e.status_code, e.detail, e.headers) from None
            return {**head, "object": "chat.completion", "choices": [{
                "index": 0, "message": {"role": "assistant", "content": result.answer},
                "finish_reason": result.finish_reason, "logprobs": None,
            }], "usage": _usage(result), "deepsynth": _extra(result)}
        try:
            pieces = await serving.open_stream(document, instruction, max_tokens, request.temperature, **extra)
        except HTTPException as e:
            raise HTTPException(400 if e.status_code == 422 else e.status_code, e.detail, e.headers) from None
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        return StreamingResponse(_chunks(serving, pieces, head, extra.get("stop_strings") or [], include_usage),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _constrained_answer(serving, document, instruction, schema, max_tokens, temperature, **extra):
    """One schema-constrained answer (each schema is its own constraint: not batched), in a worker thread; a bad
    schema is the client's error (400, naming the problem)."""
    with serving.gate.slot():
        try:
            if isinstance(document, str):
                document = DocumentText(document)
            return await run_in_threadpool(serving.engine.generate_json, document, instruction, schema, max_tokens,
                                           temperature, **extra)
        except ValueError as e:
            raise HTTPException(400, f"response_format: {e}") from None


async def _chunks(serving, pieces, head: dict, stops: list[str], include_usage: bool):
    """`chat.completion.chunk` events: the role, the content as it is written (cut before a stop string), the
    finish reason with the `deepsynth` extras, the usage if asked, then `[DONE]`."""

    def chunk(delta: dict, finish=None, **more) -> str:
        body = {**head, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **more}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    # A stop string may arrive split over pieces: hold back its length - 1 characters until it cannot start there.
    hold = max((len(s) for s in stops), default=1) - 1
    text, sent, stopped = "", 0, False
    try:
        yield chunk({"role": "assistant", "content": ""})
        async for piece in serving.pieces_of(pieces):
            if stopped:
                continue  # generation ends at the stop string a token later; nothing more is shown
            text += piece
            cut = min((text.index(s) for s in stops if s in text), default=None)
            end = cut if cut is not None else len(text) - hold
            if end > sent:
                yield chunk({"content": text[sent:end]})
                sent = end
            stopped = cut is not None
        result = pieces.result
        if len(result.answer) > sent:
            yield chunk({"content": result.answer[sent:]})
        yield chunk({}, result.finish_reason, deepsynth=_extra(result))
        if include_usage:
            yield f"data: {json.dumps({**head, 'object': 'chat.completion.chunk', 'choices': [], 'usage': _usage(result)})}\n\n"
    except Exception as e:  # the status line is gone: report in-band, in OpenAI's error shape
        yield f"data: {json.dumps({'error': {'message': str(e), 'type': 'server_error', 'param': None, 'code': None}})}\n\n"
    finally:
        serving.close_stream(pieces)
    yield "data: [DONE]\n\n"
