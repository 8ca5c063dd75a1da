"""The OpenAI-compatible HTTP server: FastAPI app over an AsyncLLM, run by uvicorn.

The API process does the text work; the engine cores run in their own processes (see
pagedlm/engine/async_llm.py). ``build_app`` makes the app from a ready engine (tests use it
with starlette's TestClient); ``run_server`` builds the engine from CLI args and serves until
SIGINT/SIGTERM (a graceful drain) or until an engine core dies (exit code 1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import math
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Sequence, TypeVar

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from pagedlm.engine.async_llm import AsyncLLM, RequestFailedError
from pagedlm.engine.core_client import EngineStartupError
from pagedlm.engine.gc_heap import freeze_startup_heap
from pagedlm.entrypoints.openai.chat_utils import render_chat
from pagedlm.entrypoints.openai.errors import (
    OpenAIError,
    error_body,
    from_validation_error,
    install_error_handlers,
)
from pagedlm.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from pagedlm.entrypoints.openai.serving_chat import OpenAIServingChat
from pagedlm.entrypoints.openai.serving_common import require_tokenizer
from pagedlm.entrypoints.openai.serving_completion import OpenAIServingCompletion
from pagedlm.entrypoints.openai.serving_responses import OpenAIServingResponses, ResponsesRequest
from pagedlm.entrypoints.openai.tool_calling import ServingOptions
from pagedlm.entrypoints.openai.serving_embedding import EmbeddingRequest, OpenAIServingEmbedding, PoolingRequest
from pagedlm.entrypoints.openai.serving_score import OpenAIServingScore, RerankRequest, ScoreRequest
from pagedlm.entrypoints.openai.serving_classification import ClassificationRequest, OpenAIServingClassification
from pagedlm.entrypoints.openai.serving_sleep import add_sleep_routes, server_dev_mode
from pagedlm.entrypoints.openai.serving_lora import (
    adapter_cards,
    add_lora_routes,
    build_lora_modules,
    runtime_updating_allowed,
)
from pagedlm.lora.registry import LoRAModules
from pagedlm.metrics import CONTENT_TYPE_LATEST, PrometheusStatLogger
from pagedlm.version import __version__

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


def build_app(engine: AsyncLLM, stat_logger: PrometheusStatLogger | None = None,
              api_key: str | Sequence[str] | None = None,
              served_model_names: list[str] | None = None, max_body_bytes: int = MAX_BODY_BYTES,
              serving_options: ServingOptions | None = None, disable_docs: bool = False,
              lora_modules: LoRAModules | None = None, http: HTTPOptions | None = None) -> FastAPI:
    names = served_model_names or list(engine.model_config.served_model_names) or [
        engine.model_config.served_model_name]
    if lora_modules is None:
        lora_modules = build_lora_modules(None, engine.config, names)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        app.state.loop = asyncio.get_running_loop()  # for signal handlers (GracefulServer)
        engine.start()
        yield
        engine.shutdown()

    docs: dict[str, Any] = {"docs_url": None, "redoc_url": None, "openapi_url": None} if disable_docs else {}
    app = FastAPI(title="pagedlm OpenAI-compatible server", version=__version__, lifespan=lifespan, **docs)
    install_error_handlers(app)
    _add_middleware(app, api_key, http or HTTPOptions())
    app.state.engine = engine
    app.state.stat_logger = stat_logger
    completions = OpenAIServingCompletion(engine, names)
    chat = OpenAIServingChat(engine, names)
    responses = OpenAIServingResponses(engine, names)
    completions.options = chat.options = responses.options = serving_options or ServingOptions()
    for serving in (completions, chat, responses):
        serving.lora_modules = lora_modules

    @app.post("/v1/completions")
    async def create_completion(request: Request) -> Response:
        body = await read_json_body(request, CompletionRequest, max_body_bytes)
        return await completions.create_completion(body, request)

    @app.post("/v1/chat/completions")
    async def create_chat_completion(request: Request) -> Response:
        body = await read_json_body(request, ChatCompletionRequest, max_body_bytes)
        return await chat.create_chat_completion(body, request)

    @app.post("/v1/responses")
    async def create_response(request: Request) -> Response:
        body = await read_json_body(request, ResponsesRequest, max_body_bytes)
        return await responses.create_response(body, request)

    _add_pooling_routes(app, engine, names, max_body_bytes, chat.options)
    _add_info_routes(app, engine, names, stat_logger, lora_modules)
    add_lora_routes(app, lora_modules, lambda request, model: read_json_body(request, model, max_body_bytes))
    _add_tokenizer_routes(app, engine, names, max_body_bytes, chat.options.chat_template_content_format)
    if server_dev_mode():  # /sleep, /wake_up, /is_sleeping (vLLM's VLLM_SERVER_DEV_MODE routes)
        add_sleep_routes(app, engine)
    return app


def _add_pooling_routes(app: FastAPI, engine: AsyncLLM, names: list[str], max_body_bytes: int,
                        options: ServingOptions) -> None:
    """The pooling models' endpoints: /v1/embeddings, /pooling, /classify, and /score, /rerank
    (a cross-encoder's scores, or embedding cosines)."""
    embeddings = OpenAIServingEmbedding(engine, names)
    scores = OpenAIServingScore(engine, names)
    classification = OpenAIServingClassification(engine, names)
    embeddings.options = scores.options = classification.options = options  # the chat template's content format

    @app.post("/classify")
    @app.post("/v1/classify")
    async def create_classify(request: Request) -> Response:
        body = await read_json_body(request, ClassificationRequest, max_body_bytes)
        return await classification.create_classify(body, request)

    @app.post("/v1/embeddings")
    async def create_embedding(request: Request) -> Response:
        body = await read_json_body(request, EmbeddingRequest, max_body_bytes)
        return await embeddings.create_embedding(body, request)

    @app.post("/pooling")
    async def create_pooling(request: Request) -> Response:
        body = await read_json_body(request, PoolingRequest, max_body_bytes)
        return await embeddings.create_pooling(body, request)

    @app.post("/score")
    @app.post("/v1/score")
    async def create_score(request: Request) -> Response:
        body = await read_json_body(request, ScoreRequest, max_body_bytes)
        return await scores.create_score(body, request)

    @app.post("/rerank")
    @app.post("/v1/rerank")
    @app.post("/v2/rerank")  # Cohere's v2 client (as vLLM)
    async def create_rerank(request: Request) -> Response:
        body = await read_json_body(request, RerankRequest, max_body_bytes)
        return await scores.create_rerank(body, request)


def _add_middleware(app: FastAPI, api_key: str | Sequence[str] | None, http: HTTPOptions) -> None:
    """The API key(s: any one of them opens the API), request ids, then CORS: the last added is
    outermost, so a browser's preflight is answered before the API key is asked for."""
    api_keys = [key for key in ([api_key] if isinstance(api_key, str) else api_key or ()) if key]
    if api_keys:
        app.add_middleware(APIKeyMiddleware, api_keys=api_keys)
    if http.request_id_headers:
        app.add_middleware(RequestIdMiddleware)
    app.add_middleware(CORSMiddleware, allow_origins=list(http.allowed_origins), allow_credentials=http.allow_credentials,
                       allow_methods=list(http.allowed_methods), allow_headers=list(http.allowed_headers))


def _add_info_routes(app: FastAPI, engine: AsyncLLM, names: list[str],
                     stat_logger: PrometheusStatLogger | None, lora_modules: LoRAModules) -> None:
    created = int(time.time())

    def card(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": created, "owned_by": "pagedlm",
                "root": engine.model_config.model, "parent": None, "max_model_len": engine.model_config.max_model_len}

    @app.get("/v1/models")
    async def show_models() -> dict[str, Any]:
        return {"object": "list", "data": [card(name) for name in names] + adapter_cards(lora_modules, names[0], card)}

    @app.get("/v1/models/{model_id:path}")
    async def show_model(model_id: str) -> dict[str, Any]:
        # :path, because served names are often paths or org/name ids with slashes.
        if model_id in lora_modules.by_name:
            return next(c for c in adapter_cards(lora_modules, names[0], card) if c["id"] == model_id)
        if model_id not in names:
            raise OpenAIError(f"The model `{model_id}` does not exist.", 404, "model")
        return card(model_id)

    @app.get("/health")
    async def health() -> Response:
        if engine.is_dead:
            return JSONResponse(error_body("The engine has failed; restart the server.", 503), status_code=503)
        return Response(status_code=200)

    @app.get("/ping")
    async def ping() -> Response:
        return await health()

    @app.get("/metrics")
    async def metrics() -> Response:
        body = stat_logger.render() if stat_logger is not None else b""
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": __version__}


def _add_tokenizer_routes(app: FastAPI, engine: AsyncLLM, names: list[str], max_body_bytes: int,
                          content_format: str) -> None:
    tokenizer = engine.tokenizer  # used on the engine's tokenizer thread only
    max_model_len = engine.model_config.max_model_len
    vocab_size = engine.model_config.vocab_size

    def check_model(model: str | None) -> None:
        if model and model not in names:
            raise OpenAIError(f"The model `{model}` does not exist.", 404, "model")

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict[str, Any]:
        body = await read_json_body(request, TokenizeRequest, max_body_bytes)
        check_model(body.model)
        require_tokenizer(tokenizer, "/tokenize")
        return await engine.run_in_tokenizer(_tokenize, tokenizer, body, max_model_len, content_format)

    @app.post("/detokenize")
    async def detokenize(request: Request) -> dict[str, Any]:
        body = await read_json_body(request, DetokenizeRequest, max_body_bytes)
        check_model(body.model)
        require_tokenizer(tokenizer, "/detokenize")
        bad = [t for t in body.tokens if not 0 <= t < vocab_size]
        if bad:
            raise OpenAIError(f"Token ids {bad[:5]} are out of vocabulary (size {vocab_size}).", 400, "tokens")
        return {"prompt": await engine.run_in_tokenizer(tokenizer.decode, body.tokens)}


def _tokenize(tokenizer: Any, body: TokenizeRequest, max_model_len: int, content_format: str) -> dict[str, Any]:
    if body.messages is not None:
        _, tokens = render_chat(tokenizer, body.messages, body.add_generation_prompt,
                                body.continue_final_message, body.tools, body.chat_template_kwargs,
                                add_special_tokens=bool(body.add_special_tokens), content_format=content_format)
    else:
        add_special = True if body.add_special_tokens is None else body.add_special_tokens
        tokens = tokenizer.encode(body.prompt, add_special_tokens=add_special) if body.prompt else []
    result: dict[str, Any] = {"count": len(tokens), "max_model_len": max_model_len, "tokens": tokens}
    if body.return_token_strs:
        result["token_strs"] = tokenizer.convert_ids_to_tokens(tokens)
    return result


# ---------------------------------------------------------------------- CLI entry


def bind_socket(host: str, port: int, reuse_port: bool = False, listen: bool = True) -> socket.socket:
    """Bind before loading the model, so a busy port fails in a second, not after the load.
    ``reuse_port``: one of a pool's sockets on the same port (SO_REUSEPORT: the kernel spreads
    new connections evenly over the listening ones); the pool's launcher binds without
    listening, to hold the port and fail early, and takes no connections."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as e:
        raise ServerStartError(f"cannot listen on {host}:{port}: {e.strerror or e}. Give --host an address or name "
                               "of this machine (0.0.0.0 for all of them).") from e
    try:
        if not reuse_port:
            return socket.create_server((host, port), family=family)
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            if listen:
                sock.listen(2048)
        except OSError:
            sock.close()
            raise
        return sock
    except OSError as e:
        raise ServerStartError(f"cannot listen on {host}:{port}: {e.strerror or e}. Pick another --port.") from e


def bind_unix_socket(path: str) -> socket.socket:
    """--uds: listen on a Unix domain socket (the file keeps the process umask's permissions);
    an existing file at the path is an error, not replaced."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise ServerStartError(f"cannot listen on unix:{path}: {e.strerror or e}. Remove the stale socket file "
                               "or pick another --uds.") from e
    return sock


def _close(sock: socket.socket, uds: str | None) -> None:
    sock.close()
    if uds:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(uds)


class ServerStartError(RuntimeError):
    """The server cannot start as configured; the message says what to change."""


class GracefulServer:
    """uvicorn, with vLLM-style lifecycle on top:

    - SIGTERM / Ctrl-C: refuse new requests (503), let unfinished ones run up to the grace
      period, then abort the rest (their clients get the error event and ``[DONE]``; the log
      gets one line per aborted request) and exit 0. A second signal exits at once.
    - An engine core that dies: in-flight requests have already failed; the server stops and
      the process exits 1, so a supervisor restarts it.
    """

    def __init__(self, config: Any, app: FastAPI, engine: AsyncLLM, grace_period_s: float) -> None:
        import uvicorn

        outer = self

        class _Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: Any) -> None:  # runs in the signal handler
                loop = getattr(app.state, "loop", None)
                if outer.draining or loop is None:
                    super().handle_exit(sig, frame)
                else:
                    outer.draining = True
                    loop.call_soon_threadsafe(outer.start_drain)

        self.server = _Server(config)
        self.engine = engine
        self.grace_period_s = grace_period_s
        self.draining = False
        self.exit_code = 0
        engine.on_dead.append(self._on_engine_dead)

    def run(self, sock: socket.socket) -> int:
        self.server.run(sockets=[sock])
        return self.exit_code

    def start_drain(self) -> None:
        self.engine.draining = True
        logger.info("Shutting down: no new requests; waiting up to %.1fs for %d unfinished request(s)",
                    self.grace_period_s, self.engine.num_unfinished_requests)
        asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.grace_period_s
        while self.engine.num_unfinished_requests and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        error = RequestFailedError("The server is shutting down; the request was aborted.", status=503)
        for request_id in self.engine.abort_all(error):
            logger.warning("Aborted request %s: the server is shutting down", request_id)
        await asyncio.sleep(0)  # let the aborted streams write their last events
        self.server.should_exit = True

    def _on_engine_dead(self, error: BaseException) -> None:
        logger.error("The engine is dead (%s); the server exits", error)
        self.exit_code = 1
        self.server.should_exit = True


