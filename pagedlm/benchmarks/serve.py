"""``pagedlm bench serve``: load a running OpenAI-compatible server and measure it.

Sends streamed /v1/completions requests (a random dataset) at a Poisson rate or all at once,
optionally capped at a concurrency, and reports what vLLM's ``bench serve`` reports: request
and token throughput, and mean / median / p99 of TTFT, TPOT = (E2EL - TTFT) / (output tokens
- 1), ITL (the gaps between streamed chunks) and E2EL, in milliseconds.

Works against any OpenAI-compatible server (pagedlm, vLLM, ...). It imports no torch: with a
tokenizer (--tokenizer, or the model root /v1/models names when it is a local directory) the
prompts are random token ids of exact length; without one, random words.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import msgspec

from pagedlm.benchmarks.sse_client import SSEClient

_WORDS = ("the of and to in is was for on that with as by at from his her an which were are this be or "
          "time year people way day man thing woman life child world school state family student group "
          "country problem hand part place case week company system program question work government "
          "number night point home water room mother area money story fact month lot right study book").split()


@dataclass
class Prompt:
    prompt: str | list[int]
    prompt_len: int  # 0 when unknown (text without a tokenizer): the usage field tells
    output_len: int


@dataclass
class RequestResult:
    success: bool = False
    prompt_len: int = 0
    output_tokens: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    error: str = ""


def add_cli_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--backend", choices=["openai", "vllm"], default="openai",
                        help="vLLM's request kind: both are streamed /v1/completions requests (the only kind sent)")
    parser.add_argument("--base-url", type=str, default=None, help="server URL (default http://HOST:PORT)")
    parser.add_argument("--host", type=str, default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--endpoint", type=str, default="/v1/completions")
    parser.add_argument("--model", type=str, default=None, help="model name (default: the first of /v1/models)")
    parser.add_argument("--tokenizer", type=str, default=None, help="local tokenizer for exact-length prompts")
    parser.add_argument("--api-key", type=str, default=os.environ.get("OPENAI_API_KEY"))
    parser.add_argument("--dataset", "--dataset-name", dest="dataset", choices=["random"], default="random")
    parser.add_argument("--random-input-len", type=int, default=1024)
    parser.add_argument("--random-output-len", type=int, default=128)
    parser.add_argument("--random-range-ratio", type=float, default=0.0,
                        help="lengths drawn uniformly from [len * (1 - r), len * (1 + r)]")
    parser.add_argument("--num-prompts", type=int, default=1000)
    parser.add_argument("--request-rate", type=float, default=float("inf"),
                        help="requests per second (Poisson arrivals); inf sends all at once")
    parser.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of arrivals; 1 = Poisson")
    parser.add_argument("--max-concurrency", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--ignore-eos", action="store_true", help="generate exactly the output length")
    parser.add_argument("--metric-percentiles", type=percentile_list, default=[99.0],
                        help="comma-separated, e.g. 50,90,99 (default: 99)")
    parser.add_argument("--save-result", action="store_true", help="write the results as JSON")
    parser.add_argument("--result-dir", type=str, default=".")
    parser.add_argument("--result-filename", type=str, default=None)
    parser.add_argument("--disable-tqdm", action="store_true", help="accepted for vLLM compatibility")
    return parser


def percentile_list(text: str) -> list[float]:
    """'50,90,99' -> [50.0, 90.0, 99.0], checked when the flags are parsed (not after the run)."""
    try:
        values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not values or not all(0 <= p <= 100 for p in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give percentiles between 0 and 100, e.g. 50,90,99")
    return values


# ---------------------------------------------------------------------- dataset


def _lengths(mean: int, ratio: float, n: int, rng: random.Random) -> list[int]:
    low, high = max(1, int(mean * (1 - ratio))), max(1, int(mean * (1 + ratio)))
    return [rng.randint(low, high) for _ in range(n)]


def random_dataset(args: argparse.Namespace, tokenizer: Any | None) -> list[Prompt]:
    rng = random.Random(args.seed)
    input_lens = _lengths(args.random_input_len, args.random_range_ratio, args.num_prompts, rng)
    output_lens = _lengths(args.random_output_len, args.random_range_ratio, args.num_prompts, rng)
    if tokenizer is not None:
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        vocab = [i for i in range(len(tokenizer)) if i not in special]
        return [Prompt([rng.choice(vocab) for _ in range(n_in)], n_in, n_out)
                for n_in, n_out in zip(input_lens, output_lens)]
    return [Prompt(" ".join(rng.choice(_WORDS) for _ in range(n_in)), 0, n_out)
            for n_in, n_out in zip(input_lens, output_lens)]


def load_tokenizer(path: str | None) -> Any | None:
    if not path or not Path(path).is_dir():
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - fall back to text prompts
        print(f"Could not load a tokenizer from {path} ({e}); using random words.", file=sys.stderr)
        return None


# ---------------------------------------------------------------------- requests


def _payload(args: argparse.Namespace, model: str, prompt: Prompt) -> dict[str, Any]:
    payload = {
        "model": model, "prompt": prompt.prompt, "max_tokens": prompt.output_len,
        "temperature": args.temperature, "stream": True, "stream_options": {"include_usage": True},
    }
    if args.ignore_eos:
        payload["ignore_eos"] = True
    return payload


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


class _Progress:
    """One stream's timings, fed each SSE data payload as it arrives."""

    def __init__(self, result: RequestResult, start: float) -> None:
        self.result = result
        self.start = self.last = start
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


