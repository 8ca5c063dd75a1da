"""The engine surface (LLMEngine / AsyncLLM.from_engine_args, EngineArgs built by hand) honours
or refuses every engine argument as LLM(...) and `pagedlm serve` do: nothing set on the
EngineArgs is dropped because the caller did not repeat it elsewhere."""

from __future__ import annotations

from typing import Any

import pytest

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
