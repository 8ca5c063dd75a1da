"""fp8 KV cache (--kv-cache-dtype fp8 / fp8_e5m2) on CPU, float32 model, tiny Llama.

The oracle is transformers with its K/V rounded through fp8 exactly as the cache stores them
(fp8(k / k_scale) * k_scale, after RoPE): greedy tokens and logprobs must match it as closely
as the float cache matches plain transformers. Against the float32 KV cache the fp8 cache is
only close: see test_fp8_kv_close_to_float_kv for the stated tolerance.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pagedlm import LLM, SamplingParams
from pagedlm.engine_args import EngineArgs
from pagedlm.worker import memory

NUM_LOGPROBS = 5
MAX_TOKENS = 8
PROMPTS = [
    [7],
    [11, 23, 5, 60, 2],
    list(range(30, 46)),  # exactly one block
    [(i * 37) % 500 + 5 for i in range(41)],
    [(i * 13) % 490 + 7 for i in range(70)],
]
FP8 = {"fp8": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
# Calibrated-looking per-layer scales (amax / 448 is ~0.008 here): not powers of two, so the
# fp8 grid they give differs from the unit scale's and ignoring them changes the output.
K_SCALES = [0.0113, 0.0131]
V_SCALES = [0.0097, 0.0142]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> str:
    from pagedlm.demo import build_tiny_checkpoint

    return str(build_tiny_checkpoint(tmp_path_factory.mktemp("fp8kv"), seed=3))


def with_scales(src: str, dst: Path, naming: str) -> str:
    """A copy of the checkpoint plus a second safetensors file holding per-layer KV scales
    under ``naming``'s tensor names."""
    from safetensors.torch import save_file

    dst.mkdir()
    for f in Path(src).iterdir():
        (dst / f.name).symlink_to(f)
    tensors = {}
    for i, (ks, vs) in enumerate(zip(K_SCALES, V_SCALES)):
        prefix = f"model.layers.{i}.self_attn"
        if naming == "hf":  # quant_method fp8 / vLLM
            tensors[f"{prefix}.k_scale"], tensors[f"{prefix}.v_scale"] = torch.tensor(ks), torch.tensor(vs)
        else:  # compressed-tensors kv_cache_scheme: [1] float32 output scales of k_proj / v_proj
            tensors[f"{prefix}.k_proj.output_scale"] = torch.tensor([ks])
            tensors[f"{prefix}.v_proj.output_scale"] = torch.tensor([vs])
    save_file(tensors, str(dst / "kv_scales.safetensors"))
    return str(dst)


def fp8_round_trip(x: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    limit = torch.finfo(dtype).max
    return ((x.float() / scale).clamp(-limit, limit).to(dtype).float() * scale).to(x.dtype)


def hf_fp8_reference(path: str, dtype: torch.dtype, k_scales: list[float], v_scales: list[float]):
    """transformers generate, float32, with K/V rounded through fp8 in every attention call."""
    from transformers import AttentionInterface, AutoModelForCausalLM
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def attention(module, query, key, value, attention_mask, **kwargs):
        i = module.layer_idx
        key, value = fp8_round_trip(key, k_scales[i], dtype), fp8_round_trip(value, v_scales[i], dtype)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("pagedlm_fp8_kv_test", attention)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                 attn_implementation="pagedlm_fp8_kv_test").eval()
    results = []
    for prompt in PROMPTS:
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=MAX_TOKENS, min_new_tokens=MAX_TOKENS,
                                 do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0)
        results.append((out.sequences[0, len(prompt):].tolist(), [s[0].float().log_softmax(-1) for s in out.logits]))
    return results


def greedy() -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, logprobs=NUM_LOGPROBS, ignore_eos=True)


def generate(path: str, **kwargs):
    llm = LLM(path, device="cpu", max_model_len=128, **kwargs)
    return llm, llm.generate([{"prompt_token_ids": p} for p in PROMPTS], greedy(), use_tqdm=False)


def check_matches(ref, outputs, tol: float) -> None:
    """vLLM's check: equal tokens with logprobs within ``tol``; at a divergence each side's
    token is in the other's top-k, and comparison stops there."""
    for (ref_ids, ref_lps), out in zip(ref, outputs):
        completion = out.outputs[0]
        for pos, (ref_id, our_id) in enumerate(zip(ref_ids, completion.token_ids)):
            ours = completion.logprobs[pos]
            if ref_id != our_id:
                assert our_id in torch.topk(ref_lps[pos], NUM_LOGPROBS).indices.tolist() and ref_id in ours
                break
            assert abs(ours[our_id].logprob - ref_lps[pos][ref_id].item()) < tol, (pos, out.prompt_token_ids[:4])


def runner(llm: LLM):
    return llm.llm_engine.engine_core.runner


