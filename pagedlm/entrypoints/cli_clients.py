"""``pagedlm chat`` and ``pagedlm complete``: vLLM's interactive clients of a running
OpenAI-compatible server (any server, not only pagedlm's), through the ``openai`` client.

Same flags and output as ``vllm chat`` / ``vllm complete``: ``Using model: NAME`` first, then
either one request (``-q``) or a prompt loop on stdin until EOF, each reply streamed to stdout.
``chat`` sends the whole conversation every turn. Unlike vLLM, a server that cannot be reached,
refuses the key or lists no model ends the command with one ``error:`` line and exit code 1
(not a traceback), and in the loop a request the server refuses (e.g. a conversation grown past
the context) prints its error and drops that turn, so the conversation can go on.

``openai`` is imported by the command, not by this module, so ``pagedlm --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Callable, Iterable

DEFAULT_URL = "http://localhost:8000/v1"


class ClientError(Exception):
    """A fault the user can fix (server address, key, model name): one line, exit code 1."""


def add_client_parsers(subparsers: argparse._SubParsersAction) -> None:
    chat = subparsers.add_parser("chat", usage="pagedlm chat [options]",
                                 help="chat with a running OpenAI-compatible server (vLLM's `vllm chat`)",
                                 description="Generate chat completions via the running API server.")
    _add_query_options(chat)
    chat.add_argument("--system-prompt", default=None,
                      help="a system message put first in the conversation (for models whose template takes one)")
    chat.add_argument("-q", "--quick", metavar="MESSAGE",
                      help="send MESSAGE alone, print the reply and exit")
    chat.add_argument("--stats", action="store_true", help="print TTFT and TPS after each reply")
    chat.set_defaults(func=_run(cmd_chat, "chat"))

    complete = subparsers.add_parser("complete", usage="pagedlm complete [options]",
                                     help="complete prompts on a running OpenAI-compatible server "
                                          "(vLLM's `vllm complete`)",
                                     description="Generate text completions based on the given prompt via "
                                                 "the running API server.")
    _add_query_options(complete)
    complete.add_argument("--max-tokens", type=int, default=None,
                          help="most tokens to generate per completion (default: the server's, 16 on pagedlm)")
    complete.add_argument("-q", "--quick", metavar="PROMPT",
                          help="send PROMPT alone, print the completion and exit")
    complete.add_argument("--stats", action="store_true", help="print TTFT and TPS after each completion")
    complete.set_defaults(func=_run(cmd_complete, "complete"))


def _add_query_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=DEFAULT_URL,
                        help=f"base URL of the running OpenAI-compatible API (default: {DEFAULT_URL})")
    parser.add_argument("--model-name", default=None,
                        help="the model to ask (default: the first model the server lists at /v1/models)")
    parser.add_argument("--api-key", default=None,
                        help="the API key sent as a bearer token (default: $OPENAI_API_KEY, else 'EMPTY')")


def _run(command: Callable[[argparse.Namespace], None], name: str) -> Callable[[argparse.Namespace], None]:
    """The command with the openai client's faults turned into one ``error:`` line."""

    def run(args: argparse.Namespace) -> None:
        import logging

        import openai

        # The HTTP client's INFO lines (each request, each retry) would mix into the conversation.
        logging.getLogger().setLevel(logging.WARNING)
        try:
            command(args)
        except KeyboardInterrupt:
            print()  # Ctrl-C ends the session, as in vLLM (exit code 0)
        except ClientError as e:
            sys.exit(f"pagedlm {name}: error: {e}")
        except openai.APIError as e:
            sys.exit(f"pagedlm {name}: error: {describe_error(e, args.url)}")

    return run


def describe_error(error: Exception, url: str) -> str:
    import openai

    if isinstance(error, openai.APIConnectionError):
        cause = f" ({error.__cause__})" if error.__cause__ is not None else ""
        return f"cannot reach the server at {url}: {error.message.rstrip('.')}{cause}; is it running? (--url)"
    if isinstance(error, openai.AuthenticationError):
        return (f"the server at {url} refused the API key (401); pass --api-key KEY or set OPENAI_API_KEY "
                f"({_server_message(error)})")
    if isinstance(error, openai.APIStatusError):
        return f"the server at {url} answered {error.status_code}: {_server_message(error)}"
    return str(error)


