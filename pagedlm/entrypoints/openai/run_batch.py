"""``pagedlm run-batch``: vLLM's OpenAI batch runner.

Reads a JSONL file of OpenAI batch requests (``{"custom_id", "method", "url", "body"}`` per
line), runs them concurrently through one engine and writes one result line per request, in
input order, in vLLM's shape::

    {"id": "vllm-<hex>", "custom_id": ..., "response": {"status_code": 200,
     "request_id": "vllm-batch-<hex>", "body": {...}}, "error": null}

Each body goes through the in-process server app (``build_app``) as an HTTP request would, so
it is validated and answered exactly as ``pagedlm serve`` answers it. A request that fails
(a bad body, an endpoint the model does not serve, ``"stream": true``) gets its error in its
own line; the batch goes on. A line that is not a batch request at all (not JSON, no
``custom_id``) stops the run before the model loads, naming the line (vLLM stops too).
Also runs as ``python -m pagedlm.entrypoints.openai.run_batch``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any, TextIO

from pagedlm.arg_utils import opt

logger = logging.getLogger("pagedlm.run_batch")

BATCH, METRICS = "Batch files", "Metrics"
# As vLLM's text progress bar: one plain line per update (safe under log collectors).
_BAR_FORMAT = "{desc}: {percentage:3.0f}% Completed | {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]\n"
SUPPORTED_ENDPOINTS = "/v1/chat/completions, /v1/embeddings, /score, /rerank"
# ServerArgs' flags that run-batch takes too (the chat and logging options, as vLLM's batch
# runner's frontend arguments); the HTTP ones (--host, --api-key, TLS, CORS, ...) do not apply.
SERVER_FLAGS_TAKEN = ("response_role", "chat_template_content_format", "tool_call_parser", "enable_auto_tool_choice",
                      "enable_force_include_usage", "return_tokens_as_token_ids", "enable_prompt_tokens_details",
                      "lora_modules", "enable_log_requests", "disable_log_requests", "max_log_len",
                      "enable_log_outputs", "disable_frontend_multiprocessing", "metrics_prefix")
UPLOAD_ATTEMPTS, UPLOAD_RETRY_DELAY_S = 5, 5.0  # vLLM's


@dataclass
class RunBatchArgs:
    input_file: str | None = opt(None, "the batch: a local JSONL file, or an http(s) URL to GET it from (required)", BATCH,
                                 flags=("-i",))
    output_file: str | None = opt(None, "where the results go: a local file, or an http(s) URL to PUT them to (required)",
                                  BATCH, flags=("-o",))
    output_tmp_dir: str | None = opt(None, "directory for the results before they are uploaded to an http(s) "
                                     "--output-file (default: the system's temporary directory)", BATCH)
    enable_metrics: bool = opt(False, "serve Prometheus metrics at http://HOST:PORT/metrics while the batch runs",
                               METRICS)
    host: str | None = opt(None, "address of the metrics server (default: --url)", METRICS)
    url: str = opt("0.0.0.0", "vLLM's older name of --host", METRICS)
    port: int = opt(8000, "port of the metrics server", METRICS)


class BatchError(RuntimeError):
    """The batch cannot run as given; the message says what to change."""


@dataclass(frozen=True)
class BatchLine:
    """One request of the input file (the body is checked later, by the server app)."""

    line_no: int
    custom_id: str
    method: str
    url: str
    body: Any


# ---------------------------------------------------------------------- arguments


def make_parser(prog: str = "pagedlm run-batch") -> argparse.ArgumentParser:
    from pagedlm.arg_utils import add_dataclass_args, add_vllm_only_args
    from pagedlm.engine_args import EngineArgs
    from pagedlm.entrypoints.server_args import ServerArgs
    from pagedlm.flexible_args import FlexibleArgumentParser

    parser = FlexibleArgumentParser(
        prog=prog, usage=f"{prog} -i INPUT.jsonl -o OUTPUT.jsonl --model MODEL [options]",
        description="Run a file of OpenAI batch requests (/v1/chat/completions, /v1/embeddings, /score, /rerank) "
                    "through one engine and write one result line per request, as `vllm run-batch` does. Engine "
                    "flags are `pagedlm serve`'s; without --model, serve's default model is used.")
    groups: dict = {}
    add_dataclass_args(parser, RunBatchArgs, groups)
    for flag in ("--input-file", "--output-file"):
        parser._option_string_actions[flag].required = True
    server_only = tuple(f for f in ServerArgs.__dataclass_fields__ if f not in SERVER_FLAGS_TAKEN)
    add_dataclass_args(parser, ServerArgs, groups, skip=server_only + ("host", "port"))
    EngineArgs.add_cli_args(parser, groups)
    add_vllm_only_args(parser, server=False)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    from pagedlm.arg_utils import take_vllm_only_args
    from pagedlm.config import ConfigError
    from pagedlm.engine_args import EngineArgs

    parser = make_parser()
    values = vars(parser.parse_args(argv))
    try:
        take_vllm_only_args(values, set(EngineArgs.__dataclass_fields__))
    except ConfigError as e:
        parser.error(str(e))
    return argparse.Namespace(**values)


# ---------------------------------------------------------------------- input


def is_url(path: str) -> bool:
    return path.startswith(("http://", "https://"))


def read_input(path_or_url: str) -> list[BatchLine]:
    """Every request of the file; blank lines are skipped (as vLLM does)."""
    if is_url(path_or_url):
        try:
            with urllib.request.urlopen(path_or_url, timeout=300) as resp:
                text = resp.read().decode("utf-8")
        except (urllib.error.URLError, OSError) as e:
            raise BatchError(f"cannot GET the input file {path_or_url}: {e}") from e
    else:
        try:
            with open(path_or_url, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise BatchError(f"cannot read the input file {path_or_url!r}: {e}") from e
    return [parse_line(raw, line_no, path_or_url) for line_no, raw in enumerate(text.splitlines(), 1) if raw.strip()]


def parse_line(raw: str, line_no: int, source: str) -> BatchLine:
    """A line of the batch; one that is no batch request stops the run (vLLM's does too)."""
    where = f"{source} line {line_no}"
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise BatchError(f"{where} is not valid JSON ({e}); each line must be one JSON object") from e
    if not isinstance(data, dict):
        raise BatchError(f"{where} must be a JSON object, got {type(data).__name__}")
    for key in ("custom_id", "method", "url"):
        if not isinstance(data.get(key), str):
            problem = "is missing" if key not in data else f"must be a string, got {type(data[key]).__name__}"
            raise BatchError(f'{where}: "{key}" {problem} (a line is {{"custom_id": ..., "method": "POST", '
                             '"url": ..., "body": {...}})')
    if "body" not in data:
        raise BatchError(f'{where}: "body" is missing (the request\'s JSON body)')
    extra = sorted(set(data) - {"custom_id", "method", "url", "body"})
    if extra:
        logger.warning("%s: unknown keys %s are not used", where, extra)
    return BatchLine(line_no, data["custom_id"], data["method"], data["url"], data["body"])


# ---------------------------------------------------------------------- output


def random_uuid() -> str:
    return uuid.uuid4().hex


def result_line(custom_id: str, status: int, body: Any = None, error: Any = None) -> dict[str, Any]:
    """vLLM's BatchRequestOutput: the response body on success, else the error (the server's
    error envelope, or a message) with a null body."""
    return {"id": f"vllm-{random_uuid()}", "custom_id": custom_id,
            "response": {"status_code": status, "request_id": f"vllm-batch-{random_uuid()}", "body": body},
            "error": error}


class OrderedWriter:
    """Writes results in input order as they finish: a result waits only for the ones before it."""

    def __init__(self, file: TextIO) -> None:
        self.file = file
        self.next_index = 0
        self.waiting: dict[int, dict[str, Any]] = {}

    def add(self, index: int, result: dict[str, Any]) -> None:
        self.waiting[index] = result
        while self.next_index in self.waiting:
            self.file.write(json.dumps(self.waiting.pop(self.next_index), ensure_ascii=False) + "\n")
            self.next_index += 1


def open_output(output: str, tmp_dir: str | None) -> TextIO:
    """The local output file, or (for an http(s) URL) a temporary file uploaded at the end."""
    try:
        if is_url(output):
            return tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=tmp_dir, prefix="tmp_batch_output_",
                                               suffix=".jsonl", delete=False)
        return open(output, "w", encoding="utf-8")
    except OSError as e:
        raise BatchError(f"cannot write the output file {output!r}: {e}") from e


