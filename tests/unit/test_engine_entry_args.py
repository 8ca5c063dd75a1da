"""Engine arguments and LLM keyword arguments are honoured or refused, never dropped: on the
engine surface (LLMEngine / AsyncLLM.from_engine_args with EngineArgs built by hand) as through
LLM(...) and `pagedlm serve`, values of the wrong kind included, and LLM.generate's use_tqdm."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import pytest

from pagedlm.arg_utils import check_choices, check_switches
from pagedlm.config import ConfigError
from pagedlm.engine import async_llm, llm_engine
from pagedlm.engine_args import EngineArgs


class _FakeMPClient:
    """Stands in for the engine-core processes: records how many were asked for."""

    started: list[int] = []

    def __init__(self, engine_args: Any, num_engines: int = 1, cores: Any = None, client_index: int = 0) -> None:
        self.num_engines = num_engines
        _FakeMPClient.started.append(num_engines)

    def shutdown(self) -> None:
        pass


@pytest.fixture
def fake_cores(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    _FakeMPClient.started = []
    monkeypatch.setattr(llm_engine, "MPClient", _FakeMPClient)
    monkeypatch.setattr(async_llm, "MPClient", _FakeMPClient)
    return _FakeMPClient.started


def test_llm_engine_from_engine_args_starts_the_data_parallel_cores(llama_checkpoint: str,
                                                                   fake_cores: list[int]) -> None:
    """vLLM's LLMEngine.from_engine_args(EngineArgs(data_parallel_size=2)): two engine cores."""
    llm_engine.LLMEngine.from_engine_args(EngineArgs(model=llama_checkpoint, device="cpu", max_model_len=64,
                                                     data_parallel_size=2))
    assert fake_cores == [2]


def test_async_llm_from_engine_args_starts_the_data_parallel_cores(llama_checkpoint: str,
                                                                  fake_cores: list[int]) -> None:
    """AsyncLLM(Engine).from_engine_args (and `pagedlm run-batch -dp 2`, which builds its engine so)."""
    async_llm.AsyncLLM.from_engine_args(EngineArgs(model=llama_checkpoint, device="cpu", max_model_len=64,
                                                   data_parallel_size=2))
    assert fake_cores == [2]


CHOICE_OPTIONS = sorted(f.name for f in dataclasses.fields(EngineArgs) if f.metadata.get("choices"))


@pytest.mark.parametrize("name", CHOICE_OPTIONS)
def test_a_value_outside_an_options_choices_is_refused_as_a_keyword(llama_checkpoint: str, name: str) -> None:
    """The flag's parser refuses it on the command line; LLM(logprobs_mode="raw") ran as raw_logprobs."""
    args = EngineArgs(**{"model": llama_checkpoint, "device": "cpu", "max_model_len": 64, name: "no-such-value"})
    with pytest.raises(ConfigError, match="no-such-value"):
        args.create_engine_config()


def test_choices_accept_their_values_and_unset() -> None:
    check_choices(EngineArgs(model="m", logprobs_mode="processed_logits", scheduling_policy="priority",
                             reasoning_parser="", distributed_executor_backend=None))


SWITCHES = sorted(f.name for f in dataclasses.fields(EngineArgs) if typing.get_type_hints(EngineArgs)[f.name] in
                  (bool, bool | None))


@pytest.mark.parametrize("name", SWITCHES)
def test_an_on_off_option_refuses_a_string(llama_checkpoint: str, name: str) -> None:
    """LLM(enforce_eager="false") read as on (a non-empty string is true); vLLM's configs read it as off."""
    args = EngineArgs(**{"model": llama_checkpoint, "device": "cpu", "max_model_len": 64, name: "false"})
    with pytest.raises(ConfigError, match=f"{name} must be True or False"):
        args.create_engine_config()


def test_switches_take_bools_and_none_where_optional() -> None:
    check_switches(EngineArgs(model="m", enforce_eager=True, async_scheduling=None, enable_chunked_prefill=False))
    with pytest.raises(ConfigError, match="enforce_eager"):
        check_switches(EngineArgs(model="m", enforce_eager=None))


@pytest.mark.parametrize("engine_class", [llm_engine.LLMEngine, async_llm.AsyncLLM])
def test_from_engine_args_gives_the_no_effect_notices_once(llama_checkpoint: str, fake_cores: list[int],
                                                           pagedlm_warnings: list[str], engine_class: Any) -> None:
    """An option with no effect here is accepted with its one-line notice on the engine surface too
    (LLM() and serve gave it; LLMEngine.from_engine_args(EngineArgs(swap_space=8)) said nothing)."""
    args = EngineArgs(model=llama_checkpoint, device="cpu", max_model_len=64, swap_space=8, data_parallel_size=2)
    args.log_notices()  # as LLM() and serve do before building the engine: not twice
    engine_class.from_engine_args(args)
    assert sum("--swap-space has no effect" in m for m in pagedlm_warnings) == 1
    pagedlm_warnings.clear()
    engine_class.from_engine_args(EngineArgs(model=llama_checkpoint, device="cpu", max_model_len=64, swap_space=8,
                                             data_parallel_size=2))
    assert sum("--swap-space has no effect" in m for m in pagedlm_warnings) == 1


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from pagedlm import LLM
    from pagedlm.demo import build_tiny_checkpoint

    return LLM(str(build_tiny_checkpoint(tmp_path_factory.mktemp("tqdm"))), device="cpu", max_model_len=64)


def test_use_tqdm_factory_makes_the_bar_for_one_prompt_too(llm: Any) -> None:
    """vLLM's LLM.generate(prompt, use_tqdm=functools.partial(tqdm, ...)) uses the factory for a
    single prompt as well; it was dropped (no bar) below two prompts."""
    from pagedlm import SamplingParams

    bars: list[dict[str, Any]] = []

    class Bar:
        def __init__(self, **kwargs: Any) -> None:
            bars.append({**kwargs, "n": 0})

        def update(self, n: int) -> None:
            bars[-1]["n"] += n

        def close(self) -> None:
            bars[-1]["closed"] = True

    llm.generate("hello", SamplingParams(max_tokens=2), use_tqdm=Bar)
    assert [(b["total"], b["n"], b.get("closed")) for b in bars] == [(1, 1, True)]
