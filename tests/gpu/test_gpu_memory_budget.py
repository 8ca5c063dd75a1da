"""The KV cache budget leaves room for the CUDA graphs captured after it: the start-up
estimate (``ModelRunner._graph_memory``) against what the real capture then takes, and the
blocks it costs. Skipped without CUDA."""

from __future__ import annotations

import gc
import json

import pytest
import torch

from pagedlm import LLM, SamplingParams
from pagedlm.worker import memory
from pagedlm.worker.model_runner import ModelRunner

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

# The runner's own methods, wrapped afresh by each start (not a wrapper of the last start's).
_GRAPH_MEMORY, _CAPTURE_GRAPHS = ModelRunner._graph_memory, ModelRunner._capture_graphs


@pytest.fixture(scope="module")
def wide_vocab_checkpoint(tmp_path_factory) -> str:
    """A small Llama with a 32k vocabulary (dummy weights): its sampling graph's logits, 1,024
    rows by 32k, are most of what the graphs hold, as in a real model."""
    from pagedlm.demo import build_tokenizer

    out = tmp_path_factory.mktemp("wide_vocab")
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
              "hidden_size": 1024, "intermediate_size": 2048, "num_hidden_layers": 2, "num_attention_heads": 8,
              "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 2048,
              "rms_norm_eps": 1e-5, "torch_dtype": "bfloat16", "tie_word_embeddings": False,
              "bos_token_id": 0, "eos_token_id": 4}
    (out / "config.json").write_text(json.dumps(config))
    build_tokenizer(out)
    return str(out)


def _start(path: str, monkeypatch, estimate: bool) -> tuple[LLM, dict]:
    monkeypatch.setenv(memory.GRAPH_MEMORY_ENV_VARS[0], "1" if estimate else "0")
    seen: dict = {}
    estimate_fn, capture_fn = _GRAPH_MEMORY, _CAPTURE_GRAPHS

    def spy_estimate(runner):
        seen["estimate"] = estimate_fn(runner)
        return seen["estimate"]

    def spy_capture(runner):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        free = torch.cuda.mem_get_info()[0]
        capture_fn(runner)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        free_after, total = torch.cuda.mem_get_info()
        seen["captured"], seen["used_fraction"] = free - free_after, (total - free_after) / total

    monkeypatch.setattr(ModelRunner, "_graph_memory", spy_estimate)
    monkeypatch.setattr(ModelRunner, "_capture_graphs", spy_capture)
    llm = LLM(path, device="cuda", load_format="dummy", max_model_len=256, max_num_seqs=1024,
              gpu_memory_utilization=0.3)
    seen["blocks"] = llm.llm_engine.engine_core.runner.num_blocks
    return llm, seen


def test_graph_memory_estimate_covers_the_capture_and_comes_off_the_kv_budget(wide_vocab_checkpoint, monkeypatch):
    llm, on = _start(wide_vocab_checkpoint, monkeypatch, estimate=True)
    out = llm.generate("hello", SamplingParams(max_tokens=4, temperature=0, ignore_eos=True), use_tqdm=False)[0]
    assert len(out.outputs[0].token_ids) == 4
    runner = llm.llm_engine.engine_core.runner
    per_block = memory.kv_cache_bytes_per_block(runner.config)
    del llm, runner, out
    gc.collect()
    torch.cuda.empty_cache()
    _, off = _start(wide_vocab_checkpoint, monkeypatch, estimate=False)
    assert off["estimate"] == 0
    mib = 1 << 20
    # The estimate covers the real capture. It also counts what the first capture of the
    # process loads for good (kernel modules, the capture stream's cuBLAS workspace), which
    # the real capture then finds in place.
    assert 16 * mib < on["captured"] <= on["estimate"] + 16 * mib, on
    # With the graphs captured the card holds no more than gpu_memory_utilization (the
    # profile's activation peak is the margin left for the steps).
    assert on["used_fraction"] <= 0.3, on
    # ... and the KV cache gives up about the estimate (the two starts' free memory differs by a
    # little: the first engine's CUDA context and libraries stay loaded).
    assert abs((off["blocks"] - on["blocks"]) * per_block - on["estimate"]) <= 256 * mib + per_block, (on, off)