def _server_message(error: Any) -> str:
    body = error.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return error.message


def connect(args: argparse.Namespace) -> tuple[str, Any]:
    """-> (model name, client); the model is ``--model-name`` or the server's first listed one."""
    from openai import OpenAI

    api_key = args.api_key or os.environ.get("OPENAI_API_KEY", "EMPTY")
    client = OpenAI(api_key=api_key, base_url=args.url)
    model_name = args.model_name
    if not model_name:
        models = client.models.list().data
        if not models:
            raise ClientError(f"the server at {args.url} lists no models; pass --model-name")
        model_name = models[0].id
    print(f"Using model: {model_name}", flush=True)
    return model_name, client


def cmd_chat(args: argparse.Namespace) -> None:
    model_name, client = connect(args)
    conversation: list[dict[str, Any]] = []
    if args.system_prompt is not None:
        conversation.append({"role": "system", "content": args.system_prompt})
    kwargs: dict[str, Any] = {"model": model_name, "stream": True}
    if args.stats:
        kwargs["stream_options"] = {"include_usage": True}

    def turn(message: str) -> None:
        conversation.append({"role": "user", "content": message})
        try:
            reply = _print_stream(client.chat.completions.create(messages=conversation, **kwargs),
                                  _chat_text, args.stats)
        except BaseException:
            conversation.pop()  # a turn the server refused is not part of the conversation
            raise
        conversation.append({"role": "assistant", "content": reply})

    if args.quick is not None:
        turn(args.quick)
        return
    _prompt_loop("Please enter a message for the chat model:", turn, args.url)


def cmd_complete(args: argparse.Namespace) -> None:
    model_name, client = connect(args)
    kwargs: dict[str, Any] = {"model": model_name, "stream": True}
    if args.max_tokens is not None:
        kwargs["max_tokens"] = args.max_tokens
    if args.stats:
        kwargs["stream_options"] = {"include_usage": True}

    def turn(prompt: str) -> None:
        _print_stream(client.completions.create(prompt=prompt, **kwargs), _completion_text, args.stats)

    if args.quick is not None:
        turn(args.quick)
        return
    _prompt_loop("Please enter prompt to complete:", turn, args.url)


def _prompt_loop(greeting: str, turn: Callable[[str], None], url: str) -> None:
    """One ``turn`` per line of stdin until EOF. A request the server refuses (4xx/5xx) prints
    its error and the loop goes on; a server that is gone ends the command."""
    import openai

    print(greeting)
    while True:
        try:
            line = input("> ")
        except EOFError:
            return
        try:
            turn(line)
        except openai.APIStatusError as e:
            if isinstance(e, openai.AuthenticationError):
                raise
            print(f"error: {describe_error(e, url)}", file=sys.stderr, flush=True)


def _chat_text(chunk: Any) -> str | None:
    return chunk.choices[0].delta.content


def _completion_text(chunk: Any) -> str | None:
    return chunk.choices[0].text


def _print_stream(stream: Iterable[Any], text_of: Callable[[Any], str | None], stats: bool) -> str:
    """Print each chunk's text as it arrives; -> the whole text."""
    start = time.perf_counter()
    ttft: float | None = None
    num_completion_tokens = 0
    parts: list[str] = []
    for chunk in stream:
        if chunk.usage is not None:
            num_completion_tokens = chunk.usage.completion_tokens
        if not chunk.choices:
            continue  # the usage-only last chunk
        text = text_of(chunk)
        if text:
            if ttft is None:
                ttft = time.perf_counter() - start
            parts.append(text)
            print(text, end="", flush=True)
    print()
    if stats:
        _print_stats(time.perf_counter() - start, ttft, num_completion_tokens)
    return "".join(parts)


def _print_stats(total_s: float, ttft: float | None, num_completion_tokens: int) -> None:
    if ttft is None or total_s <= 0:
        return  # nothing was generated: no first token to time
    print(f"{'TTFT:':<5} {ttft * 1000:.2f} ms")
    print(f"{'TPS:':<5} {num_completion_tokens / total_s:.2f} tokens/s "
          f"({num_completion_tokens} tokens in {total_s:.2f}s)")
