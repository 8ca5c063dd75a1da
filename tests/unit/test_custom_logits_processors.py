"""vLLM V1's custom logits processors: LLM(logits_processors=[...]) with per-request
extra_args, the BatchUpdate the persistent batch produces, loading by name, and the
configurations that are refused at start-up."""

from __future__ import annotations

import pytest
import torch

from custom_logits_procs import DummyLogitsProcessor
from pagedlm import LLM, SamplingParams
from pagedlm.config import ConfigError
from pagedlm.engine_args import EngineArgs
from pagedlm.engine.logits_processor_loading import resolve_logits_processors, validate_request_params
from pagedlm.sample.custom_logits import CustomLogits
from pagedlm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality
from pagedlm.worker.persistent_batch import PersistentBatch

KWARGS = dict(device="cpu", max_model_len=64, max_num_seqs=3, enforce_eager=True)
PROMPTS = ["the cat sat on", "a b c d e", "hello there my friend", "one two", "x y z", "numbers 1 2 3 4",
           "once upon a time"]
MAX_TOKENS = [3, 9, 5, 11, 2, 7, 6]  # rows finish at different steps: removed, refilled, compacted


def _token_ids(llm: LLM, params: list[SamplingParams]) -> list[list[int]]:
    return [list(o.outputs[0].token_ids) for o in llm.generate(PROMPTS, params, use_tqdm=False)]


@pytest.fixture(scope="module")
def baseline(llama_checkpoint: str) -> list[list[int]]:
    llm = LLM(llama_checkpoint, **KWARGS)
    return _token_ids(llm, [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in MAX_TOKENS])


@pytest.fixture(scope="module")
def llm(llama_checkpoint: str) -> LLM:
    # One class object, one "module:Class" name, one "module.Class" name.
    return LLM(llama_checkpoint, **KWARGS, logits_processors=[
        DummyLogitsProcessor, "custom_logits_procs:CountingAdapter", "custom_logits_procs.OnlyTokenWhenRandom"])


def test_the_names_travel_in_the_engine_config(llm: LLM) -> None:
    assert llm.llm_engine.config.logits_processors == (
        "custom_logits_procs:DummyLogitsProcessor", "custom_logits_procs:CountingAdapter",
        "custom_logits_procs:OnlyTokenWhenRandom")


def test_target_token_for_exactly_the_rows_that_ask(llm: LLM, baseline: list[list[int]]) -> None:
    targets = {0: 7, 3: 11, 4: 5, 6: 19}
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True,
                             extra_args={"target_token": targets[i]} if i in targets else None)
              for i, n in enumerate(MAX_TOKENS)]
    out = _token_ids(llm, params)
    for i, ids in enumerate(out):
        if i in targets:
            assert ids == [targets[i]] * MAX_TOKENS[i], i
        else:
            assert ids == baseline[i], i  # the other rows' greedy outputs are untouched


def test_adapter_per_request_callable_reads_the_live_output_list(llm: LLM, baseline: list[list[int]]) -> None:
    starts = {1: 20, 2: 40, 5: 60}
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True,
                             extra_args={"count_from": starts[i]} if i in starts else {"target_token": 3} if i == 0
                             else None)
              for i, n in enumerate(MAX_TOKENS)]
    out = _token_ids(llm, params)
    for i, ids in enumerate(out):
        if i in starts:
            assert ids == list(range(starts[i], starts[i] + MAX_TOKENS[i])), i
        elif i == 0:
            assert ids == [3] * MAX_TOKENS[0]
        else:
            assert ids == baseline[i], i


def test_argmax_invariant_processors_run_after_temperature_on_random_rows_only(
        llm: LLM, baseline: list[list[int]]) -> None:
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in MAX_TOKENS]
    params[1] = SamplingParams(temperature=1.0, seed=3, max_tokens=MAX_TOKENS[1], ignore_eos=True,
                               extra_args={"only_token": 9})
    # Greedy: an argmax-invariant processor is skipped (vLLM's contract), so nothing changes.
    params[2] = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS[2], ignore_eos=True,
                               extra_args={"only_token": 9})
    out = _token_ids(llm, params)
    assert out[1] == [9] * MAX_TOKENS[1]
    assert out[2] == baseline[2]
    assert [out[i] for i in (0, 3, 4, 5, 6)] == [baseline[i] for i in (0, 3, 4, 5, 6)]


