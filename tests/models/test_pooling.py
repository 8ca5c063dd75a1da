"""Pooling models: a tiny random BERT and a tiny Llama against transformers, float32 on CPU.

BERT: per-token hidden states (token_embed) equal BertModel's last_hidden_state, and CLS /
mean pooling with and without normalisation equal the same pooling of transformers' hidden
states, for prompts of different lengths in one batch (so bidirectional attention must stay
inside each sequence). Llama with runner="pooling": last-token and mean pooling of the final
normed hidden states. Plus the errors: generate on a pooling model, embed on a generative
one, bad dimensions, empty and over-long inputs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pagedlm import LLM, PoolingParams, SamplingParams
from pagedlm.config import ConfigError

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "hello", "world", "paged", "attention"]
PROMPTS = [[2, 7, 3], [2] + [(i * 7) % 90 + 5 for i in range(37)] + [3], [2, 50, 60, 70, 80, 3], [2, 11, 3]]
TOL = 1e-5


def build_tiny_bert(out: Path, seed: int = 0, **overrides) -> Path:
    """A random BertModel checkpoint with a small WordPiece tokenizer (no download)."""
    import transformers

    out.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + [f"w{i}" for i in range(83)]
    transformers.BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(str(out))
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                                     **overrides)
    torch.manual_seed(seed)
    model = transformers.BertModel(config)
    with torch.no_grad():
        for p in model.parameters():  # larger than HF's init so differences show
            p.normal_(0.0, 0.2)
    model.save_pretrained(str(out), safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def bert_llm(bert_dir) -> LLM:
    return LLM(str(bert_dir), device="cpu")


@pytest.fixture(scope="module")
def hf_bert_hidden(bert_dir) -> list[torch.Tensor]:
    from transformers import BertModel

    model = BertModel.from_pretrained(str(bert_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        return [model(torch.tensor([p])).last_hidden_state[0] for p in PROMPTS]


def _prompts() -> list[dict]:
    return [{"prompt_token_ids": p} for p in PROMPTS]


def test_bert_auto_runner_is_pooling_with_cls_default(bert_llm):
    model_config = bert_llm.llm_engine.model_config
    assert model_config.runner == "pooling"
    assert (model_config.pooler_config.pooling_type, model_config.pooler_config.normalize) == ("CLS", True)


def test_bert_token_hidden_states_match_transformers(bert_llm, hf_bert_hidden):
    outs = bert_llm.encode(_prompts(), PoolingParams(normalize=False), pooling_task="token_embed", use_tqdm=False)
    for out, ref, prompt in zip(outs, hf_bert_hidden, PROMPTS):
        assert out.prompt_token_ids == prompt and out.finished
        assert out.outputs.data.shape == ref.shape
        torch.testing.assert_close(out.outputs.data, ref, atol=TOL, rtol=0)


def test_bert_cls_embedding_matches_transformers(bert_llm, hf_bert_hidden):
    outs = bert_llm.embed(_prompts(), use_tqdm=False)
    for out, ref in zip(outs, hf_bert_hidden):
        ours = torch.tensor(out.outputs.embedding)
        torch.testing.assert_close(ours, F.normalize(ref[0], dim=-1), atol=TOL, rtol=0)
        assert out.outputs.hidden_size == 32


def test_score_is_the_cosine_of_the_embeddings(bert_llm, hf_bert_hidden):
    """LLM.score as vLLM's for embedding models: one text against many, or pairwise; the score
    is the cosine similarity of transformers' CLS vectors; ids and tokens join the pair's."""
    from pagedlm import ScoringRequestOutput

    cls = [ref[0] for ref in hf_bert_hidden]
    prompts = _prompts()
    one_to_many = bert_llm.score(prompts[0], prompts[1:], use_tqdm=False)
    pairwise = bert_llm.score(prompts[:2], prompts[2:], use_tqdm=False)
    for outs, pairs in ((one_to_many, [(0, 1), (0, 2), (0, 3)]), (pairwise, [(0, 2), (1, 3)])):
        assert len(outs) == len(pairs)
        for out, (i, j) in zip(outs, pairs):
            assert isinstance(out, ScoringRequestOutput) and out.finished
            assert out.prompt_token_ids == PROMPTS[i] + PROMPTS[j]
            assert out.outputs.score == pytest.approx(F.cosine_similarity(cls[i], cls[j], dim=0).item(), abs=TOL)
    assert len({o.request_id for o in one_to_many + pairwise}) == 5
    (same,) = bert_llm.score("hello world", ["hello world"], use_tqdm=False)
    assert same.outputs.score == pytest.approx(1.0, abs=TOL)
    with pytest.raises(ValueError, match="as many as data_2"):
        bert_llm.score(prompts[:2], prompts[:3], use_tqdm=False)
    with pytest.raises(ValueError, match="at least one text"):
        bert_llm.score([], prompts, use_tqdm=False)
    with pytest.raises(ValueError, match="embedding model and does not support the classify task"):
        bert_llm.classify(prompts, use_tqdm=False)


def test_bert_mean_pooling_override_and_text_prompts(bert_dir, hf_bert_hidden):
    llm = LLM(str(bert_dir), device="cpu", pooler_config={"pooling_type": "MEAN", "normalize": False})
    outs = llm.embed(_prompts(), use_tqdm=False)
    for out, ref in zip(outs, hf_bert_hidden):
        torch.testing.assert_close(torch.tensor(out.outputs.embedding), ref.mean(0), atol=TOL, rtol=0)
    # Text goes through the WordPiece tokenizer, [CLS] ... [SEP] included.
    (text_out,) = llm.embed("hello world", use_tqdm=False)
    assert text_out.prompt_token_ids == [2, 13, 14, 3]


def test_matryoshka_dimensions_truncate_then_renormalise(tmp_path, bert_dir, hf_bert_hidden):
    mat = tmp_path / "mat"
    shutil.copytree(bert_dir, mat)
    cfg = json.loads((mat / "config.json").read_text())
    (mat / "config.json").write_text(json.dumps({**cfg, "matryoshka_dimensions": [8, 16]}))
    llm = LLM(str(mat), device="cpu")
    (out,) = llm.embed(_prompts()[:1], pooling_params=PoolingParams(dimensions=8), use_tqdm=False)
    torch.testing.assert_close(torch.tensor(out.outputs.embedding), F.normalize(hf_bert_hidden[0][0, :8], dim=-1),
                               atol=TOL, rtol=0)
    with pytest.raises(ValueError, match=r"supports only \[8, 16\]"):
        llm.embed("hello", pooling_params=PoolingParams(dimensions=12), use_tqdm=False)


def test_bert_errors(bert_dir, bert_llm):
    with pytest.raises(ValueError, match="pooling .*cannot generate"):
        bert_llm.generate("hello", SamplingParams(max_tokens=2), use_tqdm=False)
    with pytest.raises(ValueError, match="does not support Matryoshka"):
        bert_llm.embed("hello", pooling_params=PoolingParams(dimensions=4), use_tqdm=False)
    with pytest.raises(ValueError, match="cannot be empty"):
        bert_llm.embed({"prompt_token_ids": []}, use_tqdm=False)
    with pytest.raises(ValueError, match="longer than the maximum model length"):
        bert_llm.embed({"prompt_token_ids": [5] * 65}, use_tqdm=False)
    with pytest.raises(ValueError, match="dimensions must be a positive integer"):
        PoolingParams(dimensions=0)
    with pytest.raises(ConfigError, match="runner pooling"):
        LLM(str(bert_dir), device="cpu", runner="generate")
    with pytest.raises(ConfigError, match="unknown keys"):
        LLM(str(bert_dir), device="cpu", pooler_config={"pooling": "MEAN"})
    with pytest.raises(ConfigError, match="must be at least max_model_len"):
        LLM(str(bert_dir), device="cpu", max_num_batched_tokens=16)
    with pytest.raises(ConfigError, match="pooling_type must be one of"):
        LLM(str(bert_dir), device="cpu", pooler_config='{"pooling_type": "MAX"}')


def test_truncate_prompt_tokens_keeps_the_last_tokens(bert_llm):
    long_prompt = [2] + [(i * 5) % 90 + 5 for i in range(70)] + [3]
    (cut,) = bert_llm.embed({"prompt_token_ids": long_prompt}, truncate_prompt_tokens=20, use_tqdm=False)
    (ref,) = bert_llm.embed({"prompt_token_ids": long_prompt[-20:]}, use_tqdm=False)
    assert cut.prompt_token_ids == long_prompt[-20:]
    assert cut.outputs.embedding == ref.outputs.embedding
    (full,) = bert_llm.embed({"prompt_token_ids": long_prompt}, truncate_prompt_tokens=-1, use_tqdm=False)
    assert len(full.prompt_token_ids) == 64  # max_model_len = max_position_embeddings


# ---------------------------------------------------------------------------- decoder pooling


@pytest.fixture(scope="module")
def hf_llama_hidden(llama_checkpoint) -> list[torch.Tensor]:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(llama_checkpoint, dtype=torch.float32).eval()
    with torch.no_grad():
        return [model(torch.tensor([p])).last_hidden_state[0] for p in PROMPTS]


@pytest.mark.parametrize("pooling_type", ["LAST", "MEAN"])
def test_decoder_pooling_matches_transformers(llama_checkpoint, hf_llama_hidden, pooling_type):
    llm = LLM(llama_checkpoint, device="cpu", runner="pooling", max_model_len=128, max_num_seqs=4,
              pooler_config={"pooling_type": pooling_type})
    outs = llm.embed(_prompts(), use_tqdm=False)
    for out, ref in zip(outs, hf_llama_hidden):
        expected = ref[-1] if pooling_type == "LAST" else ref.mean(0)
        torch.testing.assert_close(torch.tensor(out.outputs.embedding), F.normalize(expected, dim=-1),
                                   atol=TOL, rtol=0)


def test_generate_model_refuses_embed(llama_checkpoint):
    llm = LLM(llama_checkpoint, device="cpu", max_model_len=128, num_gpu_blocks_override=32)
    assert llm.llm_engine.model_config.runner == "generate"
    with pytest.raises(ValueError, match="--runner pooling"):
        llm.embed("hello", use_tqdm=False)
    with pytest.raises(ValueError, match="--runner pooling"):
        llm.score("hello", ["world"], use_tqdm=False)
    with pytest.raises(ConfigError, match="runner='pooling'"):
        LLM(llama_checkpoint, device="cpu", pooler_config={"pooling_type": "MEAN"})


@pytest.mark.parametrize("kwargs", [{"task": "embed"}, {"convert": "embed"}, {"runner": "pooling", "convert": "embed"}])
def test_vllm_task_and_convert_embed_pick_the_pooling_runner(llama_checkpoint, hf_llama_hidden, kwargs):
    """vLLM's LLM(model, task="embed") (older) and convert="embed" run a decoder as an embedding model."""
    llm = LLM(llama_checkpoint, device="cpu", max_model_len=128, max_num_seqs=4, **kwargs)
    assert llm.llm_engine.model_config.runner == "pooling"
    (out,) = llm.embed(_prompts()[:1], use_tqdm=False)
    torch.testing.assert_close(torch.tensor(out.outputs.embedding), F.normalize(hf_llama_hidden[0][-1], dim=-1),
                               atol=TOL, rtol=0)


