"""The GPU start-up's measurements of what the steps need besides the KV cache, which
``memory.gpu_num_blocks`` then leaves out of the cache's budget:

- ``profile_run``: one forward at the largest step the scheduler can produce, then the logits
  and the costliest sampling at the most rows a step samples (vLLM's dummy sampler run);
- ``graph_memory``: the CUDA graphs, captured after the KV cache over its addresses, so
  measured here by capturing each ladder's largest graph over a scratch cache (vLLM's
  CUDA-graph memory profiling).

Both run over a scratch KV cache (``scratch_kv_cache``) that the real cache replaces.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

import torch

from pagedlm.attention.metadata import AttentionMetadata
from pagedlm.forward_context import set_forward_context
from pagedlm.models.pipeline import IntermediateTensors
from pagedlm.sample.metadata import build_sampling_metadata
from pagedlm.sample.sampler import Sampler
from pagedlm.sampling_params import SamplingParams
from pagedlm.worker import memory
from pagedlm.worker.distributed import is_first_pp_rank

if TYPE_CHECKING:
    from pagedlm.worker.model_runner import ModelRunner


@contextmanager
def scratch_kv_cache(runner: "ModelRunner", num_blocks: int) -> Iterator[int]:
    """Every attention layer gets a KV cache of ``num_blocks`` blocks for the block; yields
    their bytes. They are dropped on exit."""
    dtype = memory.kv_cache_dtype(runner.config)
    layers = runner.model.attention_layers()
    for attn in layers:
        attn.kv_cache = torch.zeros(2, num_blocks, runner.block_size, attn.num_kv_heads, attn.head_dim, dtype=dtype,
                                    device=runner.device)
    try:
        yield sum(attn.kv_cache.numel() * attn.kv_cache.element_size() for attn in layers)
    finally:
        for attn in layers:
            attn.kv_cache = None


def profile_run(runner: "ModelRunner") -> int:
    """A forward (and the sampling) at the largest step the scheduler can produce, over a
    scratch KV cache just large enough for it; returns that cache's bytes (freed on return)."""
    config = runner.config
    num_tokens = config.scheduler_config.max_num_batched_tokens
    device = runner.device
    input_ids = torch.zeros(num_tokens, dtype=torch.long, device=device)
    positions = torch.arange(num_tokens, device=device) % config.model_config.max_model_len
    num_blocks = -(-num_tokens // runner.block_size)
    meta = AttentionMetadata(
        slot_mapping=torch.arange(num_tokens, device=device),
        query_start_loc=torch.tensor([0, num_tokens], dtype=torch.int32, device=device),
        seq_lens=torch.tensor([num_tokens], dtype=torch.int32, device=device),
        block_tables=torch.arange(num_blocks, dtype=torch.int32, device=device).unsqueeze(0),
        max_query_len=num_tokens, max_seq_len=num_tokens, num_actual_tokens=num_tokens,
    )
    with scratch_kv_cache(runner, num_blocks) as scratch, torch.inference_mode(), set_forward_context(meta):
        intermediate = None
        if not is_first_pp_rank():  # stand-in for what the previous stage would send
            zeros = torch.zeros(num_tokens, config.model_config.hf_config.hidden_size,
                                dtype=config.model_config.torch_dtype, device=device)
            intermediate = IntermediateTensors(zeros, zeros.clone())
        # The persistent batch's penalty state ([rows, vocab] output counts and prompt mask),
        # allocated at run time by the first request with a penalty, lives beside every later
        # step's activations.
        rows = config.scheduler_config.max_num_seqs
        penalty_state = (torch.zeros(rows, runner.vocab_size, dtype=torch.int32, device=device),
                         torch.zeros(rows, runner.vocab_size, dtype=torch.bool, device=device))
        hidden = runner._call_model(input_ids, positions, intermediate)
        # Pooling models have no LM head; a pipeline stage but the last has no logits.
        if runner.pooler is None and not isinstance(hidden, IntermediateTensors):
            profile_sampling(runner, hidden, penalty_state)
    return scratch


def profile_sampling(runner: "ModelRunner", hidden: torch.Tensor,
                     penalty_state: tuple[torch.Tensor, torch.Tensor]) -> None:
    """The logits and the costliest sampling a step can run, at the most rows a step samples
    (vLLM's dummy sampler run): every processor that holds [rows, vocab] tensors (penalties,
    min-p, the top-k / top-p sort) and --max-logprobs logprobs per row. At 1,024 rows of a 128k
    vocabulary each such float32 tensor is 0.5 GiB. The built-in processors only: custom
    logits processors (user code) need the persistent batch's real rows."""
    config, vocab = runner.config, runner.vocab_size
    rows = min(hidden.shape[0], max_sampled_rows(config))
    logits = runner.model.compute_logits(hidden[-rows:])
    max_logprobs = config.model_config.max_logprobs
    params = SamplingParams(
        temperature=0.5, top_p=0.9, top_k=max(1, vocab - 1), min_p=0.01, presence_penalty=0.1,
        frequency_penalty=0.1, repetition_penalty=1.1,
        logprobs=vocab if max_logprobs < 0 else min(max_logprobs, vocab))
    index = torch.arange(rows, device=runner.device) % penalty_state[0].shape[0]
    metadata = build_sampling_metadata(
        [params] * rows, [[]] * rows, [[]] * rows, [None] * rows, vocab, runner.device,
        (penalty_state[0].index_select(0, index), penalty_state[1].index_select(0, index)))
    Sampler(logprobs_mode=runner.sampler.logprobs_mode)(logits, metadata)


def max_sampled_rows(config) -> int:
    """The most rows a step samples: one per request, plus k drafts for each request that
    speculates, and no request speculates in a step with disable_by_batch_size running."""
    max_num_seqs, spec = config.scheduler_config.max_num_seqs, config.speculative_config
    if spec is None:
        return max_num_seqs
    speculating = max_num_seqs if spec.disable_by_batch_size is None else min(max_num_seqs,
                                                                              spec.disable_by_batch_size - 1)
    return max_num_seqs + speculating * spec.num_speculative_tokens


def graph_memory(runner: "ModelRunner") -> int:
    """What the CUDA graphs will hold, in bytes, measured before the KV cache is sized (they
    are captured after it, over its addresses): every ladder's largest graph (decode and its
    sampling graph; with speculation the verify graphs and a draft model's) captured over a
    one-block scratch cache as the real capture does, then dropped. A ladder's graphs share
    one pool, captured largest first, and the smaller ones write their outputs into the
    largest one's (cuda_graphs.capture_ladder), so they live in its scratch. What each further
    graph holds of its own (its instantiated launches) is left out: about 0.1-0.6 MB a graph
    on an H200, 0.23 GiB over the 415 graphs of Llama-3.1-8B with a 1B draft (BENCHMARKS.md).
    ``PAGEDLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=0`` (or the ``VLLM_`` name) leaves it out."""
    if not runner._graph_sizes() or not memory.estimate_graph_memory():
        return 0
    proposer = runner.spec.proposer if runner.spec is not None else None
    with scratch_kv_cache(runner, 1):
        if proposer is not None:  # a draft's own cache (the target's block ids), for its graphs
            proposer.initialize_kv_cache(1)
        free_before = _settled_free_memory()
        runner._capture_graphs(largest_only=True)
        measured = free_before - _settled_free_memory()
        runner._drop_graphs()
        if proposer is not None:
            proposer.initialize_kv_cache(0)  # dropped: the real one is made with the target's
    torch.cuda.empty_cache()
    return max(0, measured)


def _settled_free_memory() -> int:
    """The card's free memory once queued work is done and torch's cache holds nothing unused
    (the warm-up forwards' eager scratch is not the graphs')."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return torch.cuda.mem_get_info()[0]
