"""--disable-sliding-window (vLLM): the context is capped at the model's sliding window (so
every layer sees the whole sequence), a longer --max-model-len is refused, and models without
a window in effect keep their context. Greedy output within the window is unchanged."""

from __future__ import annotations

import pytest

from pagedlm import LLM, SamplingParams
from pagedlm.config import ConfigError
from pagedlm.engine_args import EngineArgs


def _max_len(path: str, **kwargs) -> int:
    return EngineArgs(model=path, device="cpu", **kwargs).create_engine_config().model_config.max_model_len


@pytest.mark.parametrize(("name", "window"), [("gemma2", 8), ("phi3", 24)])
def test_context_capped_at_the_window(checkpoint_factory, name: str, window: int) -> None:
    path = checkpoint_factory(name)
    assert _max_len(path) > window
    assert _max_len(path, disable_sliding_window=True) == window
    assert _max_len(path, disable_sliding_window=True, max_model_len=window - 2) == window - 2
    with pytest.raises(ConfigError, match=rf"larger than the sliding window \({window} tokens\)"):
        _max_len(path, disable_sliding_window=True, max_model_len=window + 1, allow_long_max_model_len=True)


@pytest.mark.parametrize("name", ["mistral", "qwen2"])  # no window; qwen2's is off (use_sliding_window)
def test_models_without_a_window_keep_their_context(checkpoint_factory, name: str) -> None:
    path = checkpoint_factory(name)
    assert _max_len(path, disable_sliding_window=True) == _max_len(path)


def test_greedy_output_within_the_window_is_unchanged(checkpoint_factory) -> None:
    path = checkpoint_factory("gemma2")
    params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    prompts = [{"prompt_token_ids": [5, 9, 13, 2]}, {"prompt_token_ids": [40, 41]}]
    ids = [[o.outputs[0].token_ids for o in LLM(path, device="cpu", **kw).generate(prompts, params, use_tqdm=False)]
           for kw in ({"max_model_len": 8}, {"disable_sliding_window": True})]
    assert ids[0] == ids[1]
