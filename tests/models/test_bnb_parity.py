"""bitsandbytes 4-bit checkpoints (NF4 with and without double quantization, FP4), written in
bitsandbytes' exact tensor names, dtypes and packing by the reference quantizer in
bnb_helpers.py: pagedlm's greedy ids and top-k logprobs equal transformers running the
dequantized float32 weights, at test_parity's tolerance (1e-4: no activation is quantized).
Unpacking is checked against vectors worked out by hand from bitsandbytes' code, and what
pagedlm does not run is refused."""

from __future__ import annotations

import json

import pytest
import torch

from pagedlm import LLM
from pagedlm.config import ConfigError
from pagedlm.layers.quantization import QuantizationError, resolve_quantization
from pagedlm.layers.quantization.bitsandbytes import (
    FP4_TABLE,
    NF4_TABLE,
    BitsAndBytesLinearMethod,
    dequantize_4bit,
    dequantize_nested_absmax,
    parse_quant_state,
    unpack_codes,
)

from bnb_helpers import (
    create_dynamic_map,
    get_4bit_type,
    quant_config,
    quantize_4bit,
    quantize_weight,
    write_bnb_checkpoint,
)
from test_parity import MAX_TOKENS, PROMPTS, check_close, greedy, hf_reference
from test_quant_parity import ENGINE

# name -> (quant_type, double quant, llm_int8_skip_modules, bnb_4bit_quant_storage)
VARIANTS = {
    "nf4_double": ("nf4", True, None, torch.uint8),
    # A skipped block (transformers' prefix rule) stays float; its q/k/v and gate/up fuse whole.
    "nf4_single_skip": ("nf4", False, ["lm_head", "model.layers.1.mlp"], torch.uint8),
    "fp4_bf16_storage": ("fp4", False, None, torch.bfloat16),
}


class _Cfg:
    def __init__(self, quantization_config) -> None:
        self.quantization_config = quantization_config


# --- known vectors -------------------------------------------------------------------------


def test_packing_known_vectors() -> None:
    """bitsandbytes packs element 2i in the high nibble: ``q[::2] << 4 | q[1::2]``."""
    # One block of 64: NF4 codes 15, 0, 7, 8, 14, 1 then zeros (code 7), absmax 2.
    x = torch.zeros(64)
    x[:6] = torch.tensor([NF4_TABLE[15], NF4_TABLE[0], 0.0, NF4_TABLE[8], NF4_TABLE[14], NF4_TABLE[1]]) * 2.0
    packed, absmax = quantize_4bit(x, "nf4")
    assert packed.shape == (32, 1) and packed.dtype == torch.uint8
    assert packed[:4, 0].tolist() == [0xF0, 0x78, 0xE1, 0x77] and absmax.tolist() == [2.0]
    assert unpack_codes(torch.tensor([[0xF0, 0x78, 0xE1]], dtype=torch.uint8)).tolist() == [[15, 0, 7, 8, 14, 1]]
    w = dequantize_4bit(packed.view(1, 32), absmax.view(1, 1), torch.tensor(NF4_TABLE), torch.float32)
    torch.testing.assert_close(w.view(-1), x, rtol=0, atol=0)
    # FP4 (get_4bit_type: e2m1 / 12, the sign in bit 3): 1.0 -> 0b0011, -1.0 -> 0b1011,
    # 0.5 -> 0b0101, -1/6 -> 0b1110, 2/12 -> 0b0110, 0.0625/12 -> 0b0001.
    y = torch.zeros(64)
    y[:6] = torch.tensor([1.0, -1.0, 0.5, -1 / 6, 2 / 12, 0.0625 / 12])
    packed, absmax = quantize_4bit(y, "fp4")
    assert packed[:3, 0].tolist() == [0x3B, 0x5E, 0x61] and absmax.tolist() == [1.0]
    w = dequantize_4bit(packed.view(1, 32), absmax.view(1, 1), torch.tensor(FP4_TABLE), torch.float32)
    torch.testing.assert_close(w.view(-1), y, rtol=0, atol=1e-7)
    assert torch.equal(torch.tensor(FP4_TABLE), get_4bit_type("fp4"))
    assert torch.equal(torch.tensor(NF4_TABLE), get_4bit_type("nf4"))


