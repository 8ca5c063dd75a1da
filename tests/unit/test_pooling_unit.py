"""Pooling without a model: the scheduler finishes pooling requests once their prompt is
computed (whole prompts only, nothing sampled, no block leaked, nothing rescheduled while a
step is in flight), and the pooler settings read from sentence-transformers files."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from pagedlm.config import CacheConfig, ConfigError, SchedulerConfig
from pagedlm.engine.messages import ModelRunnerOutput, SchedulerOutput
from pagedlm.engine.request import Request
from pagedlm.engine.scheduler import Scheduler
from pagedlm.pooling_config import PoolerConfig, build_pooler_config, resolve_runner
from pagedlm.pooling_params import PoolingParams
from pagedlm.sampling_params import SamplingParams

BS = 4


def make_pooling_scheduler(budget: int = 16, num_blocks: int = 64) -> Scheduler:
    return Scheduler(SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=budget, max_model_len=16,
                                     enable_chunked_prefill=False),
                     CacheConfig(block_size=BS, enable_prefix_caching=False), num_blocks)


def pooling_request(req_id: str, num_tokens: int) -> Request:
    return Request(req_id, list(range(100, 100 + num_tokens)), SamplingParams(max_tokens=1), None,
                   pooling_params=PoolingParams(task="embed"))


def pool_step_output(out: SchedulerOutput) -> ModelRunnerOutput:
    """What the runner returns for pooling requests: no samples, one vector per finished prompt."""
    req_ids = list(out.num_scheduled_tokens)
    assert all(n.pooling_params is not None for n in out.scheduled_new_reqs)
    return ModelRunnerOutput(req_ids, [[] for _ in req_ids],
                             pooler_output={r: [float(out.num_scheduled_tokens[r])] for r in req_ids})


def assert_all_free(sched: Scheduler) -> None:
    assert not sched.has_unfinished_requests()
    assert sched.kv.num_free_blocks == sched.kv.num_blocks and sched.requests == {}


def test_pooling_request_finishes_after_its_prompt_step():
    sched = make_pooling_scheduler()
    sched.add_request(pooling_request("a", 5))
    sched.add_request(pooling_request("b", 3))
    out = sched.schedule()
    assert out.num_scheduled_tokens == {"a": 5, "b": 3}
    results = {r.req_id: r for r in sched.update_from_output(out, pool_step_output(out))}
    assert {k: (r.finish_reason, r.pooling_output, r.new_token_ids) for k, r in results.items()} == {
        "a": ("stop", [5.0], []), "b": ("stop", [3.0], [])}
    assert_all_free(sched)
    assert sched.schedule().finished_req_ids == {"a", "b"}  # the runner drops their state


def test_prompts_are_never_chunked():
    sched = make_pooling_scheduler(budget=10)
    for req_id, n in (("a", 6), ("b", 6), ("c", 10)):
        sched.add_request(pooling_request(req_id, n))
    steps = []
    while sched.has_unfinished_requests():
        out = sched.schedule()
        steps.append(out.num_scheduled_tokens)
        sched.update_from_output(out, pool_step_output(out))
    # b does not fit beside a (4 tokens of budget left): it waits instead of running a chunk.
    assert steps == [{"a": 6}, {"b": 6}, {"c": 10}]
    assert_all_free(sched)


def test_no_extra_step_while_the_prompt_step_is_in_flight():
    """Async scheduling schedules step N+1 before step N's output arrives: a pooling request
    whose prompt is in step N has nothing left to compute and must not be scheduled again."""
    sched = make_pooling_scheduler()
    sched.add_request(pooling_request("a", 5))
    first = sched.schedule()
    sched.add_request(pooling_request("b", 2))
    second = sched.schedule()
    assert first.num_scheduled_tokens == {"a": 5} and second.num_scheduled_tokens == {"b": 2}
    sched.update_from_output(first, pool_step_output(first))
    sched.update_from_output(second, pool_step_output(second))
    assert sched.schedule().total_num_scheduled_tokens == 0
    assert_all_free(sched)


# ---- pooler settings ---------------------------------------------------------------------


def write_st_model(root: Path, pooling: dict, modules: list[str]) -> str:
    entries = [{"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
               for i, (kind, path) in enumerate((m, {"Pooling": "1_Pooling"}.get(m, "")) for m in modules)]
    (root / "modules.json").write_text(json.dumps(entries))
    (root / "1_Pooling").mkdir(exist_ok=True)
    (root / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return str(root)


HF = SimpleNamespace(hidden_size=32)


def test_sentence_transformers_pooling_is_honoured(tmp_path):
    cls_only = write_st_model(tmp_path, {"pooling_mode_cls_token": True}, ["Transformer", "Pooling"])
    assert build_pooler_config(cls_only, HF, "LAST") == PoolerConfig("CLS", False, 32, None)
    last = write_st_model(tmp_path, {"pooling_mode_lasttoken": True}, ["Transformer", "Pooling", "Normalize"])
    assert build_pooler_config(last, HF, "CLS") == PoolerConfig("LAST", True, 32, None)
    # The user's pooler_config wins over the checkpoint's.
    assert build_pooler_config(last, HF, "CLS", {"normalize": False}).normalize is False
    assert resolve_runner("auto", last, can_generate=True, can_pool=True) == "pooling"


@pytest.mark.parametrize("pooling, modules, fragment", [
    ({"pooling_mode_max_tokens": True}, ["Transformer", "Pooling"], "not supported"),
    ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True}, ["Transformer", "Pooling"], "exactly one"),
    ({"pooling_mode_mean_tokens": True}, ["Transformer", "Pooling", "Dense"], "Dense"),
])
def test_unsupported_sentence_transformers_setups_are_refused(tmp_path, pooling, modules, fragment):
    with pytest.raises(ConfigError, match=fragment):
        build_pooler_config(write_st_model(tmp_path, pooling, modules), HF, "CLS")


def test_runner_resolution_and_dimensions(tmp_path):
    assert resolve_runner("auto", str(tmp_path), can_generate=True, can_pool=True) == "generate"
    assert resolve_runner("auto", str(tmp_path), can_generate=False, can_pool=True) == "pooling"
    with pytest.raises(ConfigError, match="runner must be one of"):
        resolve_runner("embed", str(tmp_path), True, True)
    any_size = PoolerConfig("MEAN", True, 32, ())
    any_size.check_dimensions(7)
    with pytest.raises(ValueError, match="between 1 and"):
        any_size.check_dimensions(33)
    with pytest.raises(ValueError, match="Matryoshka"):
        PoolerConfig("MEAN", True, 32, None).check_dimensions(7)


def test_cli_flags_reach_engine_args():
    import argparse

    from pagedlm.engine_args import EngineArgs

    parser = EngineArgs.add_cli_args(argparse.ArgumentParser())
    args = parser.parse_args(["--model", "m", "--runner", "pooling",
                              "--override-pooler-config", '{"pooling_type": "MEAN"}'])
    engine_args = EngineArgs.from_cli_args(args)
    assert (engine_args.runner, engine_args.pooler_config) == ("pooling", {"pooling_type": "MEAN"})
    assert EngineArgs.from_cli_args(parser.parse_args(["--model", "m"])).runner == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "m", "--runner", "embed"])
