"""Decoders with heads against transformers (float32, CPU): Llama / Qwen2 (and Mistral,
Qwen3, Gemma 2) *ForSequenceClassification (the ``score`` linear on the last token) through LLM.classify
(softmax over 3 labels, sigmoid of 1) and, with one label, as cross-encoders through LLM.score
(the tokenizer's pair encoding, no token types); a Qwen2ForRewardModel (vLLM's MLP head on every
token) through LLM.reward against a reference built from transformers' Qwen2Model; and the
refusals."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from pagedlm import LLM, PoolingParams
from pagedlm.config import ConfigError

sys.path.insert(0, str(Path(__file__).parent))
from decoder_classifier_helpers import (TEXTS, build_decoder_classifier, build_reward_model,  # noqa: E402
                                        hf_decoder_logits)

TOL = 1e-5
QUERY = "what is the capital of France"
ARCHS = ["LlamaForSequenceClassification", "Qwen2ForSequenceClassification"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[tuple[str, int], Path]:
    root = tmp_path_factory.mktemp("deccls")
    return {(arch, n): build_decoder_classifier(root / f"{arch}_{n}", arch, n, seed=i * 2 + n)
            for i, arch in enumerate(ARCHS) for n in (1, 3)}


@pytest.fixture(scope="module")
def llms(checkpoints) -> dict[tuple[str, int], LLM]:
    return {key: LLM(str(path), device="cpu") for key, path in checkpoints.items()}


@pytest.fixture(scope="module")
def reward(tmp_path_factory):
    model_dir, reference = build_reward_model(tmp_path_factory.mktemp("rm") / "rm", seed=7)
    return LLM(str(model_dir), device="cpu"), reference


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("num_labels", [1, 3])
def test_classify_matches_transformers_last_token(llms, checkpoints, arch, num_labels):
    """Prompts of different lengths in one batch: the head on each prompt's last token."""
    llm, model_dir = llms[(arch, num_labels)], checkpoints[(arch, num_labels)]
    config = llm.llm_engine.model_config.pooler_config
    assert llm.llm_engine.model_config.runner == "pooling"
    assert config.pooling_type == "LAST"
    assert config.tasks == (("classify", "score") if num_labels == 1 else ("classify",))
    assert config.id2label == ("label_a", "label_b", "label_c")[:num_labels]
    ref = hf_decoder_logits(model_dir, TEXTS)
    activation = torch.sigmoid if num_labels == 1 else (lambda x: torch.softmax(x, -1))
    outs = llm.classify(TEXTS, use_tqdm=False)
    assert len({len(o.prompt_token_ids) for o in outs}) == len(TEXTS)
    assert all(o.outputs.num_classes == num_labels for o in outs)
    torch.testing.assert_close(torch.tensor([o.outputs.probs for o in outs]), activation(ref), atol=TOL, rtol=0)
    raw = llm.classify(TEXTS, pooling_params=PoolingParams(use_activation=False), use_tqdm=False)
    torch.testing.assert_close(torch.tensor([o.outputs.probs for o in raw]), ref, atol=TOL, rtol=0)


# The other decoders pagedlm registers a *ForSequenceClassification for (3 labels, raw logits).
OTHER_ARCHS = {
    "MistralForSequenceClassification": dict(sliding_window=None),
    "Qwen3ForSequenceClassification": dict(head_dim=16),
    "Gemma2ForSequenceClassification": dict(head_dim=16, query_pre_attn_scalar=24, sliding_window=8,
                                            attn_logit_softcapping=2.0, final_logit_softcapping=3.0,
                                            attn_implementation="eager"),
}


@pytest.mark.parametrize("arch", sorted(OTHER_ARCHS))
def test_other_decoder_classifiers_match_transformers(tmp_path, arch):
    model_dir = build_decoder_classifier(tmp_path / arch, arch, 3, seed=5, **OTHER_ARCHS[arch])
    llm = LLM(str(model_dir), device="cpu")
    outs = llm.classify(TEXTS, pooling_params=PoolingParams(use_activation=False), use_tqdm=False)
    torch.testing.assert_close(torch.tensor([o.outputs.probs for o in outs]), hf_decoder_logits(model_dir, TEXTS),
                               atol=TOL, rtol=0)