@pytest.mark.parametrize("kv_cache_dtype", list(FP8))
def test_fp8_kv_matches_transformers_with_fp8_rounded_kv(ckpt: str, kv_cache_dtype: str) -> None:
    llm, outputs = generate(ckpt, kv_cache_dtype=kv_cache_dtype)
    assert all(c.dtype == FP8[kv_cache_dtype] for c in runner(llm).kv_caches)
    ref = hf_fp8_reference(ckpt, FP8[kv_cache_dtype], [1.0, 1.0], [1.0, 1.0])
    # A K/V element a float32 rounding apart on either side of an fp8 rounding boundary
    # lands one fp8 step apart: rare, and worth ~1e-3 in a logprob at most on this model.
    check_matches(ref, outputs, tol=2e-3)
    assert sum(o.outputs[0].token_ids == r[0] for o, r in zip(outputs, ref)) >= len(PROMPTS) - 1


@pytest.mark.parametrize("naming", ["hf", "compressed_tensors"])
def test_kv_scales_from_the_checkpoint_are_applied(ckpt: str, tmp_path: Path, naming: str) -> None:
    path = with_scales(ckpt, tmp_path / "scaled", naming)
    if naming != "hf":  # the names reach the same buffers; their use is shown once, below
        layers = runner(LLM(path, device="cpu", max_model_len=128, kv_cache_dtype="fp8")).model.attention_layers()
        assert [round(a.k_scale.item(), 6) for a in layers] == K_SCALES
        assert [round(a.v_scale.item(), 6) for a in layers] == V_SCALES
        return
    llm, outputs = generate(path, kv_cache_dtype="fp8")
    layers = runner(llm).model.attention_layers()
    assert [round(a.k_scale.item(), 6) for a in layers] == K_SCALES
    assert [round(a.v_scale.item(), 6) for a in layers] == V_SCALES
    scaled = hf_fp8_reference(path, torch.float8_e4m3fn, K_SCALES, V_SCALES)
    check_matches(scaled, outputs, tol=2e-3)
    # The oracle is sensitive to the scales: the unit-scale one differs by far more than the
    # tolerance, so a run that ignored them (on write, read or both) fails above.
    unit = hf_fp8_reference(path, torch.float8_e4m3fn, [1.0, 1.0], [1.0, 1.0])
    assert max((u[1][0] - s[1][0]).abs().max().item() for u, s in zip(unit, scaled)) > 2e-2


def test_every_kv_scale_name_reaches_its_layer(ckpt: str) -> None:
    from transformers import AutoConfig

    from pagedlm.models.llama import LlamaForCausalLM
    from pagedlm.models.loader.kv_scales import take_kv_scales

    model = LlamaForCausalLM(AutoConfig.from_pretrained(ckpt))
    t = torch.tensor
    weights = [
        ("model.layers.0.self_attn.k_proj.k_scale", t(0.5)),  # ModelOpt
        ("model.layers.0.self_attn.v_proj.v_scale", t([0.25])),
        ("model.layers.1.self_attn.kv_scale", t(0.125)),  # AutoFP8: both
        ("model.layers.1.self_attn.attn.v_scale", t(2.0)),  # already at the Attention layer
        ("model.layers.0.self_attn.q_scale", t(3.0)),  # fp8 attention's query scale: unused here
        ("model.norm.weight", t([1.0])),
    ]
    rest = list(take_kv_scales(model, weights))
    assert [name for name, _ in rest] == ["model.norm.weight"]
    layers = model.attention_layers()
    assert [(a.k_scale.item(), a.v_scale.item()) for a in layers] == [(0.5, 0.25), (0.125, 2.0)]
    with pytest.raises(ValueError, match="must be positive"):
        list(take_kv_scales(model, [("model.layers.0.self_attn.k_scale", t(0.0))]))


def test_kv_scales_load_without_fp8_cache_and_bad_scales_are_refused(ckpt: str, tmp_path: Path) -> None:
    """auto: the scales load (only an fp8 cache reads them) and output equals the float
    cache's. A per-channel scale is refused in one line."""
    path = with_scales(ckpt, tmp_path / "scaled", "hf")
    _, scaled = generate(path)
    _, plain = generate(ckpt)
    assert [o.outputs[0].token_ids for o in scaled] == [o.outputs[0].token_ids for o in plain]
    from safetensors.torch import save_file

    save_file({"model.layers.0.self_attn.k_scale": torch.ones(2)}, str(Path(path) / "kv_scales.safetensors"))
    with pytest.raises(ValueError, match="only per-tensor KV cache scales"):
        LLM(path, device="cpu", kv_cache_dtype="fp8", max_model_len=128)