def test_nested_absmax_known_vectors() -> None:
    code = create_dynamic_map()
    # The signed dynamic map: 127 negatives, 0 at 127, 1.0 at 255.
    assert code.numel() == 256 and code[127] == 0 and code[255] == 1.0 and code[0] < -0.99
    absmax = dequantize_nested_absmax(torch.tensor([255, 127, 255], dtype=torch.uint8),
                                      torch.tensor([0.5, 2.0]), code, nested_blocksize=2, offset=0.25)
    assert absmax.tolist() == [0.75, 0.25, 2.25]


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("double_quant", [False, True])
def test_layer_dequantizes_like_bitsandbytes(quant_type: str, double_quant: bool) -> None:
    """A [N, K] weight through the method's loaders equals bitsandbytes' dequantization."""
    torch.manual_seed(0)
    n, k = 24, 128
    w = torch.randn(n, k) * 0.05
    tensors, reference = quantize_weight(w, quant_type, double_quant)
    cfg = resolve_quantization(_Cfg(quant_config(quant_type, double_quant)), None)
    layer = torch.nn.Module()
    layer.prefix = "model.layers.0.mlp.down_proj"
    method = cfg.get_quant_method(layer, layer.prefix)
    assert isinstance(method, BitsAndBytesLinearMethod)

    def plain_loader(param, loaded, shard_id=None):
        param.data.copy_(loaded)
    method.create_weights(layer, k, [n], k, n, torch.float32, plain_loader)
    params = dict(layer.named_parameters())
    for key, value in tensors.items():
        name = cfg.checkpoint_tensor_name(f"{layer.prefix}.{key}").rsplit(".", 1)[-1]
        params[name].weight_loader(params[name], value)
    method.process_weights_after_loading(layer)
    assert layer.weight.dtype == torch.uint8 and layer.weight.shape == (n, k // 2)
    x = torch.randn(3, k)
    torch.testing.assert_close(method.apply(layer, x), x @ reference.T, rtol=1e-5, atol=1e-6)
    assert json.loads(bytes(tensors[f"weight.quant_state.bitsandbytes__{quant_type}"].tolist()))["shape"] == [n, k]
    assert parse_quant_state(tensors[f"weight.quant_state.bitsandbytes__{quant_type}"])["blocksize"] == 64


# --- engine parity -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_src(seeded_checkpoint) -> str:
    return seeded_checkpoint("llama", 1)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_bnb_checkpoint_matches_dequantized_transformers(llama_src, tmp_path, name: str) -> None:
    quant_type, double_quant, skip, storage = VARIANTS[name]
    quant, oracle = tmp_path / "quant", tmp_path / "oracle"
    write_bnb_checkpoint(llama_src, quant, oracle, quant_type, double_quant, skip, storage)
    llm = LLM(str(quant), **ENGINE)
    assert llm.llm_engine.config.model_config.quantization == "bitsandbytes"
    layers = llm.llm_engine.engine_core.runner.model.model.layers
    qkv = layers[0].self_attn.qkv_proj
    assert isinstance(qkv.quant_method, BitsAndBytesLinearMethod) and qkv.weight.dtype == torch.uint8
    mlp_1 = layers[1].mlp.gate_up_proj
    assert isinstance(mlp_1.quant_method, BitsAndBytesLinearMethod) == (skip is None)
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    ref = hf_reference(str(oracle), PROMPTS, MAX_TOKENS)
    check_close(ref, llm.generate(prompts, greedy(), use_tqdm=False), PROMPTS)
    # Again, from the prefix cache.
    check_close(ref, llm.generate(prompts, greedy(), use_tqdm=False), PROMPTS)
    assert llm.llm_engine.get_stats().prefix_cache_hits_total > 0


# --- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    ({"load_in_4bit": False, "_load_in_4bit": False, "load_in_8bit": True, "_load_in_8bit": True}, "8-bit"),
    ({"load_in_4bit": False, "_load_in_4bit": False}, "neither load_in_4bit"),
    ({"bnb_4bit_quant_type": "int4"}, "bnb_4bit_quant_type"),
    ({"bnb_4bit_compute_dtype": "float8"}, "bnb_4bit_compute_dtype"),
])
def test_bad_configs_refused(overrides: dict, message: str) -> None:
    with pytest.raises(QuantizationError, match=message):
        resolve_quantization(_Cfg({**quant_config("nf4", True), **overrides}), None)


