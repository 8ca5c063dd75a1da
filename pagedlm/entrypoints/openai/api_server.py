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
import logging
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from pagedlm.engine.async_llm import AsyncLLM
from pagedlm.engine.core_client import EngineStartupError
from pagedlm.engine.gc_heap import freeze_startup_heap
from pagedlm.entrypoints.openai.chat_utils import render_chat
from pagedlm.entrypoints.openai.errors import OpenAIError, error_body, install_error_handlers
from pagedlm.entrypoints.openai.http_middleware import MAX_BODY_BYTES, HTTPOptions, add_middleware, read_json_body
from pagedlm.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from pagedlm.entrypoints.openai.serving_chat import OpenAIServingChat
from pagedlm.entrypoints.openai.serving_common import require_tokenizer
from pagedlm.entrypoints.openai.serving_completion import OpenAIServingCompletion
from pagedlm.entrypoints.openai.server_lifecycle import (
    GracefulServer,
    ServerStartError,
    bind_socket,
    bind_unix_socket,
    close_socket,
)
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
from pagedlm.models.loader.gguf import is_gguf_file
from pagedlm.version import __version__

logger = logging.getLogger("pagedlm.server")

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
    add_middleware(app, api_key, http or HTTPOptions())
    app.state.engine = engine
    app.state.stat_logger = stat_logger
    completions = OpenAIServingCompletion(engine, names)
    chat = OpenAIServingChat(engine, names)
    responses = OpenAIServingResponses(engine, names)
    completions.options = chat.options = responses.options = serving_options or ServingOptions()
    for serving in (completions, chat, responses):
        serving.lora_modules = lora_modules

    _json_route(app, ["/v1/completions"], CompletionRequest, completions.create_completion, max_body_bytes)
    _json_route(app, ["/v1/chat/completions"], ChatCompletionRequest, chat.create_chat_completion, max_body_bytes)
    _json_route(app, ["/v1/responses"], ResponsesRequest, responses.create_response, max_body_bytes)
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

    _json_route(app, ["/classify", "/v1/classify"], ClassificationRequest, classification.create_classify,
                max_body_bytes)
    _json_route(app, ["/v1/embeddings"], EmbeddingRequest, embeddings.create_embedding, max_body_bytes)
    _json_route(app, ["/pooling"], PoolingRequest, embeddings.create_pooling, max_body_bytes)
    _json_route(app, ["/score", "/v1/score"], ScoreRequest, scores.create_score, max_body_bytes)
    # /v2/rerank: Cohere's v2 client (as vLLM)
    _json_route(app, ["/rerank", "/v1/rerank", "/v2/rerank"], RerankRequest, scores.create_rerank, max_body_bytes)


def _json_route(app: FastAPI, paths: list[str], body_model: type, handler: Callable[..., Awaitable[Response]],
                max_body_bytes: int) -> None:
    """POST ``paths`` -> ``handler(body, request)``, the body read and validated into
    ``body_model`` first (read_json_body: a 4xx in the OpenAI shape when it is not one)."""

    async def endpoint(request: Request) -> Response:
        return await handler(await read_json_body(request, body_model, max_body_bytes), request)

    for path in paths:
        app.add_api_route(path, endpoint, methods=["POST"], name=handler.__name__)


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
        close_socket(sock, self.server_args.uds if owner else None)


def core_preload(model: str | None) -> tuple[str, ...]:
    """Modules an engine core of ``model`` imports beyond ``process_context.PRELOAD``: a GGUF
    model's loader builds a weightless HF model of the config (to map llama.cpp's tensor
    names), which needs ``transformers.modeling_utils`` (1.1 s of a 2-core host that the core
    would pay after its fork, and a directory checkpoint's core never needs)."""
    return ("transformers.modeling_utils",) if model and is_gguf_file(model) else ()


def run_server(args: argparse.Namespace) -> None:
    """Bind, start the engine cores (minutes for a big model), then serve until interrupted.
    With ``--api-server-count`` N > 1, N API server processes share the port
    (api_server_pool.py)."""
    from prometheus_client import disable_created_metrics

    from pagedlm import process_context

    # On CPU the engine core forks from a forkserver: start it now, so that its imports run
    # beside the checks and config loading below.
    process_context.start_early(getattr(args, "device", "auto"), core_preload(getattr(args, "model", None)))
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
        engine = AsyncLLM.from_engine_args(setup.engine_args)
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