def test_fp8_kv_close_to_float_kv(ckpt: str) -> None:
    """Stated tolerance of fp8 (e4m3, unit scales) against the float32 cache on this model
    (K/V of order 1, head_dim 16): teacher-forced prompt logprobs differ by < 0.15 on average
    and < 0.6 at worst (measured: 0.07 / 0.29); greedy output agrees on the first token of
    most prompts and passes vLLM's top-k cross-check up to the first divergence (fp8 keeps 3
    mantissa bits, so on a 2-layer random model the argmax flips within a few tokens)."""
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, logprobs=NUM_LOGPROBS, prompt_logprobs=0,
                            ignore_eos=True)
    runs = {}
    for dtype in ("auto", "fp8"):
        llm = LLM(ckpt, device="cpu", max_model_len=128, kv_cache_dtype=dtype, enable_prefix_caching=False)
        runs[dtype] = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    diffs = torch.tensor([abs(a.prompt_logprobs[i][p[i]].logprob - b.prompt_logprobs[i][p[i]].logprob)
                          for a, b, p in zip(runs["auto"], runs["fp8"], PROMPTS) for i in range(1, len(p))])
    assert diffs.mean() < 0.15 and diffs.max() < 0.6, (diffs.mean(), diffs.max())
    assert diffs.max() > 0  # the fp8 run really went through fp8
    firsts = [a.outputs[0].token_ids[0] == b.outputs[0].token_ids[0] for a, b in zip(runs["auto"], runs["fp8"])]
    assert sum(firsts) >= len(PROMPTS) - 1
    for a, b in zip(runs["auto"], runs["fp8"]):
        for pos, (x, y) in enumerate(zip(a.outputs[0].token_ids, b.outputs[0].token_ids)):
            if x != y:
                assert x in b.outputs[0].logprobs[pos] and y in a.outputs[0].logprobs[pos]
                break


def test_fp8_kv_prefix_caching_and_chunked_prefill(ckpt: str) -> None:
    """Every token's K/V goes through the fp8 cache before attention, so prefix hits and
    prefill chunks read exactly what a whole prefill reads: same tokens, same logprobs."""
    _, whole = generate(ckpt, kv_cache_dtype="fp8", enable_prefix_caching=False)
    llm = LLM(ckpt, device="cpu", max_model_len=128, kv_cache_dtype="fp8", max_num_batched_tokens=16,
              enable_prefix_caching=True, block_size=4)
    llm.generate([{"prompt_token_ids": p} for p in PROMPTS], greedy(), use_tqdm=False)  # fills the prefix cache
    again = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], greedy(), use_tqdm=False)
    assert llm.llm_engine.engine_core.scheduler.kv.stats.hits > 0
    for a, b in zip(whole, again):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        for pos, tok in enumerate(a.outputs[0].token_ids):
            assert abs(a.outputs[0].logprobs[pos][tok].logprob - b.outputs[0].logprobs[pos][tok].logprob) < 1e-4


@pytest.mark.parametrize("model_dtype", ["bfloat16", "float32"])
def test_fp8_kv_cache_holds_more_blocks(ckpt: str, model_dtype: str) -> None:
    """The same KV memory holds 2x the blocks of a bf16 cache (4x of float32)."""
    budget = 3 << 20

    def num_blocks(kv_cache_dtype: str) -> int:
        args = EngineArgs(model=ckpt, device="cpu", dtype=model_dtype, kv_cache_dtype=kv_cache_dtype,
                          kv_cache_memory_bytes=budget, max_model_len=128, max_num_seqs=4096)
        return memory.cpu_num_blocks(args.create_engine_config())

    ratio = {"bfloat16": 2, "float32": 4}[model_dtype]
    assert num_blocks("fp8") == ratio * num_blocks("auto")
    assert num_blocks("fp8_e5m2") == num_blocks("fp8")


def test_fp8_kv_engine_sizes_its_cache_by_the_fp8_bytes(ckpt: str) -> None:
    budget = 1 << 20
    llm = LLM(ckpt, device="cpu", max_model_len=128, kv_cache_dtype="fp8", kv_cache_memory_bytes=budget,
              max_num_seqs=4096)
    r = runner(llm)
    per_block = sum(c[:, 0].numel() for c in r.kv_caches)  # one byte per element
    assert memory.kv_cache_bytes_per_block(r.config) == per_block
    assert r.num_blocks == budget // per_block
    assert sum(c.numel() * c.element_size() for c in r.kv_caches) <= budget


def test_kv_cache_dtype_spellings(ckpt: str) -> None:
    def cache_dtype(value: str) -> str:
        return EngineArgs(model=ckpt, device="cpu", kv_cache_dtype=value).create_engine_config().cache_config.cache_dtype

    assert [cache_dtype(v) for v in ("auto", "fp8", "fp8_e4m3", "fp8_e5m2")] == [
        "auto", "fp8_e4m3", "fp8_e4m3", "fp8_e5m2"]
    with pytest.raises(ValueError, match="kv_cache_dtype must be one of"):
        cache_dtype("int8")


def test_fp8_kv_refused_on_gpus_without_fp8(monkeypatch: pytest.MonkeyPatch) -> None:
    from pagedlm.attention.kv_cache_dtype import resolve_kv_cache_dtype

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    with pytest.raises(ValueError, match="compute capability 8.9 .* this one is 8.0"):
        resolve_kv_cache_dtype("fp8", "cuda")
    assert resolve_kv_cache_dtype("auto", "cuda") == "auto"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    assert resolve_kv_cache_dtype("fp8_e5m2", "cuda") == "fp8_e5m2"