async def send_request(client: httpx.AsyncClient | SSEClient, url: str, payload: dict,
                       prompt_len: int) -> RequestResult:
    """One streamed request. Over plain http through the lean SSEClient; over https (or any
    other client) through httpx."""
    progress = _Progress(RequestResult(prompt_len=prompt_len), time.perf_counter())
    try:
        if isinstance(client, SSEClient):
            status, body = await client.post(url, msgspec.json.encode(payload), progress.on_data)
            if status != 200:
                progress.result.error = f"HTTP {status}: {body[:500]!r}"
                return progress.result
            return progress.finish()
        async with client.stream("POST", url, json=payload) as response:
            if response.status_code != 200:
                progress.result.error = f"HTTP {response.status_code}: {(await response.aread())[:500]!r}"
                return progress.result
            async for line in sse_lines(response.aiter_text()):
                if line.startswith("data:"):
                    progress.on_data(line[len("data:"):].strip().encode())
                if progress.ended:
                    break
        return progress.finish()
    except (httpx.HTTPError, msgspec.DecodeError, OSError) as e:
        progress.result.error = f"{type(e).__name__}: {e}"
    return progress.result


async def arrivals(n: int, rate: float, burstiness: float, rng: random.Random) -> AsyncIterator[int]:
    """Yield 0..n-1 spaced by gamma intervals with mean 1/rate (exponential: Poisson)."""
    for i in range(n):
        yield i
        if math.isinf(rate) or i == n - 1:
            continue
        await asyncio.sleep(rng.gammavariate(burstiness, 1.0 / (rate * burstiness)))


async def run_benchmark(args: argparse.Namespace, client: httpx.AsyncClient | SSEClient, url: str, model: str,
                        prompts: list[Prompt]) -> tuple[list[RequestResult], float]:
    semaphore = asyncio.Semaphore(args.max_concurrency) if args.max_concurrency else None

    async def one(prompt: Prompt) -> RequestResult:
        if semaphore is None:
            return await send_request(client, url, _payload(args, model, prompt), prompt.prompt_len)
        async with semaphore:
            return await send_request(client, url, _payload(args, model, prompt), prompt.prompt_len)

    rng = random.Random(args.seed)
    start = time.perf_counter()
    tasks = []
    async for i in arrivals(len(prompts), args.request_rate, args.burstiness, rng):
        tasks.append(asyncio.create_task(one(prompts[i])))
    results = await asyncio.gather(*tasks)
    return list(results), time.perf_counter() - start


