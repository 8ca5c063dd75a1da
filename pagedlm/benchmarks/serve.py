"""``pagedlm bench serve``: load a running OpenAI-compatible server and measure it, with
``vllm bench serve``'s flags, printed table and result JSON.

Sends streamed /v1/completions requests (vLLM's random dataset, or ShareGPT conversations from
a local JSON file) at a Poisson / gamma rate or all at once, optionally capped at a
concurrency, and reports request and token throughput, and mean / median / percentiles of TTFT,
TPOT = (E2EL - TTFT) / (output tokens - 1), ITL (the gaps between streamed chunks) and E2EL,
in milliseconds.

Works against any OpenAI-compatible server (pagedlm, vLLM, ...). It imports no torch: with a
tokenizer (--tokenizer, or the model root /v1/models names when it is a local directory) the
random prompts are token ids of exact length; without one, random words.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
import uuid
from datetime import datetime
from typing import Any, AsyncIterator

import httpx
import msgspec

from pagedlm.benchmarks.datasets import DatasetError
from pagedlm.benchmarks.refused import add_refused_flags
from pagedlm.benchmarks.serve_report import (METRICS, RequestResult, parse_goodput, print_table, result_record,
                                             save_result, summarize)
from pagedlm.benchmarks.serve_workload import Prompt, build_prompts, load_tokenizer, send_offsets
from pagedlm.benchmarks.sse_client import SSEClient

REFUSED = {
    "--use-beam-search": "beam search is not sent by this client",
    "--profile": "the server-side profiler (/start_profile) is not implemented",
    "--no-stream": "only the random and sharegpt datasets are implemented (no Hugging Face streaming)",
    "--skip-chat-template": "the custom dataset is not implemented",
    "--enable-multimodal-chat": "multimodal datasets are not implemented",
    "--custom-output-len": "the custom dataset is not implemented",
    "--sonnet-input-len": "the sonnet dataset is not implemented",
    "--sonnet-output-len": "the sonnet dataset is not implemented",
    "--sonnet-prefix-len": "the sonnet dataset is not implemented",
    "--hf-subset": "Hugging Face datasets are not implemented",
    "--hf-split": "Hugging Face datasets are not implemented",
    "--hf-name": "Hugging Face datasets are not implemented",
    "--hf-output-len": "Hugging Face datasets are not implemented",
    "--random-batch-size": "embedding benchmarks are not implemented",
    "--common-prefix-len": "use --random-prefix-len",
}


def add_cli_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    _add_dataset_args(parser)
    _add_connection_args(parser)
    _add_traffic_args(parser)
    _add_sampling_args(parser)
    _add_report_args(parser)
    add_refused_flags(parser, REFUSED)
    return parser


def _add_dataset_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-prompts", type=int, default=1000)
    parser.add_argument("--dataset-name", "--dataset", dest="dataset_name", choices=["random", "sharegpt"],
                        default="random", help="random prompts, or ShareGPT conversations from --dataset-path")
    parser.add_argument("--dataset-path", type=str, default=None, help="local ShareGPT JSON file")
    parser.add_argument("--disable-shuffle", action="store_true", help="ShareGPT entries in file order")
    parser.add_argument("--no-oversample", action="store_true",
                        help="fewer ShareGPT samples than --num-prompts: send those, not repeats")
    parser.add_argument("--sharegpt-output-len", type=int, default=None,
                        help="output tokens per ShareGPT request (default: the reply's length)")
    parser.add_argument("--random-input-len", type=int, default=1024)
    parser.add_argument("--random-output-len", type=int, default=128)
    parser.add_argument("--random-range-ratio", type=float, default=0.0,
                        help="lengths drawn uniformly from [len * (1 - r), len * (1 + r)], r in [0, 1)")
    parser.add_argument("--random-prefix-len", type=int, default=0, help="random tokens shared by every prompt")
    parser.add_argument("--input-len", type=int, default=None, help="sets --random-input-len")
    parser.add_argument("--output-len", type=int, default=None,
                        help="sets --random-output-len and --sharegpt-output-len")


def _add_connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=["openai", "vllm"], default="openai",
                        help="vLLM's request kind: both are streamed /v1/completions requests (the only kind sent)")
    parser.add_argument("--base-url", type=str, default=None, help="server URL (default http://HOST:PORT)")
    parser.add_argument("--host", type=str, default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--endpoint", type=str, default="/v1/completions")
    parser.add_argument("--header", metavar="KEY=VALUE", nargs="*", help="extra HTTP headers of every request")
    parser.add_argument("--api-key", type=str, default=os.environ.get("OPENAI_API_KEY"),
                        help="bearer token (default: $OPENAI_API_KEY, as vLLM)")
    parser.add_argument("--model", type=str, default=None, help="model name (default: the first of /v1/models)")
    parser.add_argument("--served-model-name", type=str, default=None,
                        help="the name sent in requests, when it differs from --model")
    parser.add_argument("--lora-modules", nargs="+", default=None,
                        help="adapter names the server serves; each request picks one at random")
    parser.add_argument("--tokenizer", type=str, default=None,
                        help="tokenizer (directory or cached Hub id) for exact-length prompts and ShareGPT")
    parser.add_argument("--tokenizer-mode", choices=["auto", "hf", "slow"], default="auto")
    parser.add_argument("--trust-remote-code", action="store_true", help="let transformers run the tokenizer's code")
    parser.add_argument("--ready-check-timeout-sec", type=int, default=600,
                        help="wait this long for the server to come up (0: no test request)")
    parser.add_argument("--request-id-prefix", type=str, default=f"bench-{uuid.uuid4().hex[:8]}-",
                        help="X-Request-Id of request i is PREFIX + i")


def _add_traffic_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--request-rate", type=float, default=float("inf"),
                        help="requests per second (Poisson arrivals); inf sends all at once")
    parser.add_argument("--burstiness", type=float, default=1.0,
                        help="gamma shape of arrivals; 1 = Poisson, inf = evenly spaced")
    parser.add_argument("--max-concurrency", type=int, default=None)
    parser.add_argument("--num-warmups", type=int, default=0, help="requests sent (and not measured) first")
    parser.add_argument("--ramp-up-strategy", choices=["linear", "exponential"], default=None,
                        help="raise the rate from --ramp-up-start-rps to --ramp-up-end-rps over the run")
    parser.add_argument("--ramp-up-start-rps", type=int, default=None)
    parser.add_argument("--ramp-up-end-rps", type=int, default=None)


def _add_sampling_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--temperature", type=float, default=None, help="default 0 (greedy), as vLLM")
    for flag, kind in (("--top-p", float), ("--top-k", int), ("--min-p", float), ("--frequency-penalty", float),
                       ("--presence-penalty", float), ("--repetition-penalty", float)):
        parser.add_argument(flag, type=kind, default=None)
    parser.add_argument("--logprobs", type=int, default=None, help="logprobs per token asked for")
    parser.add_argument("--ignore-eos", action="store_true",
                        help="generate exactly the output length (always so for the random dataset, as vLLM)")
    parser.add_argument("--extra-body", type=json.loads, default=None, help="JSON merged into every request body")


def _add_report_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--label", type=str, default=None, help="result file name prefix (default: --backend)")
    parser.add_argument("--percentile-metrics", type=metric_list, default=None,
                        help="comma-separated of ttft,tpot,itl,e2el (default: ttft,tpot,itl)")
    parser.add_argument("--metric-percentiles", type=percentile_list, default=[99.0],
                        help="comma-separated, e.g. 50,90,99 (default: 99)")
    parser.add_argument("--goodput", nargs="+", default=None, metavar="KEY:MS",
                        help="service-level objectives, e.g. ttft:200 tpot:50 (ms): requests/s within all")
    parser.add_argument("--save-result", action="store_true", help="write the results as JSON")
    parser.add_argument("--save-detailed", action="store_true", help="with per-request lengths, times and texts")
    parser.add_argument("--append-result", action="store_true", help="append one JSON line to the result file")
    parser.add_argument("--metadata", metavar="KEY=VALUE", nargs="*", help="extra keys of the result JSON")
    parser.add_argument("--result-dir", type=str, default=None, help="default: the current directory")
    parser.add_argument("--result-filename", type=str, default=None)
    parser.add_argument("--disable-tqdm", action="store_true", help="accepted: no progress bar is drawn")


def percentile_list(text: str) -> list[float]:
    """'50,90,99' -> [50.0, 90.0, 99.0], checked when the flags are parsed (not after the run)."""
    try:
        values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not values or not all(0 <= p <= 100 for p in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give percentiles between 0 and 100, e.g. 50,90,99")
    return values


def metric_list(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names or any(m not in METRICS for m in names):
        raise argparse.ArgumentTypeError(f"{text!r}: give a comma-separated list of {','.join(METRICS)}")
    return names


def key_values(items: list[str] | None, flag: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{flag} {item!r}: give KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


# ---------------------------------------------------------------------- requests


async def sse_lines(chunks: AsyncIterator[str]) -> AsyncIterator[str]:
    """Lines of an SSE stream, split only at the line ends SSE defines (LF, CRLF). Not
    str.splitlines (what httpx's aiter_lines does): it also splits at U+0085, U+2028 and
    others, which JSON carries unescaped inside strings."""
    buffer = ""
    async for chunk in chunks:
        buffer += chunk
        *lines, buffer = buffer.split("\n")
        for line in lines:
            yield line.removesuffix("\r")
    if buffer:
        yield buffer.removesuffix("\r")


class _Chunk(msgspec.Struct):
    """The fields of a streamed completion chunk that the benchmark reads (others are skipped)."""

    choices: list[msgspec.Raw] | None = None
    usage: dict[str, Any] | None = None
    error: msgspec.Raw | None = None


_CHUNK = msgspec.json.Decoder(_Chunk)


def _text(choice: msgspec.Raw) -> str:
    """A streamed choice's text (completions) or delta content (chat), for --save-detailed."""
    value = msgspec.json.decode(choice)
    delta = value.get("delta") if isinstance(value, dict) else None
    text = value.get("text") if isinstance(value, dict) else None
    return text or (delta or {}).get("content") or ""


class _Progress:
    """One stream's timings, fed each SSE data payload as it arrives."""

    def __init__(self, result: RequestResult, start: float, keep_text: bool = False) -> None:
        self.result = result
        self.start = self.last = result.start_time = start
        self.keep_text = keep_text
        self.num_chunks = 0
        self.ended = False  # [DONE] or an error event

    def on_data(self, data: bytes) -> None:
        if not data or self.ended:
            return
        if data == b"[DONE]":
            self.ended = True
            return
        chunk = _CHUNK.decode(data)
        result = self.result
        if chunk.error is not None:
            result.error = bytes(chunk.error).decode()
            self.ended = True
            return
        if chunk.usage:
            result.output_tokens = chunk.usage.get("completion_tokens", 0)
            result.prompt_len = result.prompt_len or chunk.usage.get("prompt_tokens", 0)
        # Every chunk with choices is progress, text or not (a token whose text is held back,
        # e.g. an incomplete character, still arrives as a chunk), as vLLM counts.
        if chunk.choices:
            now = time.perf_counter()
            if self.num_chunks == 0:
                result.ttft = now - self.start
            else:
                result.itl.append(now - self.last)
            self.last = now
            self.num_chunks += 1
            if self.keep_text:
                result.generated_text += "".join(_text(c) for c in chunk.choices)

    def finish(self) -> RequestResult:
        result = self.result
        if result.error:
            return result
        result.latency = time.perf_counter() - self.start
        result.output_tokens = result.output_tokens or self.num_chunks
        result.success = self.num_chunks > 0 or result.output_tokens > 0
        if not result.success:
            result.error = "the stream carried no text"
        return result


async def send_request(client: httpx.AsyncClient | SSEClient, url: str, payload: dict, prompt_len: int,
                       headers: dict[str, str] | None = None, keep_text: bool = False) -> RequestResult:
    """One streamed request. Over plain http through the lean SSEClient; over https (or any
    other client) through httpx."""
    progress = _Progress(RequestResult(prompt_len=prompt_len), time.perf_counter(), keep_text)
    try:
        if isinstance(client, SSEClient):
            status, body = await client.post(url, msgspec.json.encode(payload), progress.on_data, headers)
            if status != 200:
                progress.result.error = f"HTTP {status}: {body[:500]!r}"
                return progress.result
            return progress.finish()
        async with client.stream("POST", url, json=payload, headers=headers) as response:
            if response.status_code != 200:
                progress.result.error = f"HTTP {response.status_code}: {(await response.aread())[:500]!r}"
                return progress.result
            async for line in sse_lines(response.aiter_text()):
                if line.startswith("data:"):
                    progress.on_data(line[len("data:"):].strip().encode())
                if progress.ended:
                    break
        return progress.finish()
    except (httpx.TransportError, OSError) as e:
        progress.result.error = f"{type(e).__name__}: {e}"
        progress.result.unreachable = True
    except (httpx.HTTPError, msgspec.DecodeError) as e:
        progress.result.error = f"{type(e).__name__}: {e}"
    return progress.result


class Run:
    """One benchmark run's fixed parts: where requests go and what every request carries."""

    def __init__(self, args: argparse.Namespace, client: httpx.AsyncClient | SSEClient, url: str, model: str) -> None:
        self.args, self.client, self.url, self.model = args, client, url, model
        self.sampling = {k: v for k, v in {
            "temperature": 0.0 if args.temperature is None else args.temperature, "top_p": args.top_p,
            "top_k": args.top_k, "min_p": args.min_p, "frequency_penalty": args.frequency_penalty,
            "presence_penalty": args.presence_penalty, "repetition_penalty": args.repetition_penalty,
        }.items() if v is not None}
        self.semaphore = asyncio.Semaphore(args.max_concurrency) if args.max_concurrency else None
        self.lora_rng = random.Random(args.seed)

    def payload(self, prompt: Prompt, model: str | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {"model": model or self.model, "prompt": prompt.prompt,
                                   "max_tokens": prompt.output_len, "stream": True,
                                   "stream_options": {"include_usage": True}, **self.sampling}
        if self.args.logprobs is not None:
            payload["logprobs"] = self.args.logprobs
        if self.args.ignore_eos:
            payload["ignore_eos"] = True
        payload.update(self.args.extra_body or {})
        return payload

    async def one(self, prompt: Prompt, request_id: str | None = None) -> RequestResult:
        model = self.lora_rng.choice(self.args.lora_modules) if self.args.lora_modules and request_id else None
        headers = {"x-request-id": request_id} if request_id else None
        send = send_request(self.client, self.url, self.payload(prompt, model), prompt.prompt_len, headers,
                            self.args.save_detailed)
        if self.semaphore is None:
            return await send
        async with self.semaphore:
            return await send

    async def ready(self, prompt: Prompt) -> RequestResult:
        """vLLM's ready check: the first prompt, retried while the server cannot be reached
        (not after an error answer) until --ready-check-timeout-sec."""
        deadline = time.monotonic() + self.args.ready_check_timeout_sec
        while True:
            result = await send_request(self.client, self.url, self.payload(prompt), prompt.prompt_len)
            if result.success or not result.unreachable or time.monotonic() >= deadline:
                return result
            await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

    async def benchmark(self, prompts: list[Prompt]) -> tuple[list[RequestResult], float]:
        offsets, _ = send_offsets(self.args, len(prompts), random.Random(self.args.seed))
        start = time.perf_counter()
        tasks = []
        for i, (prompt, offset) in enumerate(zip(prompts, offsets)):
            wait = start + offset - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.create_task(self.one(prompt, f"{self.args.request_id_prefix}{i}")))
        results = await asyncio.gather(*tasks)
        return list(results), time.perf_counter() - start


# ---------------------------------------------------------------------- entry


async def _discover_model(client: httpx.AsyncClient, base_url: str, deadline: float) -> tuple[str, str | None]:
    while True:
        try:
            response = await client.get(f"{base_url}/v1/models")
            break
        except httpx.TransportError:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(1.0)
    response.raise_for_status()
    first = response.json()["data"][0]
    return first["id"], first.get("root")


async def _resolve_model(args: argparse.Namespace, client: httpx.AsyncClient,
                         base_url: str) -> tuple[str, Any | None, str | None]:
    """(model id, tokenizer or None, where the tokenizer came from)."""
    model, root = args.model, None
    if model is None or args.tokenizer is None:
        try:
            found, root = await _discover_model(client, base_url, time.monotonic() + args.ready_check_timeout_sec)
            model = model or found
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as e:
            if model is None:
                raise DatasetError(f"could not list the server's models ({e}); pass --model") from None
    if args.tokenizer is not None:
        return model, load_tokenizer(args.tokenizer, args.tokenizer_mode, args.trust_remote_code, True), args.tokenizer
    for candidate in (root, model):
        tokenizer = load_tokenizer(candidate, args.tokenizer_mode, args.trust_remote_code)
        if tokenizer is not None:
            return model, tokenizer, candidate
    return model, None, None


async def _main(args: argparse.Namespace) -> int:
    base_url = (args.base_url or f"http://{args.host}:{args.port}").rstrip("/")
    args.base_url = base_url
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    headers.update(key_values(args.header, "--header"))
    limits = httpx.Limits(max_connections=args.max_concurrency or args.num_prompts + 1,
                          max_keepalive_connections=args.max_concurrency or args.num_prompts + 1)
    timeout = httpx.Timeout(6 * 3600.0, connect=60.0)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=timeout) as client:
        model, tokenizer, tokenizer_id = await _resolve_model(args, client, base_url)
        prompts = build_prompts(args, tokenizer)
        url = f"{base_url}{args.endpoint}"
        print(f"Model {model!r} at {url}; {len(prompts)} prompts ({args.dataset_name}), request rate "
              f"{args.request_rate}, burstiness {args.burstiness}, max concurrency {args.max_concurrency}.")
        # plain http: the lean streaming client, so that the client is not what sets the pace
        streamer = SSEClient(headers) if url.startswith("http://") else client
        try:
            run = Run(args, streamer, url, args.served_model_name or model)
            if args.ready_check_timeout_sec > 0:
                test = await run.ready(prompts[0])
                if not test.success:
                    print(f"The initial test request failed: {test.error}", file=sys.stderr)
                    return 1
            if args.num_warmups > 0:
                print(f"Warming up with {args.num_warmups} requests...")
                await asyncio.gather(*(run.one(prompts[0]) for _ in range(args.num_warmups)))
            results, duration = await run.benchmark(prompts)
        finally:
            if isinstance(streamer, SSEClient):
                streamer.close()
    return _report(args, model, tokenizer_id, results, duration)


