"""The CPU KV cache costs no start-up fill and no memory until its blocks are written
(``memory.zeroed_kv_cache``: an anonymous mapping instead of ``torch.zeros``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from pagedlm.worker.memory import zeroed_kv_cache


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float8_e4m3fn])
def test_zeroed_kv_cache_is_a_writable_contiguous_tensor_of_zeros(dtype):
    shape = (2, 5, 16, 2, 8)
    cache = zeroed_kv_cache(shape, dtype, torch.device("cpu"))
    assert cache.shape == shape and cache.dtype == dtype and cache.is_contiguous()
    assert torch.count_nonzero(cache.float()) == 0
    cache[1, 3, 7] = 2.0
    assert cache.float().sum().item() == 2.0 * 2 * 8
    view = cache[0]
    del cache  # a view keeps the mapping alive
    assert torch.count_nonzero(view.float()) == 0


def test_zeroed_kv_cache_of_no_blocks():
    assert zeroed_kv_cache((2, 0, 16, 2, 8), torch.bfloat16, torch.device("cpu")).numel() == 0


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads the resident set from /proc")
def test_cpu_kv_cache_pages_are_resident_only_once_written():
    size = 512 << 20
    shape = (2, size // (2 * 16 * 8 * 128 * 2), 16, 8, 128)  # 512 MiB of bf16 blocks
    before = _resident_bytes()
    cache = zeroed_kv_cache(shape, torch.bfloat16, torch.device("cpu"))
    allocated = _resident_bytes()
    assert allocated - before < 32 << 20, "the cache was filled at allocation"
    cache[:, :64] = 1.0  # 64 blocks: 4 MiB
    written = _resident_bytes()
    assert (4 << 20) <= written - allocated < 64 << 20


class _FakeCudaMemory:
    """torch.cuda's memory counters for a card of `total` bytes with `outside` bytes held
    outside the caching allocator (the CUDA context, cuBLAS workspaces)."""

    def __init__(self, total: int, outside: int) -> None:
        self.total, self.outside, self.allocated, self.peak = total, outside, 0, 0

    def alloc(self, n: int) -> None:
        self.allocated += n
        self.peak = max(self.peak, self.allocated)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (self.total - self.outside - self.allocated, self.total))
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: self.allocated)
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: self.peak)
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: setattr(self, "peak", self.allocated))
        monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
        monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)


def test_gpu_budget_counts_the_profile_runs_activations_but_not_its_scratch_kv(tmp_path, monkeypatch):
    """The profile run's scratch KV cache is replaced by the real one: only what the forward
    itself held at its peak comes off the KV budget."""
    from pagedlm.demo import build_tiny_checkpoint
    from pagedlm.engine.arg_utils import EngineArgs
    from pagedlm.worker import memory

    config = EngineArgs(model=str(build_tiny_checkpoint(tmp_path)), device="cpu",
                        gpu_memory_utilization=0.5).create_engine_config()
    gib = 1 << 30
    fake = _FakeCudaMemory(total=80 * gib, outside=gib)
    fake.install(monkeypatch)
    fake.alloc(10 * gib)  # the weights
    scratch, activations = 3 * gib, 2 * gib

    def profile_run() -> int:
        fake.alloc(scratch)
        fake.alloc(activations)
        fake.alloc(-activations)
        fake.alloc(-scratch)
        return scratch

    per_block = memory.kv_cache_bytes_per_block(config)
    expect = (40 * gib - 11 * gib - activations) // per_block
    assert memory.gpu_num_blocks(config, profile_run) == expect
    # The CUDA graphs, captured after the KV cache, come off its budget too.
    graphs = gib // 2
    assert memory.gpu_num_blocks(config, profile_run, lambda: graphs) == (40 * gib - 11 * gib - activations
                                                                          - graphs) // per_block


@pytest.mark.parametrize("env, expected", [({}, True), ({"PAGEDLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS": "0"}, False),
                                           ({"VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS": "0"}, False),
                                           ({"VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS": "1"}, True),
                                           ({"PAGEDLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS": "yes"}, None)])
def test_graph_memory_estimate_switch(monkeypatch, env, expected):
    from pagedlm.config import ConfigError
    from pagedlm.worker import memory

    for name in memory.GRAPH_MEMORY_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if expected is None:
        with pytest.raises(ConfigError, match="must be 0 or 1"):
            memory.estimate_graph_memory()
    else:
        assert memory.estimate_graph_memory() is expected


def test_profile_run_returns_the_bytes_of_its_scratch_kv_cache(tmp_path):
    """The GPU start-up's profile forward (run here on CPU, where start-up skips it): a step of
    max_num_batched_tokens tokens over a scratch cache of just enough blocks, which it frees and
    reports, so the budget does not count it as activations."""
    from pagedlm.demo import build_tiny_checkpoint
    from pagedlm.engine.arg_utils import EngineArgs
    from pagedlm.worker import memory
    from pagedlm.worker.model_runner import ModelRunner

    config = EngineArgs(model=str(build_tiny_checkpoint(tmp_path)), device="cpu", max_model_len=96,
                        max_num_batched_tokens=100, max_num_seqs=4).create_engine_config()
    runner = ModelRunner(config)
    blocks = -(-100 // config.cache_config.block_size)
    assert runner._profile_run() == blocks * memory.kv_cache_bytes_per_block(config)
    assert all(attn.kv_cache is None for attn in runner.model.attention_layers())


@pytest.mark.parametrize("max_logprobs, expected_k", [(5, 5), (-1, "vocab")])
def test_profile_run_samples_max_num_seqs_rows_through_every_costly_processor(tmp_path, monkeypatch, max_logprobs,
                                                                              expected_k):
    """The profile's peak covers sampling (vLLM's dummy sampler run): max_num_seqs rows of
    logits through penalties over the persistent batch's [rows, vocab] state, min-p, the
    top-k / top-p sort, and --max-logprobs logprobs (-1: the whole vocabulary)."""
    from pagedlm.demo import build_tiny_checkpoint
    from pagedlm.engine.arg_utils import EngineArgs
    from pagedlm.sample.sampler import Sampler
    from pagedlm.worker.model_runner import ModelRunner

    config = EngineArgs(model=str(build_tiny_checkpoint(tmp_path)), device="cpu", max_model_len=96,
                        max_num_batched_tokens=100, max_num_seqs=6,
                        max_logprobs=max_logprobs).create_engine_config()
    runner = ModelRunner(config)
    seen = []
    original = Sampler.__call__

    def spy(self, logits, metadata):
        out = original(self, logits, metadata)
        seen.append((logits.shape, metadata, out))
        return out

    monkeypatch.setattr(Sampler, "__call__", spy)
    runner._profile_run()
    (shape, md, out), = seen
    vocab = runner.vocab_size
    assert shape == (6, vocab)
    assert not md.all_greedy and md.filter_rows is None and md.top_k is not None and md.top_p is not None
    assert md.min_p is not None and md.penalties is not None
    assert md.penalties.output_counts.shape == md.penalties.prompt_mask.shape == (6, vocab)
    k = vocab if expected_k == "vocab" else expected_k
    assert md.max_num_logprobs == k and out.logprobs.token_ids.shape == (6, k + 1)


@pytest.mark.parametrize("spec, expected", [
    (None, 64),
    ({"method": "ngram", "num_speculative_tokens": 3, "disable_by_batch_size": None}, 64 * 4),
    # no request speculates in a step with 9 running: 8 requests verify 3 drafts each, and
    # the others (admitted in the same step) sample one row each
    ({"method": "ngram", "num_speculative_tokens": 3, "disable_by_batch_size": 9}, 64 + 8 * 3),
    ({"method": "ngram", "num_speculative_tokens": 3, "disable_by_batch_size": 500}, 64 * 4)])
def test_profile_samples_the_most_rows_a_step_samples(tmp_path, spec, expected):
    """With speculation a verify step samples 1 + k rows per speculating request; with
    disable_by_batch_size at most that many - 1 requests speculate in a step (the default, 32
    for k = 3, had made the start-up profile sample 4 x 1,024 rows of a 128k vocabulary and
    take 26 GiB of an H200 from the KV cache)."""
    from pagedlm.demo import build_tiny_checkpoint
    from pagedlm.engine.arg_utils import EngineArgs
    from pagedlm.worker.profile_run import max_sampled_rows

    config = EngineArgs(model=str(build_tiny_checkpoint(tmp_path)), device="cpu", max_model_len=96,
                        max_num_seqs=64, speculative_config=spec).create_engine_config()
    assert max_sampled_rows(config) == expected


@pytest.mark.parametrize("device, env, expected", [("cuda", {}, True), ("cpu", {}, False),
                                                   ("cuda", {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:64"}, False),
                                                   ("cuda", {"PYTORCH_ALLOC_CONF": "expandable_segments:False"}, False)])
def test_expandable_segments_unless_the_user_configured_the_allocator(monkeypatch, device, env, expected):
    from pagedlm.worker import memory

    for name in memory.ALLOC_CONF_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    calls = []
    monkeypatch.setattr(memory, "set_allocator_settings", calls.append)
    assert memory.use_expandable_segments(torch.device(device)) is expected
    assert calls == (["expandable_segments:True"] if expected else [])


def test_profile_run_with_custom_logits_processors(tmp_path, monkeypatch):
    """The profile's sampling pass runs the built-in processors only: a custom logits
    processor (user code) needs the persistent batch's rows, which a profile run has not."""
    import sys

    from pagedlm.demo import build_tiny_checkpoint
    from pagedlm.engine.arg_utils import EngineArgs
    from pagedlm.worker.model_runner import ModelRunner

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    config = EngineArgs(model=str(build_tiny_checkpoint(tmp_path)), device="cpu", max_model_len=96,
                        max_num_batched_tokens=100, max_num_seqs=4,
                        logits_processors=["custom_logits_procs:DummyLogitsProcessor"]).create_engine_config()
    runner = ModelRunner(config)
    assert runner.custom_logits is not None and "custom_logits_procs" in sys.modules
    assert runner._profile_run() > 0