def check_output(output: str, tmp_dir: str | None) -> None:
    """Before the model loads: the results will have somewhere to go."""
    if is_url(output):
        if tmp_dir is not None and not os.path.isdir(tmp_dir):
            raise BatchError(f"--output-tmp-dir {tmp_dir!r} is not a directory")
        return
    if tmp_dir is not None:
        logger.warning("--output-tmp-dir has no effect: the results are written straight to the local file %s",
                       output)
    parent = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise BatchError(f"cannot write the output file {output!r}: {parent} is not a writable directory")


def upload(url: str, path: str) -> None:
    """PUT the results file to ``url``, retrying as vLLM does (uploads of big files time out)."""
    for attempt in range(1, UPLOAD_ATTEMPTS + 1):
        try:
            with open(path, "rb") as f:
                request = urllib.request.Request(url, data=f.read(), method="PUT",
                                                 headers={"Content-Type": "application/jsonl"})
            with urllib.request.urlopen(request, timeout=1000) as resp:
                if resp.status == 200:
                    return
                error = f"status {resp.status}"
        except (urllib.error.URLError, OSError) as e:
            error = str(e)
        if attempt == UPLOAD_ATTEMPTS:
            raise BatchError(f"cannot PUT the results to {url} ({error}); they are kept in {path}")
        logger.error("Upload attempt %d to %s failed (%s); retrying in %.0f s", attempt, url, error,
                     UPLOAD_RETRY_DELAY_S)
        time.sleep(UPLOAD_RETRY_DELAY_S)


