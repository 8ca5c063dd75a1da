"""More encoder embedding architectures against transformers, float32 on CPU: ModernBertModel
(global and sliding-window layers with their own RoPE bases, GeGLU, LayerNorms without bias)
and ModernBertForSequenceClassification (CLS and mean heads), XLMRobertaModel, NomicBertModel
and GteModel / NewModel (rotary, gated MLP, post-norm). Each checkpoint is tiny and random,
written here by transformers' save_pretrained (its tensor names are the published
checkpoints'); nomic and gte are also loaded from the published config.json shapes (nomic's
n_embd keys, gte's model_type "new"), which need no remote code here. Prompts of different
lengths go in one batch, and the longest is longer than ModernBERT's local window, so the band
mask and the per-sequence attention both show. One /v1/embeddings call goes through the app.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pagedlm import LLM, PoolingParams
from pagedlm.config import ConfigError

PROMPTS = [[2, 7, 3], [2] + [(i * 7) % 90 + 5 for i in range(37)] + [3], [2, 50, 60, 70, 80, 3], [2, 11, 3]]
TOL = 1e-5
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)]


def _prompts() -> list[dict]:
    return [{"prompt_token_ids": p} for p in PROMPTS]


def _save(model, out: Path, seed: int = 0) -> Path:
    import transformers

    out.mkdir(parents=True, exist_ok=True)
    transformers.BertTokenizerFast(vocab={w: i for i, w in enumerate(VOCAB)}).save_pretrained(str(out))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # larger than HF's init so differences show
            p.normal_(1.0 if "norm" in name.lower() and p.dim() == 1 and "bias" not in name else 0.0, 0.2)
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def _sentence_transformers(out: Path, mean: bool) -> None:
    """modules.json + 1_Pooling + Normalize, as sentence-transformers saves an embedding model."""
    (out / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": not mean, "pooling_mode_mean_tokens": mean}))
    (out / "2_Normalize").mkdir(exist_ok=True)


def _hf_hidden(model_dir: Path, cls_name: str) -> list[torch.Tensor]:
    import transformers

    model = getattr(transformers, cls_name).from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        return [model(torch.tensor([p])).last_hidden_state[0] for p in PROMPTS]


def _check_embed(llm: LLM, ref: list[torch.Tensor], pooling: str) -> None:
    tokens = llm.encode(_prompts(), PoolingParams(normalize=False), pooling_task="token_embed", use_tqdm=False)
    for out, r in zip(tokens, ref):
        torch.testing.assert_close(out.outputs.data, r, atol=TOL, rtol=0)
    for out, r in zip(llm.embed(_prompts(), use_tqdm=False), ref):
        pooled = r.mean(0) if pooling == "MEAN" else r[0]
        torch.testing.assert_close(torch.tensor(out.outputs.embedding), F.normalize(pooled, dim=-1), atol=TOL, rtol=0)


# ------------------------------------------------------------------------------ ModernBERT

def _modernbert_config(**overrides):
    import transformers

    # 3 layers: global, local, global (global_attn_every_n_layers=2); a local window of 4 tokens
    # either side (local_attention=8), shorter than the 39-token prompt.
    return transformers.ModernBertConfig(
        vocab_size=len(VOCAB), hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=64, global_attn_every_n_layers=2, local_attention=8, global_rope_theta=160000.0,
        local_rope_theta=10000.0, pad_token_id=0, bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3,
        **overrides)


@pytest.fixture(scope="module")
def modernbert_dir(tmp_path_factory) -> Path:
    import transformers

    out = _save(transformers.ModernBertModel(_modernbert_config()), tmp_path_factory.mktemp("modernbert"))
    _sentence_transformers(out, mean=True)
    return out


@pytest.fixture(scope="module")
def modernbert_ref(modernbert_dir) -> list[torch.Tensor]:
    return _hf_hidden(modernbert_dir, "ModernBertModel")


def test_modernbert_embeddings_match_transformers(modernbert_dir, modernbert_ref):
    llm = LLM(str(modernbert_dir), device="cpu")
    config = llm.llm_engine.model_config
    assert config.runner == "pooling" and config.max_model_len == 64
    assert (config.pooler_config.pooling_type, config.pooler_config.normalize) == ("MEAN", True)
    _check_embed(llm, modernbert_ref, "MEAN")


def test_modernbert_local_window_is_a_band(modernbert_dir, modernbert_ref):
    """The local layers' window matters for the long prompt: with every layer global, the
    model (ours and transformers') gives other hidden states for it, the same for the short ones."""
    from transformers import ModernBertModel

    model = ModernBertModel.from_pretrained(str(modernbert_dir), dtype=torch.float32, local_attention=128).eval()
    with torch.no_grad():
        wide = [model(torch.tensor([p])).last_hidden_state[0] for p in PROMPTS]
    assert not torch.allclose(wide[1], modernbert_ref[1], atol=1e-3)
    torch.testing.assert_close(wide[0], modernbert_ref[0], atol=TOL, rtol=0)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_modernbert_classifier_matches_transformers(tmp_path, pooling):
    import transformers

    config = _modernbert_config(num_labels=3, classifier_pooling=pooling, classifier_activation="gelu")
    out = _save(transformers.ModernBertForSequenceClassification(config), tmp_path / pooling, seed=1)
    model = transformers.ModernBertForSequenceClassification.from_pretrained(str(out), dtype=torch.float32).eval()
    with torch.no_grad():
        logits = [model(torch.tensor([p])).logits[0] for p in PROMPTS]
    llm = LLM(str(out), device="cpu")
    assert llm.llm_engine.model_config.pooler_config.pooling_type == pooling.upper()
    for res, ref in zip(llm.classify(_prompts(), use_tqdm=False), logits):
        torch.testing.assert_close(torch.tensor(res.outputs.probs), ref.softmax(-1), atol=TOL, rtol=0)


def test_modernbert_over_embeddings_api(modernbert_dir, modernbert_ref):
    """/v1/embeddings in-process (the engine core in its own process), the mean of transformers'."""
    from fastapi.testclient import TestClient

    from pagedlm.engine.async_llm import AsyncLLM
    from pagedlm.engine_args import EngineArgs
    from pagedlm.entrypoints.openai.api_server import build_app
    from pagedlm.metrics import PrometheusStatLogger

    engine = AsyncLLM.from_engine_args(EngineArgs(model=str(modernbert_dir), device="cpu"))
    engine.stat_logger = PrometheusStatLogger("modernbert")
    with TestClient(build_app(engine, engine.stat_logger, served_model_names=["mb"])) as client:
        resp = client.post("/v1/embeddings", json={"model": "mb", "input": PROMPTS})
        assert resp.status_code == 200, resp.text
        data = resp.json()["data"]
    for item, ref in zip(data, modernbert_ref):
        torch.testing.assert_close(torch.tensor(item["embedding"]), F.normalize(ref.mean(0), dim=-1),
                                   atol=TOL, rtol=0)


# --------------------------------------------------------------------------- XLM-RoBERTa

def test_xlm_roberta_model_matches_transformers(tmp_path):
    import transformers

    config = transformers.XLMRobertaConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2,
                                           num_attention_heads=4, intermediate_size=64, max_position_embeddings=66,
                                           pad_token_id=1, type_vocab_size=1)
    out = _save(transformers.XLMRobertaModel(config, add_pooling_layer=False), tmp_path / "xlmr")
    llm = LLM(str(out), device="cpu")
    assert llm.llm_engine.model_config.pooler_config.pooling_type == "CLS"
    _check_embed(llm, _hf_hidden(out, "XLMRobertaModel"), "CLS")


