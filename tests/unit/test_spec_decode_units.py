"""Spec-decode pieces without a model: the n-gram lookup, the config parser, the counters,
the periodic log line and the Prometheus families."""

from __future__ import annotations

import numpy as np
import pytest

from pagedlm.config import ConfigError
from pagedlm.engine.messages import SchedulerStats
from pagedlm.metrics import PrometheusStatLogger
from pagedlm.spec_decode.config import SpeculativeConfig
from pagedlm.spec_decode.metrics import SpecDecodingLogger, SpecDecodingStats
from pagedlm.spec_decode.ngram import ngram_propose


@pytest.mark.parametrize("tokens, min_n, max_n, k, expected", [
    ([1, 2, 3, 4, 1, 2, 3, 9, 9, 1, 2], 1, 4, 3, [3, 9, 9]),  # latest earlier "1 2" wins
    ([1, 2, 3, 4, 1, 2, 3, 9, 9, 1, 2], 3, 4, 3, []),  # no earlier 3-gram "9 1 2"
    ([5, 6, 7], 1, 4, 3, []),
    ([5, 5], 1, 4, 3, [5]),  # only what follows the match, no padding
    ([7, 1, 2, 8, 8, 1, 2, 3, 4, 5, 1, 2], 2, 2, 2, [3, 4]),
    ([4, 1, 2, 3, 0, 2, 3], 1, 3, 2, [0, 2]),  # longest n first: "2 3" beats "3"
])
def test_ngram_lookup(tokens, min_n, max_n, k, expected):
    assert ngram_propose(np.array(tokens), min_n, max_n, k) == expected


def test_async_default_is_the_same_for_every_method_and_only_a_second_device_is_refused():
    """Async scheduling combines with every proposer (EAGLE heads take their own copy of each
    step's features): on by default on CUDA, off on CPU and with pipeline stages."""
    from pagedlm.engine_args import default_async_scheduling
    from pagedlm.spec_decode.config import check_speculation_fits

    assert default_async_scheduling("cuda", 1) and not default_async_scheduling("cpu", 1)
    assert not default_async_scheduling("cuda", 2)
    check_speculation_fits(1)
    with pytest.raises(ConfigError, match="one device"):
        check_speculation_fits(2)


def test_config_keys_and_inference():
    c = SpeculativeConfig.from_dict({"model": "[ngram]", "num_speculative_tokens": 2})
    assert c.method == "ngram" and c.model is None and c.num_lookahead_tokens == 0
    # vLLM takes "model": "ngram" as the n-gram proposer too (not a draft checkpoint named ngram)
    c = SpeculativeConfig.from_dict({"model": "ngram", "num_speculative_tokens": 2})
    assert c.method == "ngram" and c.model is None
    c = SpeculativeConfig.from_dict({"model": "/x/eagle3-llama", "num_speculative_tokens": 2})
    assert c.method == "eagle3" and c.num_lookahead_tokens == 2
    assert SpeculativeConfig.from_dict({"model": "/x/small", "num_speculative_tokens": 1}).method == "draft_model"
    with pytest.raises(ConfigError, match="draft_tensor_parallel_size"):
        SpeculativeConfig.from_dict({"model": "/x", "num_speculative_tokens": 1, "draft_tensor_parallel_size": 2})
    with pytest.raises(ConfigError, match="only applies"):
        SpeculativeConfig.from_dict({"model": "/x", "num_speculative_tokens": 1, "prompt_lookup_max": 2})


def test_a_lone_prompt_lookup_min_above_the_default_maximum_raises_the_maximum():
    """vLLM sets a missing n-gram bound to the given one: {"prompt_lookup_min": 5} alone is
    accepted there (5..5), not refused as min > the default max."""
    def bounds(**keys):
        c = SpeculativeConfig.from_dict({"method": "ngram", "num_speculative_tokens": 3, **keys})
        return c.prompt_lookup_min, c.prompt_lookup_max

    assert bounds(prompt_lookup_min=5) == (5, 5)
    assert bounds(prompt_lookup_min=2) == (2, 4)
    assert bounds(prompt_lookup_max=2) == (1, 2)
    assert bounds(prompt_lookup_min=None, prompt_lookup_max=None) == (1, 4)
    with pytest.raises(ConfigError, match="prompt_lookup_min"):
        bounds(prompt_lookup_min=5, prompt_lookup_max=4)


def test_rejection_sample_method_standard_is_taken_and_other_methods_refused_by_name():
    """vLLM's rejection_sample_method (and its older acceptance_method) at their default, the
    rule pagedlm runs, are accepted; "synthetic" / "block" / typical acceptance are refused."""
    base = {"method": "ngram", "num_speculative_tokens": 3}
    assert SpeculativeConfig.from_dict({**base, "rejection_sample_method": "standard"}).method == "ngram"
    assert SpeculativeConfig.from_dict({**base, "acceptance_method": "rejection_sampler"}).method == "ngram"
    for key, value in (("rejection_sample_method", "block"), ("acceptance_method", "typical_acceptance_sampler")):
        with pytest.raises(ConfigError, match=f"{key} '{value}' is not supported"):
            SpeculativeConfig.from_dict({**base, key: value})


def test_counters_log_line_and_prometheus():
    stats = SpecDecodingStats(3)
    stats.observe(3, 2)
    stats.observe(3, 0)
    stats.observe(2, 2)
    snap = stats.snapshot()
    assert snap == {"num_drafts": 3, "num_draft_tokens": 8, "num_accepted_tokens": 4, "accepted_per_pos": [2, 2, 0]}
    log = SpecDecodingLogger(interval_s=0.0)
    line = log.maybe_log(snap, force=True)
    assert "acceptance rate: 50.0%" in line and "Mean acceptance length: 2.33" in line
    assert "Per-position acceptance rate: 0.667, 0.667, 0.000" in line
    assert log.maybe_log(snap, force=True) is None  # nothing new since the last line
    stats.observe(3, 3)
    assert "Mean acceptance length: 4.00" in log.maybe_log(stats.snapshot(), force=True)  # the interval only

    prom = PrometheusStatLogger("m")
    prom.record_engine_stats(0, SchedulerStats(num_steps_total=1, spec_decoding=snap))
    prom.record_engine_stats(0, SchedulerStats(num_steps_total=2, spec_decoding=stats.snapshot()))
    text = prom.render().decode()
    assert 'pagedlm:spec_decode_num_drafts_total{engine="0",model_name="m"} 4.0' in text
    assert 'pagedlm:spec_decode_num_draft_tokens_total{engine="0",model_name="m"} 11.0' in text
    assert 'pagedlm:spec_decode_num_accepted_tokens_total{engine="0",model_name="m"} 7.0' in text
    assert 'pagedlm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="2"} 1.0' in text
