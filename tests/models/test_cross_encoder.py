"""Sequence-classification models (cross-encoder rerankers and classifiers) against
transformers, float32 on CPU: LLM.score encodes each (query, document) pair as one sequence
with its token types and gives the head's logit through the sigmoid; LLM.classify gives the
softmax over the labels (sigmoid for one); use_activation=False the logits; the checkpoint's
problem_type and sentence-transformers activation pick the activation; BERT and RoBERTa heads;
and the refusals (classify on generative and embedding models, embed on a classifier, score
with several labels)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from pagedlm import LLM, PoolingParams
from pagedlm.config import ConfigError

sys.path.insert(0, str(Path(__file__).parent))
from cross_encoder_helpers import build_bert_classifier, build_roberta_classifier, hf_logits  # noqa: E402

TOL = 1e-5
QUERY = "what is the capital of france"
DOCS = ["paris is the capital of france", "berlin is a city", "the quick brown fox jumps over the lazy dog",
        "hello"]
TEXTS = ["hello world", "the lazy dog jumps over the quick brown fox", "paris", "what is a city"]


@pytest.fixture(scope="module")
def ce_dir(tmp_path_factory) -> Path:
    return build_bert_classifier(tmp_path_factory.mktemp("ce"), num_labels=1)


@pytest.fixture(scope="module")
def ce_llm(ce_dir) -> LLM:
    return LLM(str(ce_dir), device="cpu")


@pytest.fixture(scope="module")
def cls_dir(tmp_path_factory) -> Path:
    return build_bert_classifier(tmp_path_factory.mktemp("cls"), num_labels=3, seed=1)


@pytest.fixture(scope="module")
def cls_llm(cls_dir) -> LLM:
    return LLM(str(cls_dir), device="cpu", runner="pooling")


def test_cross_encoder_is_a_pooling_model_serving_classify_and_score(ce_llm):
    config = ce_llm.llm_engine.model_config
    assert config.runner == "pooling"
    assert config.pooler_config.tasks == ("classify", "score")
    assert config.pooler_config.id2label == ("label_a",)


def test_cross_encoder_score_matches_transformers_pairs(ce_llm, ce_dir):
    """One query against every document (one batch), and pairwise lists: sigmoid of the
    transformers logit of the pair encoded with token types."""
    ref = torch.sigmoid(torch.stack(hf_logits(ce_dir, [(QUERY, d) for d in DOCS]))[:, 0])
    outs = ce_llm.score(QUERY, DOCS, use_tqdm=False)
    torch.testing.assert_close(torch.tensor([o.outputs.score for o in outs]), ref, atol=TOL, rtol=0)
    pairwise = ce_llm.score(list(reversed(DOCS)), DOCS, use_tqdm=False)
    ref2 = torch.sigmoid(torch.stack(hf_logits(ce_dir, list(zip(reversed(DOCS), DOCS))))[:, 0])
    torch.testing.assert_close(torch.tensor([o.outputs.score for o in pairwise]), ref2, atol=TOL, rtol=0)
    # The pair is one sequence: [CLS] query [SEP] document [SEP]
    tokenizer = ce_llm.get_tokenizer()
    assert outs[0].prompt_token_ids == tokenizer(QUERY, DOCS[0])["input_ids"]


def test_cross_encoder_uses_token_types(ce_llm, ce_dir):
    """The document's tokens are segment 1: scoring the same ids as one segment differs."""
    from transformers import AutoModelForSequenceClassification

    tokenizer = ce_llm.get_tokenizer()
    enc = tokenizer(QUERY, DOCS[0], return_tensors="pt")
    model = AutoModelForSequenceClassification.from_pretrained(str(ce_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        one_segment = model(input_ids=enc["input_ids"], token_type_ids=torch.zeros_like(enc["input_ids"])).logits[0]
        paired = model(**enc).logits[0]
    assert (one_segment - paired).abs().item() > 1e-3  # the check below can tell them apart
    (out,) = ce_llm.score(QUERY, DOCS[:1], pooling_params=PoolingParams(use_activation=False), use_tqdm=False)
    assert abs(out.outputs.score - paired.item()) < TOL
    # encode() with a tokens prompt carrying token_type_ids (vLLM's TokensPrompt) gives the same
    prompt = {"prompt_token_ids": enc["input_ids"][0].tolist(), "token_type_ids": enc["token_type_ids"][0].tolist()}
    (raw,) = ce_llm.encode(prompt, PoolingParams(use_activation=False), pooling_task="score", use_tqdm=False)
    assert abs(raw.outputs.data[0].item() - paired.item()) < TOL
    (single,) = ce_llm.encode({"prompt_token_ids": prompt["prompt_token_ids"]}, PoolingParams(use_activation=False),
                              pooling_task="score", use_tqdm=False)
    assert abs(single.outputs.data[0].item() - one_segment.item()) < TOL


def test_cross_encoder_classify_is_sigmoid_of_the_one_label(ce_llm, ce_dir):
    ref = [torch.sigmoid(r) for r in hf_logits(ce_dir, TEXTS)]
    outs = ce_llm.classify(TEXTS, use_tqdm=False)
    for out, r in zip(outs, ref):
        assert out.outputs.num_classes == 1
        torch.testing.assert_close(torch.tensor(out.outputs.probs), r, atol=TOL, rtol=0)


def test_classifier_probs_match_transformers_softmax(cls_llm, cls_dir):
    ref = hf_logits(cls_dir, TEXTS)
    outs = cls_llm.classify(TEXTS, use_tqdm=False)
    assert cls_llm.llm_engine.model_config.pooler_config.id2label == ("label_a", "label_b", "label_c")
    for out, r in zip(outs, ref):
        assert out.outputs.num_classes == 3
        torch.testing.assert_close(torch.tensor(out.outputs.probs), torch.softmax(r, -1), atol=TOL, rtol=0)
    logits = cls_llm.classify(TEXTS[:2], pooling_params=PoolingParams(use_activation=False), use_tqdm=False)
    for out, r in zip(logits, ref):
        torch.testing.assert_close(torch.tensor(out.outputs.probs), r, atol=TOL, rtol=0)
    # vLLM's deprecated name of use_activation
    (old,) = cls_llm.classify(TEXTS[:1], pooling_params=PoolingParams(softmax=False), use_tqdm=False)
    torch.testing.assert_close(torch.tensor(old.outputs.probs), ref[0], atol=TOL, rtol=0)


def test_classifier_refuses_score_and_embed(cls_llm, ce_llm):
    with pytest.raises(ValueError, match="num_labels == 1"):
        cls_llm.score(QUERY, DOCS, use_tqdm=False)
    for llm in (cls_llm, ce_llm):
        with pytest.raises(ValueError, match="sequence-classification model and does not support the embed task"):
            llm.embed("hello", use_tqdm=False)
    with pytest.raises(ValueError, match=r"only supports \['use_activation'\].*\['normalize'\]"):
        cls_llm.classify("hello", pooling_params=PoolingParams(normalize=True), use_tqdm=False)


def test_problem_type_and_sentence_transformers_activation(cls_dir, ce_dir):
    ref = hf_logits(cls_dir, TEXTS[:2])
    multi = LLM(str(cls_dir), device="cpu", hf_overrides={"problem_type": "multi_label_classification"})
    for out, r in zip(multi.classify(TEXTS[:2], use_tqdm=False), ref):
        torch.testing.assert_close(torch.tensor(out.outputs.probs), torch.sigmoid(r), atol=TOL, rtol=0)
    identity = LLM(str(ce_dir), device="cpu",
                   hf_overrides={"sentence_transformers": {"activation_fn": "torch.nn.modules.linear.Identity"}})
    (out,) = identity.score(QUERY, DOCS[:1], use_tqdm=False)
    assert abs(out.outputs.score - hf_logits(ce_dir, [(QUERY, DOCS[0])])[0].item()) < TOL
    with pytest.raises(ConfigError, match="cross-encoder activation"):
        LLM(str(ce_dir), device="cpu", hf_overrides={"sbert_ce_default_activation_function": "os.system"})


def test_roberta_cross_encoder_matches_transformers(tmp_path):
    """RoBERTa's head (dense, tanh, out_proj on <s>) and positions from padding_idx + 1."""
    model_dir = build_roberta_classifier(tmp_path / "roberta", num_labels=1, seed=2)
    llm = LLM(str(model_dir), device="cpu")
    assert llm.llm_engine.model_config.max_model_len == 64  # 66 positions less padding_idx + 1
    ref = torch.sigmoid(torch.stack(hf_logits(model_dir, [(QUERY, d) for d in DOCS]))[:, 0])
    outs = llm.score(QUERY, DOCS, use_tqdm=False)
    torch.testing.assert_close(torch.tensor([o.outputs.score for o in outs]), ref, atol=TOL, rtol=0)
    long_text = " ".join(["w1"] * 70)
    (out,) = llm.classify(long_text, truncate_prompt_tokens=-1, use_tqdm=False)
    assert len(out.prompt_token_ids) == 64


def test_refusals_on_other_models(llama_checkpoint, ce_dir, tmp_path):
    from tests.models.test_pooling import build_tiny_bert

    gen = LLM(llama_checkpoint, device="cpu", max_model_len=128, num_gpu_blocks_override=32)
    with pytest.raises(ValueError, match="only supported for pooling models"):
        gen.classify("hello", use_tqdm=False)
    emb = LLM(str(build_tiny_bert(tmp_path / "emb")), device="cpu")
    with pytest.raises(ValueError, match="embedding model and does not support the classify task"):
        emb.classify("hello", use_tqdm=False)
    with pytest.raises(ValueError, match="no second token type"):  # a model with one token type
        LLM(str(build_tiny_bert(tmp_path / "emb1", type_vocab_size=1)), device="cpu").encode(
            {"prompt_token_ids": [2, 5, 3, 6, 3], "token_type_ids": [0, 0, 0, 1, 1]}, use_tqdm=False)
    with pytest.raises(ConfigError, match="ForSequenceClassification"):
        LLM(llama_checkpoint, device="cpu", task="classify")
    with pytest.raises(ConfigError, match="sequence-classification model"):
        LLM(str(ce_dir), device="cpu", convert="embed")
    with pytest.raises(ConfigError, match="pooling_type CLS"):
        LLM(str(ce_dir), device="cpu", pooler_config={"pooling_type": "MEAN"})
    with pytest.raises(ConfigError, match="cannot generate"):
        LLM(str(ce_dir), device="cpu", runner="generate")
