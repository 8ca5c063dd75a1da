"""The HTTP layer under the OpenAI routes: the API-key and request-id middlewares, CORS, and
reading a request body (size-capped, strict JSON, validated into the route's pydantic model,
every failure a 4xx in the OpenAI error shape)."""

from __future__ import annotations

import hmac
import json
import logging
import math
import uuid
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from pagedlm.entrypoints.openai.errors import OpenAIError, error_body, from_validation_error

logger = logging.getLogger("pagedlm.server")

MAX_BODY_BYTES = 8 * 1024 * 1024
# Paths that stay reachable without the API key (probes and scrapers carry no key).
OPEN_PATHS = frozenset({"/health", "/metrics", "/version", "/ping"})

M = TypeVar("M", bound=BaseModel)


class APIKeyMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware: it would buffer streams and hide disconnects)."""

    def __init__(self, app: Any, api_keys: Sequence[str]) -> None:
        self.app = app
        self.expected = [f"Bearer {key}".encode() for key in api_keys]

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or _route_path(scope) in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        # Every key compared (no early exit), so the time taken does not tell which one matched.
        if sum(hmac.compare_digest(given, expected) for expected in self.expected):
            await self.app(scope, receive, send)
            return
        response = JSONResponse(error_body("Unauthorized: a valid API key is required (Authorization: Bearer "
                                           "<key>).", 401), status_code=401)
        await response(scope, receive, send)


def _route_path(scope: dict) -> str:
    """The path the routes see: behind --root-path a request may still carry the prefix."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


class RequestIdMiddleware:
    """--enable-request-id-headers: every response carries X-Request-Id, the request's own when
    it sent one, else a new one (pure ASGI, so streams are not buffered)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = next((v for k, v in scope["headers"] if k == b"x-request-id"), None) or uuid.uuid4().hex.encode()

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id)]}
            await send(message)

        await self.app(scope, receive, send_with_id)


@dataclass(frozen=True)
class HTTPOptions:
    """Server flags that shape HTTP itself: CORS (vLLM's defaults allow every origin, method and
    header, without credentials) and request-id headers. (--root-path goes to uvicorn.)"""

    allowed_origins: tuple[str, ...] = ("*",)
    allow_credentials: bool = False
    allowed_methods: tuple[str, ...] = ("*",)
    allowed_headers: tuple[str, ...] = ("*",)
    request_id_headers: bool = False


async def read_json_body(request: Request, model: type[M], max_bytes: int) -> M:
    """Read at most ``max_bytes`` (413 beyond), parse strict JSON (no NaN/Infinity) that must
    be an object, and validate it; every failure is a 400 in the OpenAI envelope."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise OpenAIError(f"The request body is larger than {max_bytes} bytes.", 413)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise OpenAIError(f"The request body is larger than {max_bytes} bytes.", 413)
            chunks.append(chunk)
    except ClientDisconnect:
        # Nobody is left to answer; one line, not an ERROR with tracebacks.
        logger.info("Client disconnected while sending the request body of %s %s", request.method,
                    request.url.path)
        raise OpenAIError("The client disconnected before the request body was complete.", 499) from None
    raw = b"".join(chunks)
    try:
        data = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
        if b"\\ud" in raw.lower():  # an escaped surrogate: lone ones cannot become UTF-8 text
            json.dumps(data, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError) as e:  # UnicodeError is a ValueError
        raise OpenAIError(f"The request body is not valid JSON: {e}", 400) from e
    if not isinstance(data, dict):
        raise OpenAIError(f"The request body must be a JSON object, got {type(data).__name__}.", 400)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise from_validation_error(e) from e


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number")


def _finite_float(text: str) -> float:
    # 1e400 parses to inf; no sampling field has a meaning for it.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of the range of a float")
    return value


def add_middleware(app: FastAPI, api_key: str | Sequence[str] | None, http: HTTPOptions) -> None:
    """The API key(s: any one of them opens the API), request ids, then CORS: the last added is
    outermost, so a browser's preflight is answered before the API key is asked for."""
    api_keys = [key for key in ([api_key] if isinstance(api_key, str) else api_key or ()) if key]
    if api_keys:
        app.add_middleware(APIKeyMiddleware, api_keys=api_keys)
    if http.request_id_headers:
        app.add_middleware(RequestIdMiddleware)
    app.add_middleware(CORSMiddleware, allow_origins=list(http.allowed_origins),
                       allow_credentials=http.allow_credentials, allow_methods=list(http.allowed_methods),
                       allow_headers=list(http.allowed_headers))
