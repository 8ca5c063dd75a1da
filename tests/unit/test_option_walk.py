"""Walk every engine and server option (each LLM kwarg is a CLI flag and back): each one
either changes the configuration the engine is built from, is refused with one clear line,
logs a one-line notice that it has no effect here, or is shown by a named end-to-end test.

The table has one entry per option; a new EngineArgs/ServerArgs field without an entry fails
test_every_option_has_an_entry, so nothing can be added and silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from pagedlm.arg_utils import (
    NO_EFFECT,
    NOT_YET_SUPPORTED,
    VLLM_DEST,
    VLLM_MERGED,
    VLLM_NO_EFFECT,
    VLLM_ONLY_OPTIONS,
    VLLM_ONLY_SERVER_OPTIONS,
    VLLM_RENAMED,
)
from pagedlm.config import ConfigError, EngineConfig
from pagedlm.engine_args import EngineArgs
from pagedlm.entrypoints.cli import make_serve_parser, parse_serve_args
from pagedlm.entrypoints.server_args import ServerArgs

TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
# The behaviour tests of the options whose entries are Changes (their shown_by).
CACHE = "tests/unit/test_option_behaviour_cache.py::"
SCHEDULER = "tests/unit/test_option_behaviour_scheduler.py::"
MODEL = "tests/unit/test_option_behaviour_model.py::"


@dataclass
class Changes:
    """The option, set to ``value``, makes ``probe(config)`` true (false at the default).

    That shows the option is parsed into the config, not that the engine honours it: ``shown_by``
    names the test (or tests, joined by " + ") that shows the engine doing so at run time."""

    value: Any
    probe: Callable[[EngineConfig], bool]
    shown_by: str | None = None  # "module_path::test_name"


@dataclass
class Refused:
    value: Any
    needle: str


@dataclass
class Notice:
    value: Any
    needle: str


@dataclass
class ShownBy:
    """Behaviour only visible with a running server/engine: the named test shows it."""

    value: Any
    test: str  # "module_path::test_name"


ENGINE_OPTIONS: dict[str, Any] = {
    "model": ShownBy("/x", "tests/unit/test_option_walk.py::test_model_flag_and_positional_agree"),
    "tokenizer": Changes("{ckpt}/../{ckpt_name}", lambda c: "/../" in c.model_config.tokenizer,
                         MODEL + "test_tokenizer_from_another_directory_encodes_the_prompts"),
    "hf_token": ShownBy("hf_x", "tests/unit/test_hub_resolution.py::test_hf_token_reaches_the_hub_and_stays_out_of_reprs"),
    "tokenizer_mode": Changes("slow", lambda c: c.model_config.tokenizer_mode == "slow",
                              "tests/models/test_tokenizer_mode.py::test_slow_asks_for_the_python_tokenizer"),
    "logprobs_mode": Changes("processed_logprobs", lambda c: c.model_config.logprobs_mode == "processed_logprobs",
                             "tests/unit/test_logprobs_mode.py::test_random_request_values_match_an_independent_"
                             "computation"),
    "model_impl": Changes("transformers", lambda c: c.model_config.model_impl == "transformers",
                          "tests/models/test_transformers_backend.py::test_llama_matches_transformers_and_native"),
    "skip_tokenizer_init": Changes(True, lambda c: c.model_config.skip_tokenizer_init,
                                   "tests/unit/test_skip_tokenizer_init.py::test_token_id_prompts_give_the_same_"
                                   "tokens_with_empty_text"),
    "enable_prompt_embeds": Changes(True, lambda c: c.model_config.enable_prompt_embeds,
                                    "tests/unit/test_prompt_embeds.py::test_embeds_give_the_same_tokens_and_logprobs_"
                                    "as_the_ids"),
    "enable_sleep_mode": Changes(True, lambda c: c.cache_config.enable_sleep_mode,
                                 "tests/unit/test_sleep_mode.py::test_level1_round_trip"),
    "enable_expert_parallel": Changes(True, lambda c: c.parallel_config.enable_expert_parallel,
                                      "tests/distributed/test_expert_parallel.py::test_tp2_expert_parallel_equals_tp1"),
    "trust_remote_code": Changes(True, lambda c: c.model_config.trust_remote_code,
                                 MODEL + "test_trust_remote_code_runs_the_checkpoints_configuration_code"),
    "served_model_name": Changes(["a", "b"], lambda c: c.model_config.served_model_names == ("a", "b"),
                                 "tests/e2e/test_dropin_server.py::test_vllm_style_launch_line"),
    "dtype": Changes("bfloat16", lambda c: c.model_config.dtype == "bfloat16",
                     MODEL + "test_dtype_bfloat16_runs_the_model_in_bfloat16"),
    "seed": ShownBy(5, "tests/unit/test_option_walk.py::test_engine_seed_makes_unseeded_sampling_repeat"),
    "max_model_len": Changes(100, lambda c: c.model_config.max_model_len == 100,
                             SCHEDULER + "test_max_model_len_caps_prompts_and_outputs"),
    "allow_long_max_model_len": ShownBy(True, "tests/unit/test_option_walk.py::test_max_model_len_above_trained_context"),
    "disable_sliding_window": ShownBy(True, "tests/unit/test_disable_sliding_window.py::"
                                            "test_context_capped_at_the_window"),
    "max_logprobs": Changes(3, lambda c: c.model_config.max_logprobs == 3,
                            "tests/e2e/test_dropin_server.py::test_vllm_style_launch_line"),  # --max-logprobs 6
    "chat_template": Changes(TEMPLATE, lambda c: c.model_config.chat_template == TEMPLATE,
                             "tests/e2e/test_app_inprocess.py::test_chat_template_content_format"),
    "hf_overrides": Changes({"rms_norm_eps": 0.5}, lambda c: c.model_config.hf_config.rms_norm_eps == 0.5,
                            "tests/models/test_hf_overrides.py::test_overrides_run_as_transformers_runs_them"),
    "reasoning_parser": Changes("qwen3", lambda c: c.structured_outputs_config.reasoning_parser == "qwen3",
                                "tests/e2e/test_structured_server.py::"
                                "test_response_format_json_schema_after_reasoning"),
    # The same reasoning_parser as --reasoning-parser (the probe): shown by the same test.
    "structured_outputs_config": Changes({"backend": "xgrammar", "reasoning_parser": "qwen3"},
                                         lambda c: c.structured_outputs_config.reasoning_parser == "qwen3",
                                         "tests/e2e/test_structured_server.py::"
                                         "test_response_format_json_schema_after_reasoning"),
    # The one backend there is: accepted by name, anything else refused (the named test).
    "guided_decoding_backend": ShownBy("xgrammar", "tests/unit/test_option_walk.py::test_structured_output_backends"),
    # Names of processors in tests/unit/custom_logits_procs.py (the walk's directory is on sys.path).
    "logits_processors": Changes(["custom_logits_procs:DummyLogitsProcessor"],
                                 lambda c: c.logits_processors == ("custom_logits_procs:DummyLogitsProcessor",),
                                 "tests/unit/test_custom_logits_processors.py::"
                                 "test_target_token_for_exactly_the_rows_that_ask"),
    "generation_config": ShownBy("vllm", "tests/models/test_model_sources.py::test_generation_config_auto_vllm_and_dir"),
    "runner": Changes("pooling", lambda c: c.model_config.runner == "pooling",
                      "tests/models/test_pooling.py::test_decoder_pooling_matches_transformers"),
    "convert": Changes("embed", lambda c: c.model_config.runner == "pooling",
                       "tests/models/test_pooling.py::test_vllm_task_and_convert_embed_pick_the_pooling_runner"),
    "task": Changes("embed", lambda c: c.model_config.runner == "pooling",
                    "tests/models/test_pooling.py::test_vllm_task_and_convert_embed_pick_the_pooling_runner"),
    # Alone, on a generative checkpoint, it is refused; with --runner pooling see test_pooling.py.
    "pooler_config": Refused({"pooling_type": "MEAN", "normalize": False}, "applies only with runner='pooling'"),
    "quantization": Changes("fp8", lambda c: c.model_config.quantization == "fp8", "tests/models/test_quant_engine.py::"
                            "test_online_fp8_is_the_per_channel_checkpoint_and_close_to_float"),
    # CUDA only (on CPU a notice says it has no effect): the test runs where CUDA is.
    "enforce_eager": Changes(True, lambda c: c.device_config.enforce_eager,
                             "tests/gpu/test_gpu_engine.py::test_gpu_greedy_matches_cpu"),
    "load_format": Changes("dummy", lambda c: c.model_config.load_format == "dummy",
                           MODEL + "test_load_format_dummy_reads_no_weight_files"),
    "revision": Refused("main", "applies to Hugging Face Hub ids only"),  # a Hub id: test_model_sources.py
    "tokenizer_revision": Refused("main", "applies to Hugging Face Hub ids only"),
    "download_dir": Notice("/tmp/x", "download-dir has no effect"),  # a Hub id: test_hub_id_resolves_from_cache_offline
    "block_size": Changes(32, lambda c: c.cache_config.block_size == 32,
                          CACHE + "test_block_size_sizes_the_cache_blocks_and_keeps_the_output"),
    "gpu_memory_utilization": Notice(0.5, "no effect on CPU"),
    "kv_cache_memory_bytes": Changes(1 << 20, lambda c: c.cache_config.kv_cache_memory_bytes == 1 << 20,
                                     CACHE + "test_kv_cache_memory_bytes_gives_the_blocks_that_fit + "
                                     "tests/models/test_fp8_kv_cache.py::"
                                     "test_fp8_kv_engine_sizes_its_cache_by_the_fp8_bytes"),
    "num_gpu_blocks_override": Changes(7, lambda c: c.cache_config.num_gpu_blocks_override == 7,
                                       CACHE + "test_num_gpu_blocks_override_is_the_block_count"),
    "kv_cache_dtype": Changes("fp8", lambda c: c.cache_config.cache_dtype == "fp8_e4m3",
                              "tests/models/test_fp8_kv_cache.py::"
                              "test_fp8_kv_matches_transformers_with_fp8_rounded_kv"),
    # Without an fp8 cache it has nothing to do (the notice); with one, see test_calculate_kv_scales.py.
    "calculate_kv_scales": Notice(True, "calculate-kv-scales has no effect"),
    "enable_prefix_caching": Changes(False, lambda c: not c.cache_config.enable_prefix_caching,
                                     CACHE + "test_enable_prefix_caching"),
    "swap_space": Notice(8, "never swaps"),
    "cpu_offload_gb": Refused(2, "offloading"),
    "max_num_seqs": Changes(3, lambda c: c.scheduler_config.max_num_seqs == 3,
                            SCHEDULER + "test_max_num_seqs_caps_the_requests_in_a_step"),
    "max_num_batched_tokens": Changes(64, lambda c: c.scheduler_config.max_num_batched_tokens == 64,
                                      SCHEDULER + "test_max_num_batched_tokens_caps_every_step"),
    "enable_chunked_prefill": Changes(False, lambda c: not c.scheduler_config.enable_chunked_prefill
                                      and c.scheduler_config.max_num_batched_tokens >= c.model_config.max_model_len,
                                      SCHEDULER + "test_without_chunked_prefill_prompts_run_whole"),
    "async_scheduling": Changes(True, lambda c: c.scheduler_config.async_scheduling,
                                SCHEDULER + "test_async_scheduling_returns_a_step_late"),
    "scheduling_policy": Changes("priority", lambda c: c.scheduler_config.scheduling_policy == "priority",
                                 "tests/unit/test_priority_scheduling.py::"
                                 "test_priority_orders_admission_and_keeps_the_tokens"),
    "stream_interval": Changes(4, lambda c: c.scheduler_config.stream_interval == 4,
                               "tests/unit/test_stream_interval.py::test_engine_streams_in_chunks"),
    "tensor_parallel_size": Changes(2, lambda c: c.parallel_config.tensor_parallel_size == 2,
                                    "tests/distributed/test_parallel_parity.py::test_parallel_equals_single_rank"),
    "pipeline_parallel_size": Changes(2, lambda c: c.parallel_config.pipeline_parallel_size == 2,
                                      "tests/distributed/test_parallel_parity.py::test_parallel_equals_single_rank"),
    "data_parallel_size": ShownBy(2, "tests/e2e/test_engine_process.py::test_data_parallel_two_cores"),
    "distributed_executor_backend": Changes("ray", lambda c: c.parallel_config.distributed_executor_backend == "ray",
                                            "tests/distributed/test_ray.py::test_tp2_over_ray_equals_tp1"),
    "disable_custom_all_reduce": Notice(True, "no custom all-reduce"),
    "device": Refused("cuda", "CUDA is not available"),
    "max_seq_len_to_capture": Notice(1024, "CUDA graphs"),
    "disable_cascade_attn": Notice(True, "cascade attention"),
    "max_parallel_loading_workers": Notice(4, "one pass per rank"),
    # LLM's default sampling params take the override; generate() without params uses them.
    "override_generation_config": Changes({"temperature": 0.3},
                                          lambda c: c.model_config.generation_defaults.get("temperature") == 0.3,
                                          "tests/models/test_model_sources.py::"
                                          "test_override_generation_config_goes_over_the_file + "
                                          "tests/models/test_model_sources.py::"
                                          "test_generation_config_auto_vllm_and_dir"),
    "long_prefill_token_threshold": Changes(32, lambda c: c.scheduler_config.long_prefill_token_threshold == 32,
                                            SCHEDULER + "test_long_prefill_token_threshold_chunks_long_prompts"),
    "max_num_partial_prefills": Refused(2, "concurrent partial prefill"),
    "max_long_partial_prefills": Refused(2, "concurrent long partial prefill"),
    "cuda_graph_sizes": Changes([1, 2], lambda c: c.device_config.cuda_graph_sizes == (1, 2)),
    "compilation_config": Changes({"max_cudagraph_capture_size": 16},
                                  lambda c: c.device_config.cuda_graph_sizes == (1, 2, 4, 8, 16)),
    "enable_lora": Changes(True, lambda c: c.lora_config is not None,
                           "tests/lora/test_lora_parity.py::test_mixed_batch_prefix_cache_per_adapter"),
    # Alone they are refused (they need --enable-lora); with it, the named tests show them.
    "max_loras": Refused(4, "need --enable-lora"),
    "max_lora_rank": Refused(64, "need --enable-lora"),
    "max_cpu_loras": Refused(4, "need --enable-lora"),
    "speculative_config": Changes({"method": "ngram", "num_speculative_tokens": 3},
                                  lambda c: c.speculative_config is not None
                                  and c.scheduler_config.num_spec_tokens == 3,
                                  "tests/models/test_spec_decode.py::test_greedy_equals_speculation_off"),
    "disable_log_stats": Notice(True, "no periodic stats"),
}

SERVER_OPTIONS: dict[str, Any] = {
    "host": ShownBy("127.0.0.1", "tests/e2e/test_dropin_server.py::test_vllm_style_launch_line"),
    "port": ShownBy(8123, "tests/e2e/test_dropin_server.py::test_vllm_style_launch_line"),
    "uds": ShownBy("/tmp/api.sock", "tests/e2e/test_uds_server.py::test_serves_on_a_unix_socket"),
    "api_key": ShownBy("k", "tests/e2e/test_dropin_server.py::test_api_key_from_vllm_env"),
    **{name: ShownBy(value, "tests/e2e/test_app_inprocess.py::test_cors_root_path_and_request_ids") for name, value in (
        ("allowed_origins", ["https://a.example"]), ("allow_credentials", True), ("allowed_methods", ["POST"]),
        ("allowed_headers", ["authorization"]), ("root_path", "/api"), ("enable_request_id_headers", True))},
    "ssl_keyfile": ShownBy("/k.pem", "tests/e2e/test_tls_server.py::test_https_with_the_given_certificate"),
    "ssl_ca_certs": ShownBy("/ca.pem", "tests/e2e/test_tls_server.py::test_client_certificates_required"),
    "ssl_cert_reqs": ShownBy(2, "tests/e2e/test_tls_server.py::test_client_certificates_required"),
    "ssl_certfile": ShownBy("/c.pem", "tests/e2e/test_tls_server.py::test_https_with_the_given_certificate"),
    "api_server_count": ShownBy(2, "tests/e2e/test_api_server_pool.py::test_connections_spread_over_both_api_servers"),
    "shutdown_grace_period": ShownBy(60, "tests/e2e/test_engine_process.py::test_sigterm_lets_unfinished_requests_finish"),
    "disable_fastapi_docs": ShownBy(True, "tests/e2e/test_app_inprocess.py::test_disable_fastapi_docs"),
    "uvicorn_log_level": ShownBy("warning", "tests/e2e/test_dropin_server.py::test_vllm_style_launch_line"),
    "disable_uvicorn_access_log": ShownBy(True, "tests/e2e/test_dropin_server.py::test_vllm_style_launch_line"),
    "metrics_prefix": ShownBy("vllm", "tests/e2e/test_dropin_server.py::test_vllm_style_launch_line"),
    "disable_log_requests": Notice(True, "does not log request"),
    "enable_log_requests": Notice(True, "does not log request"),
    "max_log_len": Notice(100, "does not log request"),
    "enable_log_outputs": Notice(True, "does not log request contents or outputs"),
    "enable_prompt_tokens_details": Notice(True, "always reported"),
    "disable_frontend_multiprocessing": Notice(True, "in its own process"),
    "lora_modules": ShownBy(["a=/x"], "tests/e2e/test_lora_server.py::test_models_list_adapters_under_the_base"),
    "tool_call_parser": ShownBy("hermes", "tests/e2e/test_structured_server.py::test_auto_tool_choice_parses_hermes_calls"),
    "chat_template_content_format": ShownBy("openai", "tests/e2e/test_app_inprocess.py::test_chat_template_content_format"),
    "enable_force_include_usage": ShownBy(True, "tests/e2e/test_app_inprocess.py::test_force_include_usage_and_tokens_as_token_ids"),
    "return_tokens_as_token_ids": ShownBy(True, "tests/e2e/test_app_inprocess.py::test_force_include_usage_and_tokens_as_token_ids"),
    "response_role": ShownBy("narrator", "tests/e2e/test_app_inprocess.py::test_response_role"),
    "enable_auto_tool_choice": ShownBy(True, "tests/e2e/test_structured_server.py::test_auto_tool_choice_parses_hermes_calls"),
}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pagedlm.demo import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


def _fill(value: Any, ckpt: Path) -> Any:
    if not isinstance(value, str):
        return value
    return value.replace("{ckpt}", str(ckpt)).replace("{ckpt_name}", ckpt.name)


def test_every_option_has_an_entry() -> None:
    assert {f.name for f in dataclasses.fields(EngineArgs)} == set(ENGINE_OPTIONS)
    assert {f.name for f in dataclasses.fields(ServerArgs)} == set(SERVER_OPTIONS)
    # The tables of arg_utils name real options only.
    every = set(ENGINE_OPTIONS) | set(SERVER_OPTIONS)
    assert set(NOT_YET_SUPPORTED) <= every and set(NO_EFFECT) <= every


def test_every_cli_flag_is_an_option() -> None:
    parser = make_serve_parser()
    dests = {a.dest for a in parser._actions if not a.dest.startswith(VLLM_DEST)} - {"help", "config", "model_tag"}
    assert dests == set(ENGINE_OPTIONS) | set(SERVER_OPTIONS)
    for action in parser._actions:
        assert action.dest in ("help",) or action.dest.startswith(VLLM_DEST) or action.help, \
            f"{action.dest} has no help line"


def _argv(name: str, value: Any) -> list[str]:
    flag = "--" + name.replace("_", "-")
    if value is True:
        return [flag]
    if value is False:
        return ["--no-" + flag[2:]]
    if isinstance(value, list):
        return [flag, *map(str, value)]
    if isinstance(value, dict):
        import json

        return [flag, json.dumps(value)]
    return [flag, str(value)]


@pytest.mark.parametrize("name", sorted(ENGINE_OPTIONS))
def test_engine_option(name: str, ckpt: Path, caplog: pytest.LogCaptureFixture) -> None:
    case = ENGINE_OPTIONS[name]
    value = _fill(case.value, ckpt)
    if name == "device" and __import__("torch").cuda.is_available():
        pytest.skip("CUDA is available here")
    # The flag and the kwarg reach the same EngineArgs: CLI and LLM(**kwargs) agree.
    positional = [] if name == "model" else [str(ckpt)]
    ns = parse_serve_args([*positional, *_argv(name, value)])
    from_cli = EngineArgs.from_cli_args(ns)
    assert getattr(from_cli, name) == value
    if name == "model":
        return
    args = EngineArgs(model=str(ckpt), device="cpu" if name != "device" else value, **(
        {name: value} if name != "device" else {}))

    def build() -> EngineConfig:  # what an entry point does: build the config, then log notices
        config = args.create_engine_config()
        args.log_notices()
        return config

    _check(case, build, EngineArgs(model=str(ckpt), device="cpu").create_engine_config, caplog)


@pytest.mark.parametrize("name", sorted(SERVER_OPTIONS))
def test_server_option(name: str, caplog: pytest.LogCaptureFixture) -> None:
    case = SERVER_OPTIONS[name]
    ns = parse_serve_args(["/m", *_argv(name, case.value)])
    _check(case, lambda: ServerArgs.from_cli_args(ns), None, caplog)


def _check(case: Any, build: Callable[[], Any], build_default: Callable[[], Any] | None,
           caplog: pytest.LogCaptureFixture) -> None:
    if isinstance(case, Refused):
        with pytest.raises(ConfigError, match="(?i)" + case.needle) as info:
            build()
        assert "\n" not in str(info.value)  # one line
    elif isinstance(case, Notice):
        logger = logging.getLogger("pagedlm")  # it does not propagate: attach caplog's handler
        logger.addHandler(caplog.handler)
        try:
            build()
        finally:
            logger.removeHandler(caplog.handler)
        notices = [r.getMessage() for r in caplog.records if case.needle.lower() in r.getMessage().lower()]
        assert len(notices) == 1, caplog.text
    elif isinstance(case, Changes):
        assert case.probe(build()) and not case.probe(build_default())
        if case.shown_by is not None:  # and the behaviour tests it names exist
            for test in case.shown_by.split(" + "):
                _assert_test_exists(test)
    else:  # ShownBy: the test it names exists
        _assert_test_exists(case.test)


def _assert_test_exists(test: str) -> None:
    """``test`` is "module_path::test_name" (from the repository root), a test function there."""
    path, test_name = test.split("::")
    source = (Path(__file__).resolve().parents[2] / path).read_text()
    assert f"def {test_name}(" in source, test


# Changes entries with no behaviour test, each for its reason: the config attribute has no
# behaviour to show on CPU (keep this short; every other Changes entry names its test).
NO_BEHAVIOUR_TEST = {
    # Decode batch sizes captured as CUDA graphs: graphs exist on CUDA only (on CPU a notice
    # says the option has no effect), and no GPU test captures a chosen list yet.
    "cuda_graph_sizes": "CUDA graphs only",
    # Its one setting with an effect here is that same list of CUDA graph sizes.
    "compilation_config": "CUDA graphs only",
}


def test_every_changes_entry_names_a_behaviour_test() -> None:
    """A Changes entry shows the option reaches the config; if a later stage ignored it the walk
    would still pass, so each one names the test that shows the engine honouring it."""
    unshown = {name for name, case in ENGINE_OPTIONS.items() if isinstance(case, Changes) and case.shown_by is None}
    assert unshown == set(NO_BEHAVIOUR_TEST)


def test_model_flag_and_positional_agree(ckpt: Path) -> None:
    assert parse_serve_args(["--model", str(ckpt)]).model == str(ckpt)
    assert parse_serve_args([str(ckpt)]).model == str(ckpt)
    with pytest.raises(SystemExit):
        parse_serve_args([str(ckpt), "--model", "/elsewhere"])


def test_max_model_len_above_trained_context(ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("PAGEDLM_ALLOW_LONG_MAX_MODEL_LEN", "VLLM_ALLOW_LONG_MAX_MODEL_LEN"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="max_model_len=100000 .* trained context of 512 tokens"):
        EngineArgs(model=str(ckpt), max_model_len=100000, device="cpu").create_engine_config()
    allowed = EngineArgs(model=str(ckpt), max_model_len=1000, allow_long_max_model_len=True, device="cpu")
    assert allowed.create_engine_config().model_config.max_model_len == 1000
    monkeypatch.setenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")
    assert EngineArgs(model=str(ckpt), max_model_len=1000, device="cpu").create_engine_config()


def test_config_yaml_flags_with_the_command_line_winning(ckpt: Path, tmp_path: Path) -> None:
    config = tmp_path / "serve.yaml"
    config.write_text(f"model: {ckpt}\nmax-model-len: 128\nmax_num_seqs: 4\nenable-prefix-caching: false\n"
                      "served-model-name: [one, two]\n")
    ns = parse_serve_args(["--config", str(config), "--max-num-seqs", "8"])
    args = EngineArgs.from_cli_args(ns)
    assert (args.model, args.max_model_len, args.max_num_seqs) == (str(ckpt), 128, 8)
    assert args.enable_prefix_caching is False and args.served_model_names() == ["one", "two"]
    (tmp_path / "bad.yaml").write_text("- a\n- b\n")
    with pytest.raises(SystemExit):
        parse_serve_args(["--config", str(tmp_path / "bad.yaml")])
    (tmp_path / "null.yaml").write_text(f"model: {ckpt}\nmax-num-seqs:\n")  # null: the default
    assert EngineArgs.from_cli_args(parse_serve_args(["--config", str(tmp_path / "null.yaml")])).max_num_seqs is None
    (tmp_path / "typo.yaml").write_text(f"model: {ckpt}\nmax-num-seq:\n")  # a null typo is still a typo
    with pytest.raises(SystemExit):
        parse_serve_args(["--config", str(tmp_path / "typo.yaml")])


def test_size_flags_take_vllms_human_readable_suffixes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """vllm serve MODEL --max-model-len 32k: k/m/g are powers of 1000, K/M/G of 1024 (also in --config)."""
    ns = parse_serve_args(["/m", "--max-model-len", "32k", "--max-num-batched-tokens", "16K",
                           "--kv-cache-memory-bytes", "2G"])
    assert (ns.max_model_len, ns.max_num_batched_tokens, ns.kv_cache_memory_bytes) == (32000, 16384, 2 << 30)
    assert parse_serve_args(["/m", "--max-model-len", "25.6k"]).max_model_len == 25600
    assert parse_serve_args(["/m", "--max-model-len", "4096"]).max_model_len == 4096
    (tmp_path / "serve.yaml").write_text("max-model-len: 8K\n")
    assert parse_serve_args(["/m", "--config", str(tmp_path / "serve.yaml")]).max_model_len == 8192
    for bad in ("1.5K", "lots"):
        with pytest.raises(SystemExit):
            parse_serve_args(["/m", "--max-model-len", bad])
        assert "--max-model-len" in capsys.readouterr().err


def test_bad_port_or_host_is_a_one_line_start_up_error() -> None:
    """Not an OverflowError / socket.gaierror traceback: --port out of range is refused with the
    flags, before the model loads; a --host that does not resolve is a ServerStartError."""
    from pagedlm.entrypoints.openai.api_server import ServerStartError, bind_socket

    for port in ("99999", "-1"):
        with pytest.raises(ConfigError, match=r"--port must be in \[0, 65535\]"):
            ServerArgs.from_cli_args(parse_serve_args(["/m", "--port", port]))
    with pytest.raises(ServerStartError, match="no-such-host.invalid.*--host"):
        bind_socket("no-such-host.invalid", 0)


def test_none_is_the_default_for_block_size_and_prefix_caching(ckpt: Path) -> None:
    """vLLM's EngineArgs default both to None (the default); LLM(enable_prefix_caching=None)
    turned prefix caching off and LLM(block_size=None) was refused as not a power of two."""
    cache = EngineArgs(model=str(ckpt), device="cpu", block_size=None,
                       enable_prefix_caching=None).create_engine_config().cache_config
    assert (cache.block_size, cache.enable_prefix_caching) == (16, True)


def test_api_key_takes_several_keys_as_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    """vllm serve --api-key K1 K2: a request with any one of the keys is let in."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from pagedlm.entrypoints.openai.http_middleware import HTTPOptions, add_middleware

    for var in ("PAGEDLM_API_KEY", "VLLM_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    keys = ServerArgs.from_cli_args(parse_serve_args(["/m", "--api-key", "k1", "k2"])).api_key
    assert keys == ["k1", "k2"]
    monkeypatch.setenv("VLLM_API_KEY", "from-env")
    assert ServerArgs.from_cli_args(parse_serve_args(["/m"])).api_key == ["from-env"]
    app = FastAPI()
    app.get("/v1/models")(lambda: {"ok": True})
    add_middleware(app, keys, HTTPOptions())
    client = TestClient(app)
    for key, status in (("k1", 200), ("k2", 200), ("k3", 401), ("k1 k2", 401)):
        assert client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == status, key
    assert client.get("/v1/models").status_code == 401


def test_a_model_after_a_list_flag_is_not_swallowed(tmp_path) -> None:
    """serve --api-key k MODEL: the list flag would take MODEL as a second key and the default
    model would be served; that is refused with what happened. Before the flags it is fine."""
    for argv in (["--api-key", "k", "org/model"], ["--served-model-name", "a", str(tmp_path)]):
        with pytest.raises(SystemExit):
            parse_serve_args(argv)
    assert parse_serve_args(["org/model", "--api-key", "k1", "k2"]).model == "org/model"
    assert getattr(parse_serve_args(["--api-key", "k1", "k2"]), "model", None) is None  # two keys, the default model


def test_broken_chat_template_is_a_start_up_error(ckpt: Path) -> None:
    with pytest.raises(ConfigError, match="not valid Jinja"):
        EngineArgs(model=str(ckpt), chat_template="{% for m in messages %}", device="cpu").create_engine_config()


def test_kv_cache_memory_bytes_sizes_the_cpu_cache(ckpt: Path) -> None:
    from pagedlm.worker.memory import cpu_num_blocks, kv_cache_bytes_per_block

    config = EngineArgs(model=str(ckpt), kv_cache_memory_bytes=1 << 20, device="cpu").create_engine_config()
    assert cpu_num_blocks(config) == (1 << 20) // kv_cache_bytes_per_block(config)


def test_serve_errors_show_serves_usage(capsys: pytest.CaptureFixture) -> None:
    from pagedlm.entrypoints.cli import main

    with pytest.raises(SystemExit) as info:
        main(["serve", "/m", "--no-such-flag"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: pagedlm serve" in err and "unrecognized arguments: --no-such-flag" in err


def test_llm_kwargs_refuse_unbuilt_features_by_name(ckpt: Path) -> None:
    from pagedlm import LLM

    with pytest.raises(ConfigError, match="CPU weight offloading is not supported yet"):
        LLM(str(ckpt), cpu_offload_gb=2, device="cpu")
    with pytest.raises(TypeError, match="no_such_kwarg"):
        LLM(str(ckpt), no_such_kwarg=1)
    # vLLM's names for features pagedlm lacks: refused by name, not a TypeError.
    with pytest.raises(ConfigError, match="num_scheduler_steps=8: multi-step scheduling"):
        LLM(str(ckpt), num_scheduler_steps=8, device="cpu")


# vLLM's EngineArgs / LLM keyword arguments pagedlm has no option for (arg_utils.VLLM_ONLY_OPTIONS,
# VLLM_NO_EFFECT, VLLM_RENAMED): none of them is a TypeError "unexpected keyword argument".
def test_vllm_only_names_are_not_pagedlm_options() -> None:
    fields = set(EngineArgs.__dataclass_fields__)
    tables = (set(VLLM_ONLY_OPTIONS), set(VLLM_NO_EFFECT), set(VLLM_RENAMED), set(VLLM_MERGED))
    assert all(not (t & fields) for t in tables)
    assert sum(map(len, tables)) == len(set().union(*tables))
    assert set(VLLM_RENAMED.values()) | set(VLLM_MERGED.values()) <= fields


def _other_value(default: Any) -> Any:
    if isinstance(default, bool):
        return not default
    if isinstance(default, (int, float)):
        return default + 7
    if isinstance(default, str):
        return default + "-other"
    return {"x": 1}


@pytest.mark.parametrize("name", sorted(VLLM_ONLY_OPTIONS))
def test_vllm_only_option_default_accepted_other_refused(name: str) -> None:
    no_op, _ = VLLM_ONLY_OPTIONS[name]
    for value in no_op:
        args = EngineArgs(model="/m", **{name: value})
        assert not hasattr(args, name)
    with pytest.raises(ConfigError, match=f"^{name}=") as info:
        EngineArgs(model="/m", **{name: _other_value(no_op[0])})
    assert "\n" not in str(info.value) and "not supported by pagedlm" in str(info.value)


def _cli_args(name: str, value: Any) -> list[str]:
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return [flag if value else "--no-" + flag[2:]]
    if isinstance(value, list):
        return [flag, *map(str, value)]
    return [f"{flag}={json.dumps(value) if isinstance(value, dict) else value}"]


# The same tables on `pagedlm serve`'s command line: a vLLM flag for a feature pagedlm lacks is
# accepted at vLLM's default and refused by name otherwise, never argparse's "unrecognized arguments".
@pytest.mark.parametrize("name", sorted({*VLLM_ONLY_OPTIONS, *VLLM_ONLY_SERVER_OPTIONS} - {"override_pooler_config"}))
def test_vllm_only_flag_default_accepted_other_refused(name: str, capsys: pytest.CaptureFixture) -> None:
    no_op, feature = VLLM_ONLY_OPTIONS.get(name) or VLLM_ONLY_SERVER_OPTIONS[name]
    for value in no_op:
        if value is None:
            continue
        ns = parse_serve_args(["/m", *_cli_args(name, value)])
        assert not any(k.startswith(VLLM_DEST) or k == name for k in vars(ns)), name
    other = (True if any(isinstance(v, bool) for v in no_op) and True not in no_op else
             ["x.y"] if isinstance(no_op[0], list) else _other_value(no_op[0]))
    with pytest.raises(SystemExit) as info:
        parse_serve_args(["/m", *_cli_args(name, other)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"--{name.replace('_', '-')}=" in err and feature in err and "not supported by pagedlm" in err


def test_vllm_only_server_names_are_not_llm_kwargs_nor_serve_options() -> None:
    assert not set(VLLM_ONLY_SERVER_OPTIONS) & (set(SERVER_OPTIONS) | set(ENGINE_OPTIONS) | set(VLLM_ONLY_OPTIONS))
    with pytest.raises(TypeError, match="enable_server_load_tracking"):
        EngineArgs(model="/m", enable_server_load_tracking=True)


def test_vllm_renamed_merged_and_no_effect_flags(pagedlm_warnings: list[str]) -> None:
    ns = parse_serve_args(["/m", "--max-cudagraph-capture-size", "8", "--rope-theta", "1e6", "--use-v2-block-manager",
                           "--rope-scaling", '{"rope_type": "linear", "factor": 2.0}'])
    assert ns.compilation_config == {"max_cudagraph_capture_size": 8}
    assert ns.hf_overrides == {"rope_theta": 1e6, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}
    assert pagedlm_warnings == ["--use-v2-block-manager has no effect: " + VLLM_NO_EFFECT["use_v2_block_manager"] + "."]
    assert parse_serve_args(["/m", "--cudagraph-capture-sizes", "1", "2", "4"]).compilation_config == {
        "cudagraph_capture_sizes": [1, 2, 4]}
    with pytest.raises(SystemExit):
        parse_serve_args(["/m", "--max-cudagraph-capture-size", "8", "--compilation-config",
                          '{"max_cudagraph_capture_size": 16}'])


def test_vllm_only_flags_in_a_config_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "serve.yaml"
    config.write_text("num-scheduler-steps: 1\nenable-server-load-tracking: false\n")
    assert parse_serve_args(["/m", "--config", str(config)]).model == "/m"
    config.write_text("kv-transfer-config:\n  kv_connector: X\n")
    with pytest.raises(SystemExit):
        parse_serve_args(["/m", "--config", str(config)])
    assert "--kv-transfer-config=" in capsys.readouterr().err


def test_vllm_no_effect_names_log_one_notice(pagedlm_warnings: list[str]) -> None:
    for name in VLLM_NO_EFFECT:
        EngineArgs(model="/m", **{name: True})
    assert [w.split(" ", 1)[0] for w in pagedlm_warnings] == list(VLLM_NO_EFFECT)


def test_vllm_renamed_and_merged_kwargs_reach_pagedlms_options(ckpt: Path) -> None:
    args = EngineArgs(model=str(ckpt), device="cpu", max_cudagraph_capture_size=8, rope_theta=12345.0,
                      rope_scaling=None, override_pooler_config=None)
    assert args.compilation_config == {"max_cudagraph_capture_size": 8}
    config = args.create_engine_config()
    assert config.device_config.cuda_graph_sizes == (1, 2, 4, 8)
    assert config.model_config.hf_config.rope_theta == 12345.0
    sizes = EngineArgs(model=str(ckpt), device="cpu", cudagraph_capture_sizes=[3]).create_engine_config()
    assert sizes.device_config.cuda_graph_sizes == (3,)
    assert EngineArgs(model="/m", override_pooler_config={"pooling_type": "MEAN"}).pooler_config == {
        "pooling_type": "MEAN"}
    with pytest.raises(ConfigError, match="disagree"):
        EngineArgs(model="/m", override_pooler_config={"pooling_type": "CLS"}, pooler_config={"pooling_type": "MEAN"})
    with pytest.raises(ConfigError, match="disagree"):
        EngineArgs(model="/m", rope_theta=1.0, hf_overrides={"rope_theta": 2.0})
    with pytest.raises(ConfigError, match="cannot be merged"):
        EngineArgs(model="/m", max_cudagraph_capture_size=8, compilation_config=3)


def test_broken_checkpoint_chat_template_is_a_start_up_error(ckpt: Path, tmp_path: Path) -> None:
    import shutil

    from pagedlm.engine.input_processor import load_tokenizer

    broken = tmp_path / "broken"
    shutil.copytree(ckpt, broken)
    (broken / "chat_template.jinja").write_text("{% if messages %}")
    config = EngineArgs(model=str(broken), device="cpu").create_engine_config()
    with pytest.raises(ConfigError, match="not valid Jinja"):
        load_tokenizer(config.model_config)


def test_no_chunked_prefill_needs_a_budget_for_the_longest_prompt(ckpt: Path) -> None:
    from pagedlm.engine_args import EngineArgs

    args = EngineArgs(model=str(ckpt), device="cpu", max_model_len=64, enable_chunked_prefill=False,
                      max_num_batched_tokens=32)
    with pytest.raises(ConfigError, match=r"with chunked prefill disabled, max_num_batched_tokens \(32\) must be at "
                                          r"least max_model_len \(64\)"):
        args.create_engine_config()


def test_list_flags_take_vllms_json_lists() -> None:
    ns = parse_serve_args(["/m", "--allowed-origins", '["https://a.example", "https://b.example"]',
                           "--allowed-methods", "GET", "POST"])
    server_args = ServerArgs.from_cli_args(ns)
    assert server_args.allowed_origins == ["https://a.example", "https://b.example"]
    assert server_args.allowed_methods == ["GET", "POST"] and server_args.allowed_headers == ["*"]
    with pytest.raises(ConfigError, match="--allowed-origins: not a valid JSON list"):
        ServerArgs.from_cli_args(parse_serve_args(["/m", "--allowed-origins", '["unclosed"']))


def test_structured_output_backends(ckpt: Path) -> None:
    from pagedlm.engine_args import EngineArgs

    def config(**kwargs):
        return EngineArgs(model=str(ckpt), device="cpu", **kwargs).create_engine_config().structured_outputs_config

    assert config(guided_decoding_backend="xgrammar").backend == "xgrammar"
    assert config(structured_outputs_config={"backend": "auto"}).backend == "xgrammar"
    with pytest.raises(ConfigError, match="backend 'guidance' is not available.*xgrammar"):
        config(structured_outputs_config={"backend": "guidance"})
    with pytest.raises(ConfigError, match=r"\['disable_fallback'\] not supported"):
        config(structured_outputs_config={"backend": "xgrammar", "disable_fallback": True})
    with pytest.raises(ConfigError, match="reasoning_parser must be"):
        config(structured_outputs_config={"reasoning_parser": "nope"})
    with pytest.raises(SystemExit):  # argparse's choices
        parse_serve_args(["/m", "--guided-decoding-backend", "outlines"])
    # Given two ways: agreeing is fine, disagreeing is refused (neither silently wins).
    assert config(guided_decoding_backend="xgrammar", structured_outputs_config={"backend": "xgrammar"}).backend \
        == "xgrammar"
    with pytest.raises(ConfigError, match="disagree"):
        config(guided_decoding_backend="guidance", structured_outputs_config={"backend": "xgrammar"})
    with pytest.raises(ConfigError, match="disagree"):
        config(reasoning_parser="deepseek_r1", structured_outputs_config={"reasoning_parser": "qwen3"})


def test_tokenizer_mode_values_outside_argparse(ckpt: Path) -> None:
    from pagedlm.engine_args import EngineArgs

    for mode in ("auto", "hf", "slow"):
        EngineArgs(model=str(ckpt), device="cpu", tokenizer_mode=mode).create_engine_config()
    for mode, needle in (("custom", "not supported"), ("bogus", "not supported"), ("mistral", "mistral_common")):
        with pytest.raises(ConfigError, match=needle):
            EngineArgs(model=str(ckpt), device="cpu", tokenizer_mode=mode).create_engine_config()


def test_graph_options_on_cpu_say_they_have_no_effect(ckpt: Path, pagedlm_warnings: list[str]) -> None:
    from pagedlm.engine_args import EngineArgs

    EngineArgs(model=str(ckpt), device="cpu", enforce_eager=True, cuda_graph_sizes=[8]).log_notices()
    EngineArgs(model=str(ckpt), device="cpu").log_notices()
    assert [m for m in pagedlm_warnings if "CUDA graphs" in m] == [
        "--enforce-eager, --cuda-graph-sizes: no effect on CPU (CUDA graphs are a GPU feature; CPU steps always run "
        "eagerly)."]


def test_cache_config_info_reports_the_kv_cache_dtype(ckpt: Path) -> None:
    from pagedlm.engine_args import EngineArgs
    from pagedlm.metrics import PrometheusStatLogger

    for dtype, label in (("auto", "auto"), ("fp8", "fp8_e4m3")):
        config = EngineArgs(model=str(ckpt), device="cpu", kv_cache_dtype=dtype).create_engine_config()
        text = PrometheusStatLogger("m", engine_config=config).render().decode()
        assert f'cache_dtype="{label}"' in text


def test_seed_none_draws_one_seed_for_the_engine(ckpt: Path) -> None:
    from pagedlm.engine_args import EngineArgs

    seeds = {EngineArgs(model=str(ckpt), device="cpu", seed=None).create_engine_config().model_config.seed
             for _ in range(3)}
    assert all(isinstance(s, int) for s in seeds) and len(seeds) > 1
    with pytest.raises(ConfigError, match="seed must be an integer or None"):
        EngineArgs(model=str(ckpt), device="cpu", seed="7").create_engine_config()


def test_chunked_prefill_asked_for_on_a_pooling_runner_is_refused(ckpt: Path) -> None:
    from pagedlm.engine_args import EngineArgs

    with pytest.raises(ConfigError, match="enable_chunked_prefill is not supported with runner='pooling'"):
        EngineArgs(model=str(ckpt), device="cpu", runner="pooling", enable_chunked_prefill=True).create_engine_config()


def test_engine_seed_makes_unseeded_sampling_repeat(ckpt: Path) -> None:
    """LLM(seed=...) seeds the engine: requests without their own seed sample the same tokens
    under the same engine seed, other tokens under another."""
    from pagedlm import LLM, SamplingParams

    params = SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True)

    def sample(seed: int) -> list[list[int]]:
        llm = LLM(str(ckpt), device="cpu", max_model_len=128, seed=seed)
        return [o.outputs[0].token_ids for o in llm.generate(["Hello", "The sky is"], params, use_tqdm=False)]

    first = sample(1)
    assert sample(1) == first and sample(2) != first


def test_model_impl_is_not_a_second_model(tmp_path) -> None:
    """MODEL with a config file naming another model: the command line wins, with or without
    --model-impl (its name starts with --model; it was taken for --model: "two models given").
    MODEL and --model both on the command line are still refused."""
    config = tmp_path / "c.yaml"
    config.write_text("model: from-config\n")
    for extra in ([], ["--model-impl", "vllm"]):
        assert parse_serve_args(["cli-model", *extra, "--config", str(config)]).model == "cli-model"
    with pytest.raises(SystemExit):
        parse_serve_args(["cli-model", "--model", "other"])


def test_data_parallel_size_is_checked_with_the_other_sizes() -> None:
    """-dp 0 is a ConfigError when the config is made (it passed, and failed only when the
    engine cores started: for serve, after the port was bound)."""
    from pagedlm.demo import demo_model_dir

    for dp in (0, -2):
        with pytest.raises(ConfigError, match="data_parallel_size"):
            EngineArgs(model=str(demo_model_dir()), device="cpu", data_parallel_size=dp).create_engine_config()