# ---------------------------------------------------------------------- running


def endpoint_for(url: str, runner: str) -> tuple[str | None, str | None]:
    """(the app's path for a line's url, None), or (None, the line's error). vLLM's matching:
    exact for chat and embeddings, any url ending in /score or /rerank."""
    if url in ("/v1/chat/completions", "/v1/embeddings"):
        path, needs_pooling = url, url == "/v1/embeddings"
    elif url.endswith(("/score", "/rerank")):
        path, needs_pooling = "/v1/" + url.rsplit("/", 1)[1], True
    else:
        return None, f"URL {url} was used. Supported endpoints: {SUPPORTED_ENDPOINTS}."
    if needs_pooling != (runner == "pooling"):
        return None, f"Model does not support endpoint: {url}"
    return path, None


async def run_line(client: Any, line: BatchLine, runner: str) -> dict[str, Any]:
    """One request through the in-process app, as an HTTP client would send it."""
    path, error = endpoint_for(line.url, runner)
    if error is None and line.method.upper() != "POST":
        error = f"Method {line.method} was used; batch requests must be POST."
    if error is None and isinstance(line.body, dict) and line.body.get("stream") is True:
        error = "Request must not be sent in stream mode"
    if error is not None:
        return result_line(line.custom_id, 400, error=error)
    try:
        resp = await client.post(path, content=json.dumps(line.body).encode(),
                                 headers={"content-type": "application/json"})
    except Exception as e:  # noqa: BLE001 - the app answers its own errors; this is the last net
        logger.exception("Request %r (line %d) failed", line.custom_id, line.line_no)
        return result_line(line.custom_id, 500, error=f"{type(e).__name__}: {e}")
    if resp.headers.get("content-type", "").startswith("text/event-stream"):  # "stream": "true" and the like
        return result_line(line.custom_id, 400, error="Request must not be sent in stream mode")
    if resp.status_code == 200:
        return result_line(line.custom_id, 200, body=resp.json())
    return result_line(line.custom_id, resp.status_code, error=resp.json())


