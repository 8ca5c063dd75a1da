"""LoRA pieces without a model: the shrink/expand references against a per-token loop, PEFT
adapter validation errors, the scheduler's max_loras gate, the adapter in the block hash,
option checks, --lora-modules parsing and the lora_requests_info stats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pagedlm.config import CacheConfig, ConfigError, SchedulerConfig
from pagedlm.engine.request import Request, RequestStatus
from pagedlm.engine.scheduler import Scheduler
from pagedlm.lora import ops
from pagedlm.lora.peft import LoRAAdapterError, validate_adapter
from pagedlm.lora.registry import LoRAModules, LoRAValidator, parse_lora_module
from pagedlm.lora.request import LoRARequest
from pagedlm.lora.testing import write_random_adapter
from pagedlm.sampling_params import SamplingParams


def test_shrink_expand_reference_equal_a_per_token_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    num_tokens, k, num_slots, rank, widths = 11, 24, 3, 4, [16, 8, 8]
    x = torch.randn(num_tokens, k, generator=gen)
    a = torch.randn(num_slots, len(widths) * rank, k, generator=gen)
    b = torch.randn(num_slots, sum(widths), rank, generator=gen)
    slots = torch.tensor([0, -1, 2, 2, 1, -1, 0, 1, 2, -1, 0], dtype=torch.int32)
    starts = (0, 16, 24, 32)
    y0 = torch.randn(num_tokens, sum(widths), generator=gen)
    y = y0.clone()
    shrunk = ops.lora_shrink_ref(x, a, slots)
    ops.lora_expand_ref(y, shrunk, b, slots, starts, rank)
    for t in range(num_tokens):
        s = int(slots[t])
        if s < 0:
            assert torch.equal(y[t], y0[t]) and not shrunk[t].any()
            continue
        h = a[s] @ x[t]  # [S*R]
        for i in range(3):
            want = y0[t, starts[i]:starts[i + 1]] + b[s, starts[i]:starts[i + 1]] @ h[i * rank:(i + 1) * rank]
            assert torch.allclose(y[t, starts[i]:starts[i + 1]], want, atol=1e-4)


@pytest.fixture(scope="module")
def hf_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2)


def _edit_config(path: str, **changes) -> None:
    cfg_path = Path(path) / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(changes)
    cfg_path.write_text(json.dumps(cfg))


def test_adapter_validation_errors(hf_config, tmp_path: Path) -> None:
    good = write_random_adapter(tmp_path / "good", hf_config, rank=8)
    cfg = validate_adapter(good, 16, hf_config)
    assert cfg.rank == 8 and cfg.scaling == 32 / 8 and len(cfg.modules) == 2 * 7
    with pytest.raises(LoRAAdapterError, match="rank 8, more than max_lora_rank=4"):
        validate_adapter(good, 4, hf_config)
    with pytest.raises(LoRAAdapterError, match="is not a directory"):
        validate_adapter(str(tmp_path / "missing"), 16, hf_config)
    for key, value, needle in [("use_dora", True, "DoRA"), ("modules_to_save", ["lm_head"], "modules_to_save"),
                               ("bias", "all", "bias"), ("target_modules", ["embed_tokens"], "embed_tokens")]:
        bad = write_random_adapter(tmp_path / key, hf_config, rank=8)
        _edit_config(bad, **{key: value})
        with pytest.raises(LoRAAdapterError, match=needle):
            validate_adapter(bad, 16, hf_config)
    rs = write_random_adapter(tmp_path / "rs", hf_config, rank=4)
    _edit_config(rs, use_rslora=True)
    assert validate_adapter(rs, 16, hf_config).scaling == 32 / 2  # alpha / sqrt(r)
    # An adapter trained for another base model: the shapes say so.
    from transformers import LlamaConfig

    other = LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2)
    with pytest.raises(LoRAAdapterError, match="another model"):
        validate_adapter(write_random_adapter(tmp_path / "other", other, rank=8), 16, hf_config)
    deep = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=2)
    with pytest.raises(LoRAAdapterError, match="layer 2 does not exist"):
        validate_adapter(write_random_adapter(tmp_path / "deep", deep, rank=8), 16, hf_config)


def test_validator_and_served_modules(hf_config, tmp_path: Path) -> None:
    path = write_random_adapter(tmp_path / "a", hf_config, rank=8)
    with pytest.raises(LoRAAdapterError, match="--enable-lora"):
        LoRAValidator(None, hf_config).check(LoRARequest("a", 1, path))
    from pagedlm.lora.config import LoRAConfig

    validator = LoRAValidator(LoRAConfig(2, 16, 2), hf_config)
    assert validator.check(LoRARequest("a", 1, path)) == {"name": "a", "id": 1, "path": path}
    with pytest.raises(LoRAAdapterError, match="already used"):
        validator.check(LoRARequest("b", 1, str(tmp_path)))
    modules = LoRAModules(validator, ["base"])
    assert modules.add("x", path).lora_int_id == 1 and modules.add("y", path).lora_int_id == 2
    with pytest.raises(LoRAAdapterError, match="already been loaded. If you want to load the adapter in place"):
        modules.add("base", path)
    modules.remove("x")
    assert modules.add("x", path).lora_int_id == 3  # ids are never reused
    with pytest.raises(ValueError, match="lora_int_id"):
        LoRARequest("z", 0, path)


def test_parse_lora_modules() -> None:
    assert parse_lora_module("sql=/a/b").lora_path == "/a/b"
    spec = parse_lora_module('{"name": "s", "path": "/p", "base_model_name": "m"}')
    assert (spec.lora_name, spec.lora_path, spec.base_model_name) == ("s", "/p", "m")
    for bad in ("noequals", '{"name": "s"}', '{"name": "s", "path": "/p", "rank": 3}'):
        with pytest.raises(LoRAAdapterError):
            parse_lora_module(bad)


def _request(req_id: str, lora_id: int | None, prompt: list[int] | None = None) -> Request:
    lora = {"name": f"l{lora_id}", "id": lora_id, "path": f"/p{lora_id}"} if lora_id else None
    return Request(req_id, prompt or [10, 11, 12, 13, 14, 15, 16, 17, 18], SamplingParams(max_tokens=4),
                   eos_token_id=None, lora_request=lora)


def test_scheduler_never_mixes_more_than_max_loras() -> None:
    sched = Scheduler(SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=256, max_model_len=64),
                      CacheConfig(block_size=4), 64, max_loras=2)
    for i, lora_id in enumerate([1, 2, 3, None, 1, 3]):
        sched.add_request(_request(f"r{i}", lora_id))
    out = sched.schedule()
    # Adapters 1 and 2 take the two slots; adapter 3 waits (keeping its place), base and 1 go ahead.
    assert set(out.num_scheduled_tokens) == {"r0", "r1", "r3", "r4"}
    assert {r.lora_request["id"] for r in out.scheduled_new_reqs if r.lora_request} == {1, 2}
    assert [r.request_id for r in sched.waiting] == ["r2", "r5"]
    stats = sched.stats()
    assert stats.max_lora == 2 and stats.running_lora_adapters == {"l1": 2, "l2": 1}
    assert stats.waiting_lora_adapters == {"l3": 2}
    sched.finish_requests(["r1"], RequestStatus.FINISHED_ABORTED)
    out = sched.schedule()  # adapter 2 drained: adapter 3 gets its slot
    assert {"r2", "r5"} <= set(out.num_scheduled_tokens)


def test_block_hash_keyed_by_adapter() -> None:
    sched = Scheduler(SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=64),
                      CacheConfig(block_size=4), 32, max_loras=2)
    base, a1, a1_again, a2 = _request("b", None), _request("x", 1), _request("y", 1), _request("z", 2)
    for r in (base, a1, a1_again, a2):
        sched.kv.update_block_hashes(r)
    assert a1.block_hashes == a1_again.block_hashes
    assert not set(a1.block_hashes) & set(base.block_hashes)
    assert not set(a1.block_hashes) & set(a2.block_hashes)


def test_lora_options_need_enable_lora(tmp_path: Path) -> None:
    from pagedlm.demo import build_tiny_checkpoint
    from pagedlm.engine_args import EngineArgs

    ckpt = str(build_tiny_checkpoint(tmp_path / "m"))
    with pytest.raises(ConfigError, match="need --enable-lora"):
        EngineArgs(model=ckpt, device="cpu", max_loras=2).create_engine_config()
    with pytest.raises(ConfigError, match="max_cpu_loras"):
        EngineArgs(model=ckpt, device="cpu", enable_lora=True, max_loras=4, max_cpu_loras=2).create_engine_config()
    with pytest.raises(ConfigError, match="max_lora_rank"):
        EngineArgs(model=ckpt, device="cpu", enable_lora=True, max_lora_rank=12).create_engine_config()
    config = EngineArgs(model=ckpt, device="cpu", enable_lora=True, max_loras=3).create_engine_config()
    assert config.lora_config.max_cpu_loras == 3


@pytest.mark.parametrize("name", ["phi3", "mixtral", "gemma2"])
def test_lora_refused_outside_the_llama_family(checkpoint_factory, name: str) -> None:
    """Phi-3 included: its classes extend Llama's, but its adapters target fused modules."""
    from pagedlm.engine_args import EngineArgs

    with pytest.raises(ConfigError, match="Llama family"):
        EngineArgs(model=checkpoint_factory(name), device="cpu", enable_lora=True).create_engine_config()
    for family in ("llama", "mistral", "qwen2"):
        assert EngineArgs(model=checkpoint_factory(family), device="cpu",
                          enable_lora=True).create_engine_config().lora_config is not None