@dataclass
class ServerSetup:
    """Everything ``pagedlm serve`` checked before taking the port or loading the model."""

    server_args: Any  # ServerArgs
    engine_args: Any  # ServerEngineArgs
    engine_config: Any  # EngineConfig
    options: ServingOptions
    lora_modules: LoRAModules

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace, notices: bool = True) -> ServerSetup:
        """Every option is checked here; a bad one raises ServerStartError (the user's to fix).
        ``notices``: log the no-effect notices of the flags (once per server, not per process)."""
        from pagedlm.engine_args import ServerEngineArgs
        from pagedlm.entrypoints.server_args import ServerArgs

        try:
            server_args = ServerArgs.from_cli_args(args, notices)
            engine_args = ServerEngineArgs.from_cli_args(args)
            engine_config = engine_args.create_engine_config()
            options = ServingOptions(server_args.enable_auto_tool_choice, server_args.tool_call_parser,
                                     engine_config.structured_outputs_config.reasoning_parser,
                                     server_args.chat_template_content_format,
                                     server_args.response_role, server_args.enable_force_include_usage,
                                     server_args.return_tokens_as_token_ids)
            options.check()
            lora_modules = build_lora_modules(server_args.lora_modules, engine_config,
                                              engine_args.served_model_names())
        except ValueError as e:  # ConfigError: the user's to fix
            raise ServerStartError(str(e)) from e
        if server_args.api_server_count > 1 and engine_config.lora_config is not None and runtime_updating_allowed():
            raise ServerStartError("runtime LoRA updating (/v1/load_lora_adapter) needs --api-server-count 1: each "
                                   "API server process would keep its own list of adapters")
        return cls(server_args, engine_args, engine_config, options, lora_modules)

    def bind(self, pool: bool = False, listen: bool = True) -> socket.socket:
        """The server's socket; ``pool``: one of an API server pool's (see bind_socket)."""
        a = self.server_args
        return bind_unix_socket(a.uds) if a.uds else bind_socket(a.host, a.port, reuse_port=pool, listen=listen)

    def close(self, sock: socket.socket, owner: bool = True) -> None:
        """Close the listening socket; its owner (the process that bound it) also removes a --uds file."""
        _close(sock, self.server_args.uds if owner else None)


