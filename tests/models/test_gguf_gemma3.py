"""Gemma 3 GGUF files, written by the test as llama.cpp's converter writes them (its tensor
names, ``+1`` stored in every norm, the Gemma SentencePiece vocabulary and chat template in the
metadata, no sliding pattern / local RoPE base / query scale in the file).

The oracle is the model the file came from: transformers on the original checkpoint. Loading
the same file with transformers' own GGUF config is not: transformers drops gemma3's
``rope.scaling`` (Gemma 3 4B/12B/27B use linear factor 8 on global layers) and keeps its
default query_pre_attn_scalar of 256, where llama.cpp uses head_dim. So quantized files are
checked against transformers loading the same file with the config pagedlm derived from it
(transformers' dequantization, pagedlm's reading of the metadata, which the F32 test proves)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("gguf")

from gguf_helpers import GEMMA_CHAT_TEMPLATE, write_gemma3_gguf  # noqa: E402
from models.test_parity import PROMPTS, check_close, hf_reference, run  # noqa: E402

from pagedlm import LLM, SamplingParams  # noqa: E402

MAX_TOKENS = 10
# Gemma 3 4B's shape in miniature: 6 layers (5 sliding, 1 global, as llama.cpp assumes), a
# window shorter than most prompts, linear RoPE scaling on the global layer, tied embeddings,
# query_pre_attn_scalar == head_dim. Intermediate 256: ffn_down rows are one K-quant super-block.
GEMMA3_CONFIG = dict(
    num_hidden_layers=6, intermediate_size=256, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
    tie_word_embeddings=True,
    rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
                     "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
)
_MIXED = {"attn_q.": "F16", "attn_k.": "BF16", "attn_v.": "Q8_0", "attn_output": "Q4_0", "ffn_gate": "Q8_0",
          "ffn_up": "Q5_1", "token_embd": "Q8_0"}
# Every K type on the ffn_down tensors, whose rows are one 256-element super-block.
_K_TYPES = {"blk.0.ffn_down": "Q2_K", "blk.1.ffn_down": "Q3_K", "blk.2.ffn_down": "Q4_K", "blk.3.ffn_down": "Q5_K",
            "blk.5.ffn_down": "Q6_K"}


def _mixed_type(name: str, weights) -> str:
    for prefix, type_name in _K_TYPES.items():
        if name.startswith(prefix):
            return type_name
    if weights.ndim == 1:
        return "F32"  # norms stay F32, as llama.cpp's converter keeps 1-D tensors
    return next((t for key, t in _MIXED.items() if key in name), "F16")


@pytest.fixture(scope="module", autouse=True)
def _gguf_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("PAGEDLM_CACHE_DIR", str(tmp_path_factory.mktemp("pagedlm_cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def gemma3_src(tmp_path_factory) -> Path:
    from pagedlm.demo import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("gemma3_src"), "Gemma3ForCausalLM", seed=5,
                                 **GEMMA3_CONFIG)


@pytest.fixture(scope="module")
def f32_gguf(gemma3_src, tmp_path_factory) -> Path:
    return write_gemma3_gguf(gemma3_src, tmp_path_factory.mktemp("g3") / "gemma3-f32.gguf")


def test_f32_gemma3_gguf_matches_transformers_on_the_original(gemma3_src, f32_gguf):
    """Names, the +1 norms undone, llama.cpp's reading of the metadata (sliding pattern, local
    RoPE base, linear scaling on the global layer, query scale): all must hold for equality."""
    ref = hf_reference(str(gemma3_src), PROMPTS, MAX_TOKENS)
    llm, outputs = run(str(f32_gguf), PROMPTS, max_model_len=128)  # tokenizer from the GGUF metadata
    check_close(ref, outputs, PROMPTS)
    config = llm.llm_engine.model_config.hf_config
    assert config.architectures == ["Gemma3ForCausalLM"] and config.query_pre_attn_scalar == 16
    assert config.rope_parameters["full_attention"] == {"rope_type": "linear", "factor": 8.0,
                                                        "rope_theta": 1_000_000.0}
    assert config.layer_types == ["sliding_attention"] * 5 + ["full_attention"]


def test_quantized_gemma3_gguf_matches_transformers(f32_gguf, gemma3_src, tmp_path):
    """F16, BF16, Q8_0, Q4_0, Q5_1 and Q2_K..Q6_K dequantize as transformers does."""
    from gguf import GGUFReader
    from transformers import AutoConfig, AutoModelForCausalLM

    from pagedlm.models.loader.gguf import gguf_sidecar_dir

    path = write_gemma3_gguf(gemma3_src, tmp_path / "gemma3-mixed.gguf", tensor_type=_mixed_type)
    assert {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"} <= {
        t.tensor_type.name for t in GGUFReader(str(path)).tensors}
    llm, outputs = run(str(path), PROMPTS, max_model_len=128)
    sidecar = AutoConfig.from_pretrained(str(gguf_sidecar_dir(path)))  # the config pagedlm read from the file
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, config=sidecar,
                                                 dtype=torch.float32).eval()
    check_close(_generate(model, PROMPTS), outputs, PROMPTS)


def _generate(model, prompts: list[list[int]]):
    results = []
    for prompt in prompts:
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=MAX_TOKENS, min_new_tokens=MAX_TOKENS,
                                 do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0)
        results.append((out.sequences[0, len(prompt):].tolist(), [s[0].float().log_softmax(-1) for s in out.logits]))
    return results


def test_gemma3_gguf_tokenizer_and_chat_template(f32_gguf, capsys):
    """The Gemma SentencePiece vocabulary and chat template come from the file's metadata,
    tokenizing as transformers' GGUF tokenizer does (BOS added, turn markers kept whole); the
    tensors load under a progress bar."""
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(str(f32_gguf.parent), gguf_file=f32_gguf.name)
    capsys.readouterr()
    llm = LLM(str(f32_gguf), device="cpu", max_model_len=128)
    num_tensors = 2 + 6 * 13  # token_embd, output_norm, 13 per layer (tied: no output.weight)
    err = capsys.readouterr().err
    assert "Loading GGUF tensors: 100%" in err and f"{num_tensors}/{num_tensors}" in err
    tokenizer = llm.get_tokenizer()
    for text in ("the cat sat on the mat", "What is the capital of France?", "<start_of_turn>user\nhi"):
        assert tokenizer.encode(text) == reference.encode(text)
    assert tokenizer.encode("hello")[0] == 2 and tokenizer.chat_template == GEMMA_CHAT_TEMPLATE
    assert len(tokenizer) == llm.llm_engine.model_config.vocab_size == 512
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    out = llm.chat(messages, SamplingParams(max_tokens=3, ignore_eos=True), use_tqdm=False)[0]
    text = reference.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert out.prompt_token_ids == reference.encode(text, add_special_tokens=False)
    assert out.prompt_token_ids[0] == 2 and out.prompt_token_ids.count(2) == 1  # one BOS: the template's
    assert out.prompt.endswith("<start_of_turn>model\n") and len(out.outputs[0].token_ids) == 3


def _metadata_only_gemma3(path: Path, num_layers: int, hidden: int, heads: int, head_dim: int, **extra) -> Path:
    """Metadata of a full-size Gemma 3 (no tensors): enough for the config llama.cpp would read."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_context_length(131072)
    writer.add_embedding_length(hidden)
    writer.add_block_count(num_layers)
    writer.add_feed_forward_length(hidden * 4)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads // 2)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(1_000_000.0)
    writer.add_sliding_window(extra.pop("sliding_window", 1024))
    writer.add_vocab_size(262144)
    for key, value in extra.items():
        getattr(writer, f"add_{key}")(value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gemma3_gguf_config_follows_llama_cpp(tmp_path):
    """27B (62 layers): queries scaled by hidden / heads = 168, not head_dim 128; a file that
    states a local RoPE base or a per-layer sliding pattern (newer writers) is read; no
    sliding window: every layer global; a RoPE scaling Gemma 3 never uses is refused."""
    from transformers import AutoConfig

    from pagedlm.config import ConfigError
    from pagedlm.models.loader.gguf import gguf_sidecar_dir

    def config_of(name: str, *args, **extra):
        return AutoConfig.from_pretrained(str(gguf_sidecar_dir(_metadata_only_gemma3(tmp_path / name, *args,
                                                                                       **extra))))

    big = config_of("27b.gguf", 62, 5376, 32, 128, rope_scaling_type=_linear(), rope_scaling_factor=8.0)
    assert (big.query_pre_attn_scalar, big.head_dim) == (168, 128)
    assert big.rope_parameters["full_attention"]["factor"] == 8.0
    assert big.layer_types[:6] == ["sliding_attention"] * 5 + ["full_attention"]
    one_b = config_of("1b.gguf", 26, 1152, 4, 256, rope_freq_base_swa=500.0,
                      sliding_window_pattern=[True, False] * 13)
    assert one_b.query_pre_attn_scalar == 256 and one_b.rope_parameters["full_attention"]["rope_type"] == "default"
    assert one_b.rope_parameters["sliding_attention"]["rope_theta"] == 500.0
    assert one_b.layer_types[:3] == ["sliding_attention", "full_attention", "sliding_attention"]
    assert set(config_of("noswa.gguf", 4, 256, 4, 64, sliding_window=0).layer_types) == {"full_attention"}
    with pytest.raises(ConfigError, match="rope.scaling.type 'yarn' is not supported"):
        config_of("yarn.gguf", 4, 256, 4, 64, rope_scaling_type=_linear("YARN"), rope_scaling_factor=4.0)


def _linear(name: str = "LINEAR"):
    import gguf

    return gguf.RopeScalingType[name]


def test_f32_gemma2_gguf_matches_transformers_on_the_original(tmp_path):
    """Gemma 2's GGUF (llama.cpp's ``gemma2``): the soft-caps the file states (not the config
    class's defaults), the query scale 1/sqrt(head_dim), every other layer sliding from the
    first; F32 equal to transformers on the original checkpoint."""
    from pagedlm.demo import build_tiny_checkpoint

    src = build_tiny_checkpoint(tmp_path / "gemma2", "Gemma2ForCausalLM", seed=6, num_hidden_layers=4, head_dim=16,
                                query_pre_attn_scalar=16, sliding_window=8, attn_logit_softcapping=20.0,
                                final_logit_softcapping=15.0, tie_word_embeddings=True, attn_implementation="eager")
    path = write_gemma3_gguf(src, tmp_path / "gemma2-f32.gguf")
    ref = hf_reference(str(src), PROMPTS, MAX_TOKENS)
    llm, outputs = run(str(path), PROMPTS, max_model_len=128)
    check_close(ref, outputs, PROMPTS)
    config = llm.llm_engine.model_config.hf_config
    assert config.architectures == ["Gemma2ForCausalLM"] and config.query_pre_attn_scalar == 16
    assert (config.attn_logit_softcapping, config.final_logit_softcapping) == (20.0, 15.0)
    assert config.layer_types == ["sliding_attention", "full_attention"] * 2
