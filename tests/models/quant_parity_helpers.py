"""The quantized-checkpoint parity checks the model tests share: write ``src`` in a format
(the tests' ports of the quantizers' packers), run it in pagedlm, and compare with
transformers running the dequantized weights (float32, CPU). Each returns the LLM for the
caller's assertions on what the layers hold."""

from __future__ import annotations

from pathlib import Path

from pagedlm import LLM

from quant_helpers import FP8, Scheme, write_block_fp8, write_quantized
from test_parity import PROMPTS, check_close, greedy, hf_reference, run
from wna16_helpers import quantize_checkpoint

PARITY_PROMPTS = PROMPTS[:4]
PARITY_TOKENS = 10


def assert_wna16_parity(src: str, tmp_path: Path, fmt: str, **options) -> LLM:
    """AWQ / GPTQ / compressed-tensors pack-quantized at test_parity's tolerance."""
    qdir, refdir = quantize_checkpoint(src, tmp_path / "q", tmp_path / "ref", fmt, **options)
    return _assert_parity(qdir, refdir)


def assert_block_fp8_parity(src: str, tmp_path: Path, block: tuple[int, int] = (16, 16)) -> LLM:
    """Block-wise fp8 (W8A16: the checkpoint's weights exactly) at test_parity's tolerance."""
    qdir, refdir = tmp_path / "q", tmp_path / "ref"
    write_block_fp8(src, qdir, refdir, block)
    return _assert_parity(qdir, refdir)


def assert_fp8_token_parity(src: str, tmp_path: Path) -> LLM:
    """compressed-tensors fp8 with per-channel weights and per-token activations, against the
    dequantized weights with the activations fake-quantized, at test_quant_parity's tolerance."""
    from test_quant_parity import check_close as check_close_flips
    from test_quant_parity import hf_reference as hf_reference_fake_quant

    scheme = Scheme("compressed-tensors", FP8, per_channel=True, activations="token")
    qdir, oracle = tmp_path / "q", tmp_path / "oracle"
    write_quantized(src, qdir, oracle, scheme, PROMPTS)
    llm = LLM(str(qdir), device="cpu", max_model_len=128)
    outputs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], greedy(), use_tqdm=False)
    check_close_flips(hf_reference_fake_quant(str(oracle), scheme, {}), outputs, PROMPTS)
    return llm


def _assert_parity(qdir: Path, refdir: Path) -> LLM:
    ref = hf_reference(str(refdir), PARITY_PROMPTS, PARITY_TOKENS)
    llm, outputs = run(str(qdir), PARITY_PROMPTS, max_model_len=128)
    check_close(ref, outputs, PARITY_PROMPTS)
    return llm