def run_server(args: argparse.Namespace) -> None:
    """Bind, start the engine cores (minutes for a big model), then serve until interrupted.
    With ``--api-server-count`` N > 1, N API server processes share the port
    (api_server_pool.py)."""
    from prometheus_client import disable_created_metrics

    disable_created_metrics()  # vLLM does too: the *_created series only add noise
    setup = ServerSetup.from_cli_args(args)
    setup.engine_args.log_notices()
    pool = setup.server_args.api_server_count > 1
    sock = setup.bind(pool, listen=not pool)
    if pool:
        from pagedlm.entrypoints.openai.api_server_pool import run_api_server_pool

        try:
            exit_code = run_api_server_pool(args, setup, sock)
        finally:
            setup.close(sock)
        if exit_code:
            sys.exit(exit_code)
        return
    try:
        engine = AsyncLLM.from_engine_args(setup.engine_args, data_parallel_size=setup.engine_args.data_parallel_size)
    except (ValueError, EngineStartupError) as e:  # bad model path, KV cache too small
        setup.close(sock)
        raise startup_error(e) from e
    serve_on(setup, engine, sock, metrics=PrometheusStatLogger)


def startup_error(e: BaseException) -> BaseException:
    """A core's start-up failure as the server reports it: the user's to fix (one line), or
    the error itself (a traceback) when it is a bug."""
    if isinstance(e, EngineStartupError) and not e.user_error:
        return e
    return ServerStartError(str(e))


