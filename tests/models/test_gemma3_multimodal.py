"""Gemma3ForConditionalGeneration checkpoints (the layout of Gemma 3 4B/12B/27B: ``text_config``
in config.json, the language model under ``language_model.model.*`` or transformers 5's
``model.language_model.*``, a SigLIP vision tower beside it) served as text-only models: token
ids and logprobs equal transformers' text generation on the same checkpoint; the vision weights
are skipped with one log line; image inputs are refused (typed error offline, 400 on the server)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from models.test_parity import PROMPTS, check_close, run

from pagedlm import LLM, SamplingParams
from pagedlm.engine.input_processor import InvalidRequestError

MAX_TOKENS = 10
TEXT_CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24, sliding_window=8,
                   sliding_window_pattern=2, max_position_embeddings=512, rms_norm_eps=1e-6,
                   rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
                                    "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}})
VISION_CONFIG = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                     image_size=28, patch_size=14)


def _build(out: Path) -> Path:
    """A tiny random multimodal Gemma 3 with the demo tokenizer (weights as build_tiny_checkpoint
    draws them: large enough that greedy parity is meaningful)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    from pagedlm.demo import build_tokenizer

    tokenizer = build_tokenizer(out)
    config = Gemma3Config(text_config=dict(TEXT_CONFIG, vocab_size=len(tokenizer),
                                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id),
                          vision_config=VISION_CONFIG, mm_tokens_per_image=4, image_token_index=len(tokenizer) - 1,
                          boi_token_index=len(tokenizer) - 3, eoi_token_index=len(tokenizer) - 2)
    torch.manual_seed(17)
    model = Gemma3ForConditionalGeneration(config).to(torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and not name.endswith(".bias"):
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.15 if p.dim() > 1 else 0.1)
    model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def multimodal(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("gemma3_mm"))


@pytest.fixture(scope="module")
def multimodal_v5_layout(multimodal: Path, tmp_path_factory) -> Path:
    """The same checkpoint with transformers 5's prefixes (model.language_model.*, model.vision_tower.*)."""
    import shutil

    from safetensors.torch import load_file, save_file

    out = tmp_path_factory.mktemp("gemma3_mm_v5")
    shutil.copytree(multimodal, out, dirs_exist_ok=True)
    state = load_file(str(out / "model.safetensors"))
    renamed = {("model." + k.replace("language_model.model.", "language_model.")
                if not k.startswith("lm_head.") else k): v for k, v in state.items()}
    assert any(k.startswith("model.language_model.layers.") for k in renamed)
    save_file(renamed, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def reference(multimodal: Path):
    """transformers' Gemma3ForConditionalGeneration generating from text alone."""
    from transformers import Gemma3ForConditionalGeneration

    model = Gemma3ForConditionalGeneration.from_pretrained(str(multimodal), dtype=torch.float32).eval()
    results = []
    for prompt in PROMPTS:
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=MAX_TOKENS, min_new_tokens=MAX_TOKENS,
                                 do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0)
        results.append((out.sequences[0, len(prompt):].tolist(), [s[0].float().log_softmax(-1) for s in out.logits]))
    return results


@pytest.mark.parametrize("layout", ["legacy", "transformers5"])
def test_text_parity_and_vision_skipped(request, reference, layout, caplog):
    path = request.getfixturevalue("multimodal" if layout == "legacy" else "multimodal_v5_layout")
    logger = logging.getLogger("pagedlm")  # it does not propagate: attach caplog's handler
    logger.addHandler(caplog.handler)
    try:
        llm, outputs = run(str(path), PROMPTS, max_model_len=128)
    finally:
        logger.removeHandler(caplog.handler)
    check_close(reference, outputs, PROMPTS)
    config = llm.llm_engine.model_config.hf_config
    assert config.architectures == ["Gemma3ForConditionalGeneration"] and config.model_type == "gemma3_text"
    skipped = [r.getMessage() for r in caplog.records if "vision tower / projector weights" in r.getMessage()]
    assert len(skipped) == 1 and "skipped 34 vision tower" in skipped[0]  # SigLIP (1 layer) + projector


def test_image_inputs_refused_offline(multimodal):
    llm = LLM(str(multimodal), device="cpu", max_model_len=128)
    image = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
                                         {"type": "text", "text": "What is in the image?"}]}
    with pytest.raises(InvalidRequestError, match="content part type 'image_url' is not supported"):
        llm.chat([image], SamplingParams(max_tokens=2), use_tqdm=False)
    with pytest.raises(InvalidRequestError, match="multi_modal_data"):
        llm.generate({"prompt": "hi", "multi_modal_data": {"image": None}}, use_tqdm=False)
    text = llm.chat([{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
                    SamplingParams(max_tokens=2, ignore_eos=True), use_tqdm=False)[0]
    assert len(text.outputs[0].token_ids) == 2
    assert llm.llm_engine.get_stats().num_free_blocks == llm.llm_engine.get_stats().num_total_blocks


def test_image_inputs_refused_by_the_server(multimodal):
    from fastapi.testclient import TestClient

    from pagedlm.engine.async_llm import AsyncLLM
    from pagedlm.engine_args import EngineArgs
    from pagedlm.entrypoints.openai.api_server import build_app
    from pagedlm.metrics import PrometheusStatLogger

    engine = AsyncLLM.from_engine_args(EngineArgs(model=str(multimodal), max_model_len=128, device="cpu",
                                                  num_gpu_blocks_override=32))
    stats = PrometheusStatLogger("gemma3mm")
    with TestClient(build_app(engine, stats, served_model_names=["gemma3"])) as client:
        image = [{"type": "text", "text": "describe"}, {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]
        resp = client.post("/v1/chat/completions", json={"model": "gemma3", "max_tokens": 2,
                                                         "messages": [{"role": "user", "content": image}]})
        assert resp.status_code == 400, resp.text
        assert "'image_url' is not supported" in resp.json()["error"]["message"]
        resp = client.post("/v1/chat/completions", json={"model": "gemma3", "max_tokens": 2, "ignore_eos": True,
                                                         "messages": [{"role": "user", "content": "describe"}]})
        assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] == 2