def _report(args: argparse.Namespace, model: str, tokenizer_id: str | None, results: list[RequestResult],
            duration: float) -> int:
    selected = args.percentile_metrics or ["ttft", "tpot", "itl"]
    metrics = summarize(results, duration, args.metric_percentiles, args.goodput_slos)
    print_table(metrics, args, selected, args.metric_percentiles)
    errors = [r.error for r in results if not r.success]
    if errors:
        print(f"First error of {len(errors)}: {errors[0]}", file=sys.stderr)
    if args.save_result or args.append_result:
        record = result_record(args, model, tokenizer_id or model, metrics, results, selected, datetime.now())
        print(f"Results saved to {save_result(args, record, model)}")
    return 0 if metrics["completed"] > 0 else 1


def check_args(args: argparse.Namespace) -> None:
    """What vLLM checks before it starts (and a few more), as one-line errors. Also applies
    vLLM's defaults that depend on other flags (--input-len / --output-len, ignore_eos)."""
    if args.num_prompts < 1:
        raise ValueError("--num-prompts must be at least 1")
    if not args.request_rate > 0:
        raise ValueError("--request-rate must be positive (or inf)")
    if not args.burstiness > 0:
        raise ValueError("--burstiness must be positive (1: Poisson arrivals, inf: evenly spaced)")
    if args.max_concurrency is not None and args.max_concurrency < 1:
        raise ValueError("--max-concurrency must be at least 1")
    if args.dataset_name == "random" and args.dataset_path is not None:
        raise ValueError(f"the random dataset makes its prompts: drop --dataset-path {args.dataset_path} "
                         "or pass --dataset-name sharegpt")
    if args.ramp_up_strategy is not None:
        if args.request_rate != float("inf"):
            raise ValueError("with --ramp-up-strategy the ramp sets the rate: drop --request-rate")
        if args.ramp_up_start_rps is None or args.ramp_up_end_rps is None:
            raise ValueError("--ramp-up-strategy needs --ramp-up-start-rps and --ramp-up-end-rps")
        if not 0 < args.ramp_up_start_rps <= args.ramp_up_end_rps:
            raise ValueError("give 0 < --ramp-up-start-rps <= --ramp-up-end-rps")
    elif args.ramp_up_start_rps is not None or args.ramp_up_end_rps is not None:
        raise ValueError("--ramp-up-start-rps / --ramp-up-end-rps take effect with --ramp-up-strategy")
    args.goodput_slos = parse_goodput(args.goodput)
    key_values(args.metadata, "--metadata")
    if args.input_len is not None:
        args.random_input_len = args.input_len
    if args.output_len is not None:
        args.random_output_len = args.sharegpt_output_len = args.output_len
    if args.dataset_name == "random":
        args.ignore_eos = True  # vLLM's: random prompts run to the requested length


def _event_loop_runner():
    """uvloop's runner where it is installed (less client CPU per streamed chunk), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def main(args: argparse.Namespace) -> int:
    try:
        check_args(args)
        return _event_loop_runner()(_main(args))
    except ValueError as e:  # DatasetError too
        raise SystemExit(f"pagedlm bench serve: error: {e}") from None
    except httpx.HTTPError as e:
        print(f"Could not reach the server: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    from pagedlm.flexible_args import FlexibleArgumentParser

    sys.exit(main(add_cli_args(FlexibleArgumentParser(description=__doc__)).parse_args()))