def serve_on(setup: ServerSetup, engine: AsyncLLM, sock: socket.socket, metrics: Any, owner: bool = True) -> None:
    """Serve ``engine``'s API on ``sock`` until interrupted or the engine dies (then exit 1).
    ``metrics(model_name, prefix=..., engine_config=...)`` makes the stat logger. ``owner``:
    this process bound the socket (a pool's API servers did not: they neither announce it nor
    remove a --uds file)."""
    import uvicorn

    server_args = setup.server_args
    names = list(engine.model_config.served_model_names) or [engine.model_config.served_model_name]
    engine.stat_logger = metrics(names[0], prefix=server_args.metrics_prefix + ":", engine_config=setup.engine_config)
    http = HTTPOptions(tuple(server_args.allowed_origins), server_args.allow_credentials,
                       tuple(server_args.allowed_methods), tuple(server_args.allowed_headers),
                       server_args.enable_request_id_headers)
    app = build_app(engine, engine.stat_logger, api_key=server_args.api_key, served_model_names=names,
                    serving_options=setup.options, disable_docs=server_args.disable_fastapi_docs,
                    lora_modules=setup.lora_modules, http=http)
    if owner:
        where = (f"unix:{server_args.uds}" if server_args.uds else
                 f"{'https' if server_args.ssl_certfile else 'http'}://{server_args.host}:{server_args.port}")
        logger.info("Serving model %r on %s (OpenAI-compatible API under /v1)", names[0], where)
    freeze_startup_heap()  # the server process hosts this engine's frontend for its life (gc_heap.py)
    config = uvicorn.Config(app, host=server_args.host, port=server_args.port,
                            ssl_keyfile=server_args.ssl_keyfile, ssl_certfile=server_args.ssl_certfile,
                            ssl_ca_certs=server_args.ssl_ca_certs, ssl_cert_reqs=server_args.ssl_cert_reqs,
                            root_path=server_args.root_path or "",
                            log_level=server_args.uvicorn_log_level,
                            access_log=not server_args.disable_uvicorn_access_log, timeout_keep_alive=5,
                            timeout_graceful_shutdown=5)
    server = GracefulServer(config, app, engine, server_args.shutdown_grace_period)
    try:
        exit_code = server.run(sock)
    finally:
        engine.shutdown()
        setup.close(sock, owner)
    logger.info("Server stopped")
    if exit_code:
        sys.exit(exit_code)


if __name__ == "__main__":
    # vLLM users start the server as ``python -m vllm.entrypoints.openai.api_server --model M
    # [flags]``; the same line with pagedlm is ``pagedlm serve`` (MODEL positional or --model).
    from pagedlm.entrypoints.cli import serve_main

    serve_main(sys.argv[1:], prog="python -m pagedlm.entrypoints.openai.api_server")