def test_in_flight_nf4_matches_the_reference_quantizer(llama_checkpoint, tmp_path) -> None:
    """``--quantization bitsandbytes`` on a float checkpoint quantizes it while loading to what
    bitsandbytes' quantize_4bit makes of it (NF4, blocks of 64, no double quantization): the
    reference quantizer's dequantized weights in transformers give the same ids and logprobs."""
    oracle = tmp_path / "oracle"
    write_bnb_checkpoint(llama_checkpoint, tmp_path / "q", oracle, "nf4", False)
    ref = hf_reference(str(oracle), PROMPTS, MAX_TOKENS)
    llm = LLM(llama_checkpoint, quantization="bitsandbytes", **ENGINE)
    assert llm.llm_engine.config.model_config.quantization == "bitsandbytes"
    qkv = llm.llm_engine.engine_core.runner.model.model.layers[0].self_attn.qkv_proj
    assert qkv.weight.dtype == torch.uint8 and qkv.bnb_absmax.shape == (qkv.weight.shape[0], qkv.weight.shape[1] // 32)
    check_close(ref, llm.generate([{"prompt_token_ids": p} for p in PROMPTS], greedy(), use_tqdm=False), PROMPTS)


def test_refusals_at_layers_and_online() -> None:
    class Layer:
        prefix = "model.layers.0.mlp.down_proj"

    online = resolve_quantization(_Cfg(None), "bitsandbytes")
    with pytest.raises(QuantizationError, match="blocks of 64"):  # an input width not whole blocks
        online.get_quant_method(Layer(), Layer.prefix).create_weights(Layer(), 96, [64], 96, 64, torch.float32, None)
    cfg = resolve_quantization(_Cfg(quant_config("nf4", False, ["q_proj"])), None)
    with pytest.raises(QuantizationError, match="some of"):
        cfg.get_quant_method(torch.nn.Module(), "model.layers.0.self_attn.qkv_proj")
    assert cfg.get_quant_method(torch.nn.Module(), "lm_head") is None


def test_blocks_across_rows_refused() -> None:
    """bitsandbytes blocks run along the flattened weight; pagedlm keeps them inside rows (so
    that q/k/v parts and tensor-parallel shards cut between blocks): blocks of 128 over 64
    inputs are refused."""
    n, k = 8, 64
    tensors, _ = quantize_weight(torch.randn(n, k), "nf4", False, blocksize=128)
    cfg = resolve_quantization(_Cfg(quant_config("nf4", False)), None)
    layer = torch.nn.Module()
    layer.prefix = "model.layers.0.self_attn.o_proj"
    method = cfg.get_quant_method(layer, layer.prefix)
    method.create_weights(layer, k, [n], k, n, torch.float32, lambda p, w, s=None: p.data.copy_(w))
    params = dict(layer.named_parameters())
    for key, value in tensors.items():
        name = cfg.checkpoint_tensor_name(f"{layer.prefix}.{key}").rsplit(".", 1)[-1]
        params[name].weight_loader(params[name], value)
    with pytest.raises(QuantizationError, match="multiples of 128"):
        method.process_weights_after_loading(layer)


def test_checkpoint_disagreeing_with_config_refused(llama_src, tmp_path) -> None:
    """A config that claims double quantization the tensors lack is refused at load."""
    quant, oracle = tmp_path / "quant", tmp_path / "oracle"
    write_bnb_checkpoint(llama_src, quant, oracle, "nf4", False, config_overrides={"bnb_4bit_use_double_quant": True})
    with pytest.raises((ConfigError, ValueError), match="nested_absmax|double quantization"):
        LLM(str(quant), **ENGINE)


def test_dummy_weights_run(llama_src, tmp_path) -> None:
    """--load-format dummy fills valid codes and absmax (benchmarks of a shape)."""
    quant, oracle = tmp_path / "quant", tmp_path / "oracle"
    write_bnb_checkpoint(llama_src, quant, oracle, "nf4", True)
    llm = LLM(str(quant), load_format="dummy", **ENGINE)
    out = llm.generate([{"prompt_token_ids": [7, 8, 9]}], greedy(4), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 4