def test_stats_sum_over_engines() -> None:
    from pagedlm.engine.async_llm import _sum_stats
    from pagedlm.engine.messages import SchedulerStats

    a = SchedulerStats(max_lora=4, running_lora_adapters={"x": 1}, waiting_lora_adapters={"y": 2})
    b = SchedulerStats(max_lora=4, running_lora_adapters={"x": 2, "z": 1})
    total = _sum_stats([a, b], 0, 0)
    assert total.max_lora == 4 and total.running_lora_adapters == {"x": 3, "z": 1}
    assert total.waiting_lora_adapters == {"y": 2} and a.running_lora_adapters == {"x": 1}


def test_lora_request_signature_as_vllm() -> None:
    """vLLM's LoRARequest: the deprecated lora_local_path stands in for lora_path; equal and
    hashed by name; long_lora_max_len (long-context LoRA) is refused, not ignored."""
    assert LoRARequest("a", 1, lora_local_path="/p").lora_path == "/p"
    assert LoRARequest("a", 1, "/p") == LoRARequest("a", 2, "/q") and LoRARequest("a", 1, "/p") != LoRARequest("b", 1, "/p")
    assert len({LoRARequest("a", 1, "/p"), LoRARequest("a", 1, "/p")}) == 1
    assert LoRARequest("a", 1, "/p", base_model_name="m").base_model_name == "m"
    with pytest.raises(ValueError, match="long_lora_max_len"):
        LoRARequest("a", 1, "/p", long_lora_max_len=4096)
    # vLLM's positions: the fourth is base_model_name; its later fields are known, refused when set.
    assert LoRARequest("a", 1, "/p", "m").base_model_name == "m"
    assert LoRARequest("a", 1, "/p", load_inplace=False, tensorizer_config_dict=None).lora_path == "/p"
    for kwargs in ({"load_inplace": True}, {"tensorizer_config_dict": {"x": 1}}, {"is_3d_lora_weight": True}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            LoRARequest("a", 1, "/p", **kwargs)