# ---------------------------------------------------------------------- report


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0  # linear interpolation, as numpy.percentile
    low = int(math.floor(pos))
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _stats(name: str, values_s: list[float], percentiles: list[float]) -> dict[str, float]:
    ms = [v * 1000.0 for v in values_s]
    out = {f"mean_{name}_ms": sum(ms) / len(ms) if ms else 0.0, f"median_{name}_ms": _percentile(ms, 50)}
    for p in percentiles:
        out[f"p{p:g}_{name}_ms"] = _percentile(ms, p)
    return out


def summarize(results: list[RequestResult], duration: float, percentiles: list[float]) -> dict[str, Any]:
    ok = [r for r in results if r.success]
    input_tokens = sum(r.prompt_len for r in ok)
    output_tokens = sum(r.output_tokens for r in ok)
    tpots = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    metrics: dict[str, Any] = {
        "duration": duration, "completed": len(ok), "failed": len(results) - len(ok),
        "total_input_tokens": input_tokens, "total_output_tokens": output_tokens,
        "request_throughput": len(ok) / duration if duration > 0 else 0.0,
        "output_throughput": output_tokens / duration if duration > 0 else 0.0,
        "total_token_throughput": (input_tokens + output_tokens) / duration if duration > 0 else 0.0,
    }
    metrics.update(_stats("ttft", [r.ttft for r in ok], percentiles))
    metrics.update(_stats("tpot", tpots, percentiles))
    metrics.update(_stats("itl", [gap for r in ok for gap in r.itl], percentiles))
    metrics.update(_stats("e2el", [r.latency for r in ok], percentiles))
    return metrics


def print_table(m: dict[str, Any], percentiles: list[float], args: argparse.Namespace) -> None:
    rows = [
        ("Successful requests:", m["completed"]), ("Failed requests:", m["failed"]),
        ("Request rate configured (RPS):", args.request_rate),
        ("Maximum request concurrency:", args.max_concurrency),
        ("Benchmark duration (s):", f"{m['duration']:.2f}"),
        ("Total input tokens:", m["total_input_tokens"]), ("Total generated tokens:", m["total_output_tokens"]),
        ("Request throughput (req/s):", f"{m['request_throughput']:.2f}"),
        ("Output token throughput (tok/s):", f"{m['output_throughput']:.2f}"),
        ("Total token throughput (tok/s):", f"{m['total_token_throughput']:.2f}"),
    ]
    print("{s:{c}^50}".format(s=" Serving Benchmark Result ", c="="))
    for label, value in rows:
        print(f"{label:<40}{value!s:<10}")
    titles = {"ttft": "Time to First Token", "tpot": "Time per Output Token (excl. 1st token)",
              "itl": "Inter-token Latency", "e2el": "End-to-end Latency"}
    for key, title in titles.items():
        print("{s:{c}^50}".format(s=f" {title} ", c="-"))
        print(f"{'Mean ' + key.upper() + ' (ms):':<40}{m[f'mean_{key}_ms']:<10.2f}")
        print(f"{'Median ' + key.upper() + ' (ms):':<40}{m[f'median_{key}_ms']:<10.2f}")
        for p in percentiles:
            print(f"{f'P{p:g} ' + key.upper() + ' (ms):':<40}{m[f'p{p:g}_{key}_ms']:<10.2f}")
    print("=" * 50)