def test_validate_params_and_extra_args_are_checked_before_queueing(llm: LLM) -> None:
    with pytest.raises(ValueError, match="target_token must be an integer"):
        llm.generate(["hi"], SamplingParams(max_tokens=2, extra_args={"target_token": "x"}), use_tqdm=False)
    with pytest.raises(ValueError, match="none is loaded"):
        validate_request_params([], SamplingParams(extra_args={"k": 1}))
    validate_request_params([], SamplingParams(extra_args={}))


class _Recorder(LogitsProcessor):
    def __init__(self, vllm_config=None, device=None, is_pin_memory=False) -> None:
        self.updates: list[BatchUpdate | None] = []

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        self.updates.append(batch_update)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        logits[:, 0] = torch.arange(logits.shape[0], dtype=logits.dtype)  # column 0 = the row it sat in
        return logits


def test_the_persistent_batch_reports_removed_added_moved_in_vllms_order() -> None:
    recorder = _Recorder()
    seam = CustomLogits([recorder])
    batch = PersistentBatch(8, 32, 4, 16, torch.device("cpu"), observer=seam)
    outputs = {r: [] for r in "abcde"}
    for r in "abcde":
        batch.add(r, [1, 2], outputs[r], [], 0, SamplingParams())
    seam.begin_step(batch.num_rows)
    assert [a[0] for a in recorder.updates[0].added] == [0, 1, 2, 3, 4]
    assert recorder.updates[0].added[2][3] is outputs["c"]  # the caller's (live) list
    seam.begin_step(batch.num_rows)
    assert recorder.updates[1] is None  # no change: None, as vLLM
    # a and c finish; f joins (takes row 0, the lowest hole); e (the last row) fills row 2.
    batch.remove("a")
    batch.remove("c")
    batch.add("f", [3], [], [], 0, SamplingParams())
    batch.condense()
    seam.begin_step(batch.num_rows)
    update = recorder.updates[2]
    assert update.batch_size == 4
    assert list(update.removed) == [2]  # row 0 was taken again: only "added"
    assert [a[0] for a in update.added] == [0]
    assert list(update.moved) == [(4, 2, MoveDirectionality.UNIDIRECTIONAL)]
    assert batch.row_of == {"f": 0, "b": 1, "e": 2, "d": 3}
    # apply: processors see persistent rows; the sampler's rows come back in its own order.
    logits = torch.zeros(3, 16)
    out = seam.apply(logits, batch.rows_of(["d", "f", "e"]), argmax_invariant=False)
    assert out[:, 0].tolist() == [3.0, 0.0, 2.0]
    assert logits[:, 0].tolist() == [0.0, 0.0, 0.0]  # the caller's logits are left as they were


def test_names_that_do_not_load_are_refused() -> None:
    with pytest.raises(ConfigError, match="cannot import module 'no_such_module_xyz'"):
        resolve_logits_processors(["no_such_module_xyz:Proc"])
    with pytest.raises(ConfigError, match="not found in module"):
        resolve_logits_processors(["custom_logits_procs:Missing"])
    with pytest.raises(ConfigError, match="not a subclass"):
        resolve_logits_processors(["custom_logits_procs:NotAProcessor"])
    with pytest.raises(ConfigError, match="module:Class"):
        resolve_logits_processors([42])

    class Local(DummyLogitsProcessor):
        pass

    with pytest.raises(ConfigError, match="top level"):
        resolve_logits_processors([Local])


def test_a_bad_name_is_a_start_up_error(llama_checkpoint: str) -> None:
    with pytest.raises(ConfigError, match="cannot import module"):
        LLM(llama_checkpoint, **KWARGS, logits_processors=["no_such_module_xyz:Proc"])


@pytest.mark.parametrize("extra,needle", [
    (dict(speculative_config={"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 2}),
     "speculative decoding"),
    (dict(pipeline_parallel_size=2), "pipeline parallelism"),
    (dict(async_scheduling=True), "async scheduling"),
    (dict(runner="pooling"), "Pooling models"),
])
def test_paths_that_cannot_run_them_are_refused(llama_checkpoint: str, extra: dict, needle: str) -> None:
    args = EngineArgs(llama_checkpoint, **{**KWARGS, **extra}, logits_processors=[DummyLogitsProcessor])
    with pytest.raises(ConfigError, match=needle):
        args.create_engine_config()


def test_the_cli_flag_takes_names() -> None:
    import argparse

    parser = EngineArgs.add_cli_args(argparse.ArgumentParser())
    args = EngineArgs.from_cli_args(parser.parse_args(
        ["--model", "m", "--logits-processors", "custom_logits_procs:DummyLogitsProcessor", "a.b:C"]))
    assert args.logits_processors == ["custom_logits_procs:DummyLogitsProcessor", "a.b:C"]