# ------------------------------------------------------------------------- NomicBERT, GTE

def _published_config(out: Path, rewrite) -> Path:
    """The same weights under the config.json the published checkpoint ships."""
    pub = out.parent / (out.name + "_published")
    shutil.copytree(out, pub)
    cfg = json.loads((out / "config.json").read_text())
    (pub / "config.json").write_text(json.dumps(rewrite(cfg)))
    return pub


def _nomic_published(cfg: dict) -> dict:
    return {"architectures": ["NomicBertModel"], "model_type": "nomic_bert",
            "auto_map": {"AutoConfig": "nomic-ai/nomic-bert-2048--configuration_hf_nomic_bert.NomicBertConfig",
                         "AutoModel": "nomic-ai/nomic-bert-2048--modeling_hf_nomic_bert.NomicBertModel"},
            "activation_function": "swiglu", "causal": False, "n_embd": cfg["hidden_size"],
            "n_head": cfg["num_attention_heads"], "n_layer": cfg["num_hidden_layers"],
            "n_inner": cfg["intermediate_size"], "n_positions": 8192, "max_trained_positions": 64,
            "layer_norm_epsilon": cfg["layer_norm_eps"], "rotary_emb_base": cfg["rope_parameters"]["rope_theta"],
            "rotary_emb_fraction": 1.0, "rotary_emb_interleaved": False, "rotary_scaling_factor": None,
            "prenorm": False, "qkv_proj_bias": False, "mlp_fc1_bias": False, "mlp_fc2_bias": False,
            "type_vocab_size": cfg["type_vocab_size"], "vocab_size": cfg["vocab_size"], "pad_token_id": 0,
            "use_rms_norm": False, "parallel_block": False}


