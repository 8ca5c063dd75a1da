"""Frontend cost per engine step as outputs grow: the output processor (detokenize, stop
strings, logprobs, building RequestOutputs) plus the per-request stream merge, for N running
requests, measured around output lengths L (default 64 and 2,048). DELTA (what the server
uses) must not grow with L; CUMULATIVE (everything so far) is shown for contrast.

python benchmarks/frontend_step_cost.py [--num-requests 256] [--lengths 64 2048]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time

from pagedlm.demo import build_tokenizer
from pagedlm.engine.async_llm import RequestStream
from pagedlm.engine.messages import EngineCoreOutput, EngineCoreRequest
from pagedlm.engine.output_processor import OutputProcessor
from pagedlm.sampling_params import RequestOutputKind, SamplingParams


class _NoEngine:
    def abort(self, request_id: str) -> None:
        pass


async def step_cost_ms(tokenizer, num_requests: int, length: int, kind: RequestOutputKind, read_every: int,
                 window: int = 16) -> float:
    """Mean ms per step over the ``window`` steps that end at output length ``length``; each
    stream is read every ``read_every`` steps (a slower reader gets merged deltas)."""
    rng = random.Random(0)
    vocab = len(tokenizer)
    processor = OutputProcessor(tokenizer)
    params = SamplingParams(max_tokens=length + 1, ignore_eos=True, stop=["\n\n\n"], output_kind=kind)
    streams = {}
    for i in range(num_requests):
        req = EngineCoreRequest(str(i), [rng.randrange(vocab) for _ in range(32)], params, None, time.time())
        processor.add_request(str(i), None, [req])
        streams[str(i)] = RequestStream(str(i), _NoEngine(), kind)
    elapsed = 0.0
    for step in range(length):
        outputs = [EngineCoreOutput(str(i), [rng.randrange(vocab)]) for i in range(num_requests)]
        start = time.perf_counter()
        for output in processor.process_outputs(outputs).request_outputs:
            streams[output.request_id].put(output)
        if (step + 1) % read_every == 0:
            for stream in streams.values():
                await stream.__anext__()
        if step >= length - window:
            elapsed += time.perf_counter() - start
    return elapsed / window * 1e3


async def main_async(args: argparse.Namespace) -> None:
    tokenizer = build_tokenizer(tempfile.mkdtemp())
    print(f"{'kind':<11} {'requests':>8} {'read every':>10} " + " ".join(f"{f'L={n} ms/step':>16}"
                                                                      for n in args.lengths))
    for kind in (RequestOutputKind.DELTA, RequestOutputKind.CUMULATIVE):
        for read_every in (1, 8):
            costs = [await step_cost_ms(tokenizer, args.num_requests, n, kind, read_every) for n in args.lengths]
            print(f"{kind.name:<11} {args.num_requests:>8} {read_every:>10} " + " ".join(f"{c:>16.2f}" for c in costs))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--num-requests", type=int, default=256)
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 2048])
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
