"""Start-up warm-up: a few short requests through the engine's real step path before it
takes any.

The start-up profile run (one long sequence) and the CUDA-graph capture compile most GPU
kernels, but not those only real steps run: step preparation for batches of 1, of a multiple
of 16 and of other sizes (Triton specializes on them), the prefill attention tiles of short
contexts, a prefill chunk after a cached prefix beside running decodes, the eager sampler with
and without temperature. On an empty Triton cache those compiles took 2.5 s inside the first
workload on an H200 (BENCHMARKS.md, "the first workload after start-up pays for Triton
compiles"), and the first requests' TTFT carried them. The waves below run them at start-up
instead. The engine core then starts from a fresh scheduler (empty prefix cache, zeroed
counters, every block free) and the workers re-seed their sampling generator, so nothing of
the warm-up shows in the outputs or the metrics.

On by default on CUDA for generating models; ``PAGEDLM_WARM_UP=0`` turns it off, ``=1``
forces it (on CPU too, where it compiles nothing: the tests check it there).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from pagedlm.config import EngineConfig
from pagedlm.engine.request import Request
from pagedlm.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

MAX_TOKENS = 4  # each warm-up request's output: a prefill step, then decode steps
REQUEST_ID_PREFIX = "pagedlm-warm-up-"


def enabled(config: EngineConfig) -> bool:
    value = os.environ.get("PAGEDLM_WARM_UP")
    if value not in (None, "", "0", "1"):
        raise ValueError(f"PAGEDLM_WARM_UP must be 0 or 1, not {value!r}")
    if config.model_config.runner != "generate":  # pooling requests sample nothing
        return False
    if value:
        return value == "1"
    return config.device_config.device == "cuda"


@dataclass(frozen=True)
class Wave:
    """Requests added together, then (``late``) after the wave's first step, so that their
    prefill chunks run beside the first ones' decodes."""

    first: list[Request]
    late: list[Request]


class _Builder:
    """Warm-up requests sized to the engine: at most max_num_seqs per wave, prompts that fit
    max_model_len and one step's token budget, a wave's KV inside the block pool."""

    def __init__(self, config: EngineConfig, num_blocks: int) -> None:
        sched, cache = config.scheduler_config, config.cache_config
        self.block_size = cache.block_size
        self.max_seqs = sched.max_num_seqs
        # Room for the outputs and a step's draft tokens; a whole prompt in one step.
        self.max_prompt = min(sched.max_model_len - MAX_TOKENS - sched.num_spec_tokens - 1,
                              sched.max_num_batched_tokens)
        self.num_blocks = num_blocks
        self.vocab = config.model_config.vocab_size
        self.num_prompts = self.num_requests = 0

    def blocks(self, prompt_len: int) -> int:
        """KV blocks one request of ``prompt_len`` prompt tokens may hold (with slack)."""
        return -(-(prompt_len + MAX_TOKENS + 1) // self.block_size) + 1

    def fit(self, num: int, prompt_len: int) -> tuple[int, int]:
        """(requests, prompt length) for a wave of ``num`` prompts of ``prompt_len`` tokens."""
        prompt_len = max(1, min(prompt_len, self.max_prompt))
        num = min(num, self.max_seqs, self.num_blocks // self.blocks(prompt_len))
        return num, prompt_len

    def prompt(self, length: int) -> list[int]:
        """Token ids no other warm-up prompt starts with."""
        self.num_prompts += 1
        return [(self.num_prompts * 7919 + 31 * i) % self.vocab for i in range(length)]

    def request(self, prompt: list[int], params: SamplingParams) -> Request:
        self.num_requests += 1
        return Request(f"{REQUEST_ID_PREFIX}{self.num_requests}", prompt, params)


def waves(config: EngineConfig, num_blocks: int) -> list[Wave]:
    build = _Builder(config, num_blocks)
    if build.max_prompt < 1:
        return []
    greedy = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    sampled = SamplingParams(temperature=1.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    filtered = SamplingParams(temperature=0.8, top_p=0.9, top_k=20, max_tokens=MAX_TOKENS, ignore_eos=True)
    penalized = SamplingParams(temperature=0.0, presence_penalty=0.5, frequency_penalty=0.5, repetition_penalty=1.1,
                               max_tokens=MAX_TOKENS, ignore_eos=True)
    result = []
    # One sequence: a short prefill, then batch-1 decodes.
    num, length = build.fit(1, 5)
    if num:
        result.append(Wave([build.request(build.prompt(length), greedy)], []))
    # A few sequences whose prefill is long enough for the prefill attention kernel (a short
    # context); then, beside their decodes, two-token chunks after their cached prefixes.
    num, length = build.fit(4, 300)
    if num:
        prompts = [build.prompt(length) for _ in range(num)]
        cached = max(0, length - 2) // build.block_size * build.block_size
        num_late = max(0, min(num, build.fit(num + 3, length)[0] - num)) if length >= 2 else 0  # up to 3 more
        late = [build.request(prompts[i][:cached] + build.prompt(2), filtered) for i in range(num_late)]
        result.append(Wave([build.request(p, sampled) for p in prompts], late))
    # A batch of 16 (Triton's divisibility specialization), with penalties.
    num, length = build.fit(16, 8)
    if num:
        result.append(Wave([build.request(build.prompt(length), penalized) for _ in range(num)], []))
    return result


def run(core, num_blocks: int) -> None:
    """Run the waves through ``core`` (an EngineCore) until every warm-up request finished."""
    start = time.perf_counter()
    num_requests = num_steps = 0
    unexpected: list[str] = []
    for wave in waves(core.config, num_blocks):
        pending = list(wave.late)
        for request in wave.first:
            core.add_request(request)
        num_requests += len(wave.first) + len(wave.late)
        while core.has_unfinished_requests() or pending:
            outputs = core.step()
            num_steps += 1
            unexpected += [f"{o.req_id}: {o.finish_reason} {o.error or ''}".strip() for o in outputs
                           if o.finished and o.finish_reason != "length"]
            for request in pending:
                core.add_request(request)
            pending = []
    if unexpected:  # sized to fit: a finish other than max_tokens means the sizing missed a limit
        logger.warning("Warm-up requests finished early: %s", "; ".join(unexpected))
    logger.info("Warm-up: %d requests in %d steps, %.2f s", num_requests, num_steps, time.perf_counter() - start)