def test_vllm_task_and_convert_errors(llama_checkpoint):
    with pytest.raises(ConfigError, match="conflicting runner choices: convert='embed', runner='generate'"):
        LLM(llama_checkpoint, device="cpu", runner="generate", convert="embed")
    with pytest.raises(ConfigError, match=r"classify and score need a \*ForSequenceClassification checkpoint"):
        LLM(llama_checkpoint, device="cpu", task="classify")
    llm = LLM(llama_checkpoint, device="cpu", task="generate", max_model_len=128, num_gpu_blocks_override=32)
    assert llm.llm_engine.model_config.runner == "generate"


def test_activation_params_are_refused_as_vllm_does_for_embeddings(bert_llm):
    """vLLM's PoolingParams fields in vLLM's order; the classification ones (softmax,
    activation, use_activation) are refused for embedding tasks, with vLLM's message."""
    assert PoolingParams(None, 8, False).dimensions == 8
    for name in ("softmax", "activation", "use_activation"):
        with pytest.raises(ValueError, match=rf"only supports \['dimensions', 'normalize'\].*\['{name}'\]"):
            bert_llm.embed("hello", pooling_params=PoolingParams(**{name: True}), use_tqdm=False)
    assert PoolingParams(use_activation=None).use_activation is None


def test_headless_decoder_checkpoint_is_a_pooling_model(tmp_path, llama_checkpoint, hf_llama_hidden):
    """A decoder saved without its LM head (architectures ["LlamaModel"], tensor names without
    the "model." prefix), as embedding checkpoints are: auto runner = pooling, last token."""
    from transformers import AutoModel

    AutoModel.from_pretrained(llama_checkpoint, dtype=torch.float32).save_pretrained(str(tmp_path))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(llama_checkpoint) / name, tmp_path / name)
    llm = LLM(str(tmp_path), device="cpu", max_model_len=128, max_num_seqs=4)
    assert llm.llm_engine.model_config.runner == "pooling"
    outs = llm.embed(_prompts(), use_tqdm=False)
    for out, ref in zip(outs, hf_llama_hidden):
        torch.testing.assert_close(torch.tensor(out.outputs.embedding), F.normalize(ref[-1], dim=-1), atol=TOL, rtol=0)
    with pytest.raises(ConfigError, match="runner pooling"):
        LLM(str(tmp_path), device="cpu", runner="generate")