def _gte_published(cfg: dict) -> dict:
    rest = {k: v for k, v in cfg.items() if k not in ("architectures", "model_type", "rope_parameters")}
    return {**rest, "architectures": ["NewModel"], "model_type": "new",
            "auto_map": {"AutoConfig": "Alibaba-NLP/new-impl--configuration.NewConfig",
                         "AutoModel": "Alibaba-NLP/new-impl--modeling.NewModel"},
            "rope_theta": cfg["rope_parameters"]["rope_theta"], "rope_scaling": None,
            "position_embedding_type": "rope", "layer_norm_type": "layer_norm", "logn_attention_scale": False,
            "pack_qkv": True, "unpad_inputs": False}


ROTARY = {
    "nomic": ("NomicBertConfig", "NomicBertModel", dict(rope_parameters={"rope_type": "default", "rope_theta": 1000.0},
                                                       max_position_embeddings=64), True, _nomic_published),
    "gte": ("GteConfig", "GteModel", dict(rope_parameters={"rope_type": "default", "rope_theta": 160000.0},
                                          max_position_embeddings=64, type_vocab_size=2, hidden_dropout_prob=0.0),
            False, _gte_published),
}


@pytest.fixture(scope="module", params=list(ROTARY))
def rotary_case(request, tmp_path_factory):
    import transformers

    config_name, model_name, overrides, mean, publish = ROTARY[request.param]
    config = getattr(transformers, config_name)(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2,
                                                num_attention_heads=4, intermediate_size=48, pad_token_id=0,
                                                **overrides)
    out = _save(getattr(transformers, model_name)(config), tmp_path_factory.mktemp(request.param))
    _sentence_transformers(out, mean=mean)
    return out, _hf_hidden(out, model_name), "MEAN" if mean else "CLS", publish


def test_rotary_encoders_match_transformers(rotary_case):
    out, ref, pooling, _ = rotary_case
    llm = LLM(str(out), device="cpu")
    assert llm.llm_engine.model_config.pooler_config.pooling_type == pooling
    _check_embed(llm, ref, pooling)


def test_rotary_encoders_load_the_published_config(rotary_case):
    out, ref, pooling, publish = rotary_case
    llm = LLM(str(_published_config(out, publish)), device="cpu")
    assert llm.llm_engine.model_config.max_model_len == 64
    _check_embed(llm, ref, pooling)


def test_unsupported_published_settings_are_refused(tmp_path):
    from pagedlm.models.encoder_configs import published_encoder_config

    for raw, match in [({"model_type": "nomic_bert", "n_embd": 32, "prenorm": True}, "prenorm"),
                       ({"model_type": "nomic_bert", "n_embd": 32, "rotary_emb_fraction": 0.5}, "rotary_emb_fraction"),
                       ({"model_type": "new", "rope_scaling": {"type": "ntk", "factor": 2.0}}, "rope_scaling"),
                       ({"model_type": "new", "logn_attention_scale": True}, "logn_attention_scale")]:
        (tmp_path / "config.json").write_text(json.dumps(raw))
        with pytest.raises(ConfigError, match=match):
            published_encoder_config(str(tmp_path))