def test_head_reads_the_last_token_not_the_first(llms, checkpoints):
    """The check above can tell the pooled position: the first token's logits differ."""
    from transformers import AutoModelForSequenceClassification

    key = (ARCHS[0], 3)
    model = AutoModelForSequenceClassification.from_pretrained(str(checkpoints[key]), dtype=torch.float32).eval()
    ids = llms[key].get_tokenizer()(TEXTS[1], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state[0]
        first, last = model.score(hidden[0]), model.score(hidden[-1])
    (out,) = llms[key].classify(TEXTS[1], pooling_params=PoolingParams(use_activation=False), use_tqdm=False)
    assert (first - last).abs().max() > 1e-2
    torch.testing.assert_close(torch.tensor(out.outputs.probs), last, atol=TOL, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_cross_encoder_score_matches_transformers(llms, checkpoints, arch):
    """One label: score(query, documents) is the sigmoid of transformers' logit of the pair as
    the tokenizer encodes it (``<bos> query <bos> document``), with no token types."""
    llm, model_dir = llms[(arch, 1)], checkpoints[(arch, 1)]
    ref = torch.sigmoid(hf_decoder_logits(model_dir, [(QUERY, t) for t in TEXTS])[:, 0])
    outs = llm.score(QUERY, TEXTS, use_tqdm=False)
    torch.testing.assert_close(torch.tensor([o.outputs.score for o in outs]), ref, atol=TOL, rtol=0)
    tokenizer = llm.get_tokenizer()
    assert outs[0].prompt_token_ids == tokenizer(QUERY, TEXTS[0])["input_ids"]
    assert outs[0].prompt_token_ids.count(tokenizer.bos_token_id) == 2
    pairwise = llm.score(TEXTS[::-1], TEXTS, use_tqdm=False)
    ref2 = torch.sigmoid(hf_decoder_logits(model_dir, list(zip(TEXTS[::-1], TEXTS)))[:, 0])
    torch.testing.assert_close(torch.tensor([o.outputs.score for o in pairwise]), ref2, atol=TOL, rtol=0)


def test_use_pad_token_false_joins_the_texts(checkpoints):
    """vLLM's rule for 'LLM as reranker' configs (use_pad_token: false): text_1 + text_2 as one text."""
    model_dir = checkpoints[(ARCHS[1], 1)]
    llm = LLM(str(model_dir), device="cpu", hf_overrides={"use_pad_token": False})
    (out,) = llm.score(QUERY, TEXTS[0], use_tqdm=False)
    assert out.prompt_token_ids == llm.get_tokenizer()(QUERY + TEXTS[0])["input_ids"]
    ref = torch.sigmoid(hf_decoder_logits(model_dir, [QUERY + TEXTS[0]])[0, 0])
    assert abs(out.outputs.score - ref.item()) < TOL


def test_reward_per_token_matches_reference(reward):
    """vLLM's Qwen2ForRewardModel: Qwen2Model, then Linear-ReLU-Linear on every token; reward()
    gives [num_tokens, 1] through the sigmoid (the token_classify activation), raw with
    use_activation=False."""
    llm, reference = reward
    config = llm.llm_engine.model_config.pooler_config
    assert config.pooling_type == "ALL" and config.tasks == ("token_classify",)
    tokenizer = llm.get_tokenizer()
    outs = llm.reward(TEXTS, use_tqdm=False)
    raw = llm.reward(TEXTS, pooling_params=PoolingParams(use_activation=False), use_tqdm=False)
    encoded = llm.encode(TEXTS[:1], pooling_task="token_classify", use_tqdm=False)
    for out, raw_out, text in zip(outs, raw, TEXTS):
        ids = tokenizer(text)["input_ids"]
        assert out.prompt_token_ids == ids
        with torch.no_grad():
            ref = reference(torch.tensor([ids]))[0]  # [num_tokens, 1]
        assert out.outputs.data.shape == (len(ids), 1)
        torch.testing.assert_close(out.outputs.data, torch.sigmoid(ref), atol=TOL, rtol=0)
        torch.testing.assert_close(raw_out.outputs.data, ref, atol=TOL, rtol=0)
    torch.testing.assert_close(encoded[0].outputs.data, outs[0].outputs.data, atol=0, rtol=0)


def test_refusals(llms, checkpoints, reward, llama_checkpoint, tmp_path):
    rm, _ = reward
    for task_call in (lambda: rm.classify("hello", use_tqdm=False), lambda: rm.embed("hello", use_tqdm=False),
                      lambda: rm.score("a", "b", use_tqdm=False)):
        with pytest.raises(ValueError, match="reward model and does not support"):
            task_call()
    with pytest.raises(ValueError, match="needs a reward model"):
        llms[(ARCHS[0], 1)].reward("hello", use_tqdm=False)
    with pytest.raises(ValueError, match="num_labels == 1"):
        llms[(ARCHS[0], 3)].score(QUERY, TEXTS, use_tqdm=False)
    with pytest.raises(ValueError, match="no second token type"):  # a decoder takes no token types
        llms[(ARCHS[0], 1)].encode({"prompt_token_ids": [0, 5, 6, 0, 7], "token_type_ids": [0, 0, 0, 1, 1]},
                                   pooling_task="score", use_tqdm=False)
    gen = LLM(llama_checkpoint, device="cpu", max_model_len=128, num_gpu_blocks_override=32)
    with pytest.raises(ValueError, match="only supported for pooling models"):
        gen.reward("hello", use_tqdm=False)
    with pytest.raises(ConfigError, match="pooling_type LAST"):
        LLM(str(checkpoints[(ARCHS[0], 1)]), device="cpu", pooler_config={"pooling_type": "CLS"})
    with pytest.raises(ConfigError, match="classifier_from_token"):  # vLLM's Qwen3-Reranker conversion
        LLM(str(checkpoints[(ARCHS[1], 1)]), device="cpu",
            hf_overrides={"classifier_from_token": ["no", "yes"], "method": "from_2_way_softmax"})
    with pytest.raises(ConfigError, match="pooling_type ALL"):
        LLM(str(rm.llm_engine.model_config.model), device="cpu", pooler_config={"pooling_type": "LAST"})