def save_result(args: argparse.Namespace, model: str, metrics: dict[str, Any], results: list[RequestResult]) -> Path:
    now = datetime.now()
    name = args.result_filename or f"pagedlm-bench-serve-{args.request_rate}qps-{now:%Y%m%d-%H%M%S}.json"
    path = Path(args.result_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "date": now.isoformat(timespec="seconds"), "backend": args.backend, "model_id": model,
        "base_url": args.base_url, "endpoint": args.endpoint, "dataset": args.dataset,
        "num_prompts": args.num_prompts, "random_input_len": args.random_input_len,
        "random_output_len": args.random_output_len, "request_rate": str(args.request_rate),
        "burstiness": args.burstiness, "max_concurrency": args.max_concurrency, **metrics,
        "input_lens": [r.prompt_len for r in results], "output_lens": [r.output_tokens for r in results],
        "ttfts": [r.ttft for r in results], "itls": [r.itl for r in results],
        "errors": [r.error for r in results],
    }
    path.write_text(json.dumps(record, indent=2))
    return path


# ---------------------------------------------------------------------- entry


async def _discover_model(client: httpx.AsyncClient, base_url: str) -> tuple[str, str | None]:
    response = await client.get(f"{base_url}/v1/models")
    response.raise_for_status()
    first = response.json()["data"][0]
    return first["id"], first.get("root")


async def _main(args: argparse.Namespace) -> int:
    base_url = (args.base_url or f"http://{args.host}:{args.port}").rstrip("/")
    args.base_url = base_url
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=args.max_concurrency or args.num_prompts + 1,
                          max_keepalive_connections=args.max_concurrency or args.num_prompts + 1)
    timeout = httpx.Timeout(6 * 3600.0, connect=60.0)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=timeout) as client:
        model, root = args.model, None
        if model is None or args.tokenizer is None:
            try:
                found, root = await _discover_model(client, base_url)
                model = model or found
            except (httpx.HTTPError, KeyError, IndexError, ValueError) as e:
                if model is None:
                    print(f"Could not list the server's models ({e}); pass --model.", file=sys.stderr)
                    return 1
        tokenizer = load_tokenizer(args.tokenizer or root)
        prompts = random_dataset(args, tokenizer)
        url = f"{base_url}{args.endpoint}"
        print(f"Model {model!r} at {url}; {len(prompts)} prompts, request rate {args.request_rate}, "
              f"max concurrency {args.max_concurrency}.")
        # plain http: the lean streaming client, so that the client is not what sets the pace
        streamer = SSEClient(headers) if url.startswith("http://") else client
        try:
            test = await send_request(streamer, url, _payload(args, model, prompts[0]), prompts[0].prompt_len)
            if not test.success:
                print(f"The initial test request failed: {test.error}", file=sys.stderr)
                return 1
            results, duration = await run_benchmark(args, streamer, url, model, prompts)
        finally:
            if isinstance(streamer, SSEClient):
                streamer.close()
    percentiles = args.metric_percentiles
    metrics = summarize(results, duration, percentiles)
    print_table(metrics, percentiles, args)
    errors = [r.error for r in results if not r.success]
    if errors:
        print(f"First error of {len(errors)}: {errors[0]}", file=sys.stderr)
    if args.save_result:
        print(f"Results saved to {save_result(args, model, metrics, results)}")
    return 0 if metrics["completed"] > 0 else 1


def _event_loop_runner():
    """uvloop's runner where it is installed (less client CPU per streamed chunk), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def main(args: argparse.Namespace) -> int:
    if args.num_prompts < 1:
        raise SystemExit("--num-prompts must be at least 1")
    if not args.request_rate > 0:
        raise SystemExit("--request-rate must be positive (or inf)")
    if not 0 < args.burstiness < math.inf:
        raise SystemExit("--burstiness must be positive (1: Poisson arrivals)")
    try:
        return _event_loop_runner()(_main(args))
    except httpx.HTTPError as e:
        print(f"Could not reach the server: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    from pagedlm.flexible_args import FlexibleArgumentParser

    sys.exit(main(add_cli_args(FlexibleArgumentParser(description=__doc__)).parse_args()))