async def run_batch(engine: Any, setup: Any, lines: list[BatchLine], out: TextIO) -> int:
    """Every line through one engine, at most 2 x max_num_seqs at a time (as vLLM), results
    written in input order as they finish. Returns the number of lines that got an error."""
    import httpx
    from tqdm import tqdm

    from pagedlm.entrypoints.openai.api_server import build_app

    names = list(engine.model_config.served_model_names) or [engine.model_config.served_model_name]
    app = build_app(engine, engine.stat_logger, served_model_names=names, serving_options=setup.options,
                    disable_docs=True, lora_modules=setup.lora_modules)
    engine.start()  # what the app's lifespan does; the transport below runs no lifespan
    writer = OrderedWriter(out)
    limit = asyncio.Semaphore(2 * engine.config.scheduler_config.max_num_seqs)
    num_errors = 0
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://run-batch", timeout=None) as client:
            with tqdm(total=len(lines), unit="req", desc="Running batch", mininterval=5,
                      bar_format=_BAR_FORMAT) as bar:

                async def one(index: int, line: BatchLine) -> None:
                    nonlocal num_errors
                    try:
                        result = await run_line(client, line, engine.model_config.runner)
                    finally:
                        limit.release()
                    num_errors += result["error"] is not None
                    writer.add(index, result)
                    bar.update()

                tasks = []
                start = time.perf_counter()
                for index, line in enumerate(lines):
                    await limit.acquire()
                    tasks.append(asyncio.create_task(one(index, line)))
                await asyncio.gather(*tasks)
                logger.info("Ran %d request(s) in %.2f s (the model loaded before)", len(lines),
                            time.perf_counter() - start)
    finally:
        engine.shutdown()
    return num_errors


# ---------------------------------------------------------------------- entry


def start_metrics_server(args: argparse.Namespace, setup: Any) -> Any:
    """--enable-metrics: the engine's Prometheus series on HOST:PORT (before the model loads,
    so a busy port fails at once). Returns the stat logger, or None."""
    given = [f"--{name}" for name in ("host", "url", "port") if name in vars(args)]
    if not getattr(args, "enable_metrics", False):
        if given:
            logger.warning("%s %s no effect without --enable-metrics", ", ".join(given),
                           "has" if len(given) == 1 else "have")
        return None
    from prometheus_client import start_http_server

    from pagedlm.metrics import PrometheusStatLogger

    host = getattr(args, "host", None) or getattr(args, "url", RunBatchArgs.url)
    port = getattr(args, "port", RunBatchArgs.port)
    stat_logger = PrometheusStatLogger(setup.engine_args.served_model_names()[0],
                                       prefix=setup.server_args.metrics_prefix + ":", engine_config=setup.engine_config)
    try:
        start_http_server(port, addr=host, registry=stat_logger.registry)
    except OSError as e:
        raise BatchError(f"cannot serve metrics on {host}:{port}: {e.strerror or e}. Pick another --port.") from e
    logger.info("Prometheus metrics on http://%s:%d/metrics", host, port)
    return stat_logger


def run(args: argparse.Namespace) -> None:
    """Check everything (the cheap checks first: the batch file, then the flags), load the
    model, run, write (or upload) the results."""
    from pagedlm.engine.async_llm import AsyncLLM
    from pagedlm.engine.core_client import EngineStartupError
    from pagedlm.entrypoints.openai.api_server import ServerSetup, startup_error

    if getattr(args, "model", None) is None:
        from pagedlm.models.default_model import default_model

        args.model, default_name = default_model()
        if getattr(args, "served_model_name", None) is None:
            args.served_model_name = default_name
    check_output(args.output_file, getattr(args, "output_tmp_dir", None))
    lines = read_input(args.input_file)
    logger.info("Read %d request(s) from %s", len(lines), args.input_file)
    setup = ServerSetup.from_cli_args(args)
    setup.engine_args.log_notices()
    stat_logger = start_metrics_server(args, setup)
    try:
        engine = AsyncLLM.from_engine_args(setup.engine_args)
    except (ValueError, EngineStartupError) as e:
        raise startup_error(e) from e
    engine.stat_logger = stat_logger
    out = open_output(args.output_file, getattr(args, "output_tmp_dir", None))
    try:
        num_errors = asyncio.run(run_batch(engine, setup, lines, out))
    finally:
        out.close()
    if is_url(args.output_file):
        upload(args.output_file, out.name)
        os.unlink(out.name)
    logger.info("Batch done: %d request(s), %d with an error; results in %s", len(lines), num_errors,
                args.output_file)
    if engine.is_dead:
        raise BatchError("the engine failed during the batch; the lines it could not answer carry the error")


def cli_main(args: argparse.Namespace) -> None:
    """``pagedlm run-batch``: user errors end the process with one line, exit status 1."""
    from pagedlm.entrypoints.openai.api_server import ServerStartError

    try:
        run(args)
    except (BatchError, ServerStartError) as e:
        sys.exit(f"pagedlm run-batch: error: {e}")


def main(argv: list[str] | None = None) -> None:
    from pagedlm.entrypoints.cli import _setup_logging

    _setup_logging()
    cli_main(parse_args(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()
