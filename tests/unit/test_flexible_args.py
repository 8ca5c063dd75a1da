"""vLLM's command-line spellings (its FlexibleArgumentParser), parsed only: a JSON option's
keys one by one (``--speculative-config.method ngram``), nested keys, ``key+`` list appends,
the two forms merged, ``--flag_name`` with underscores, for ``serve`` and ``bench``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from pagedlm.arg_utils import VLLM_DEST
from pagedlm.engine_args import EngineArgs
from pagedlm.entrypoints.cli import make_parser, make_serve_parser, parse_serve_args
from pagedlm.flexible_args import is_json_action


def _serve(*argv: str) -> dict:
    return vars(parse_serve_args(["/m", *argv]))


def test_dotted_keys_equal_the_json_object() -> None:
    dotted = _serve("--speculative-config.method", "ngram", "--speculative-config.num_speculative_tokens", "3")
    whole = _serve("--speculative-config", '{"method": "ngram", "num_speculative_tokens": 3}')
    assert dotted["speculative_config"] == whole["speculative_config"] == {"method": "ngram",
                                                                            "num_speculative_tokens": 3}
    # ... and reach EngineArgs (the same dict LLM(speculative_config=...) takes) and the engine's config.
    from pagedlm.spec_decode.config import resolve_speculative_config

    args = EngineArgs.from_cli_args(parse_serve_args(["/m", "--speculative-config.method=ngram",
                                                      "--speculative_config.num_speculative_tokens=3"]))
    assert resolve_speculative_config(args.speculative_config, False, 2048).num_speculative_tokens == 3


def test_nested_keys_and_value_types() -> None:
    ns = _serve("--hf-overrides.text_config.num_hidden_layers", "2", "--hf-overrides.text_config.tie", "true",
                "--hf-overrides.rope_theta=1e6", "--hf-overrides.scale", "0.5", "--hf-overrides.gone", "null",
                "--hf-overrides.ids", "[1, 2]", "--hf-overrides.name", "llama", "--hf-overrides.size", "8g",
                "--hf-overrides.dashed", "-minus.and.dot", "--hf_overrides.key_with_underscores", "kept")
    assert ns["hf_overrides"] == {
        "text_config": {"num_hidden_layers": 2, "tie": True}, "rope_theta": 1e6, "scale": 0.5, "gone": None,
        "ids": [1, 2], "name": "llama", "size": 8 * 10**9, "dashed": "-minus.and.dot", "key_with_underscores": "kept"}


def test_plus_appends_to_a_list() -> None:
    ns = _serve("-cc.cudagraph_capture_sizes+", "1,2", "--compilation-config.cudagraph_capture_sizes+=4",
                "-O.cudagraph_mode", "NONE")
    assert ns["compilation_config"] == {"cudagraph_capture_sizes": [1, 2, 4], "cudagraph_mode": "NONE"}
    assert _serve("--hf-overrides.archs+", "A")["hf_overrides"] == {"archs": ["A"]}


def test_whole_object_and_keys_merge_left_to_right(caplog: pytest.LogCaptureFixture) -> None:
    ns = _serve("--speculative-config", '{"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4}',
                "--speculative-config.num_speculative_tokens", "5")
    assert ns["speculative_config"] == {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4}
    ns = _serve("--hf-overrides.text_config.a", "1", "--hf-overrides", '{"text_config": {"b": 2}, "c": 3}')
    assert ns["hf_overrides"] == {"text_config": {"a": 1, "b": 2}, "c": 3}
    logger = logging.getLogger("pagedlm")  # it does not propagate: attach caplog's handler
    logger.addHandler(caplog.handler)
    try:
        assert _serve("--hf-overrides.a", "1", "--hf-overrides.a", "2")["hf_overrides"] == {"a": 2}
    finally:
        logger.removeHandler(caplog.handler)
    assert "--hf-overrides.a given more than once" in caplog.text


def test_an_optimization_level_is_left_to_argparse() -> None:
    assert _serve("-O3")["compilation_config"] == 3
    assert _serve("-O", "0")["compilation_config"] == 0


@pytest.mark.parametrize("flag", sorted({a.option_strings[0] for a in make_serve_parser()._actions
                                         if is_json_action(a) and not a.dest.startswith(VLLM_DEST)}))
def test_every_json_option_takes_dotted_keys(flag: str) -> None:
    dest = next(a.dest for a in make_serve_parser()._actions if flag in a.option_strings)
    assert _serve(f"{flag}.some_key.inner", "7", f"{flag}.other=x")[dest] == {"some_key": {"inner": 7}, "other": "x"}
    assert _serve(f"--{flag[2:].replace('-', '_')}.k", "1")[dest] == {"k": 1}


@pytest.mark.parametrize("argv,value", [(["--enable-chunked-prefill=false"], False),
                                        (["--enable-chunked-prefill", "False"], False),
                                        (["--enable_chunked_prefill=True"], True),
                                        (["--enable-chunked-prefill"], True), (["--no-enable-chunked-prefill"], False)])
def test_bool_flags_take_vllms_true_false_values(argv: list[str], value: bool) -> None:
    # vLLM's StoreBoolean flags took a value (--enable-chunked-prefill=false); BooleanOptionalAction refuses one.
    assert _serve(*argv)["enable_chunked_prefill"] is value


def test_json_options_are_the_dict_fields() -> None:
    dests = {a.dest for a in make_serve_parser()._actions if is_json_action(a)}
    assert {"speculative_config", "hf_overrides", "override_generation_config", "compilation_config",
            "pooler_config", "structured_outputs_config"} <= dests
    assert _serve("--override-pooler-config.pooling_type", "MEAN")["pooler_config"] == {"pooling_type": "MEAN"}


@pytest.mark.parametrize("argv", [["--max-model-len.x", "3"], ["--enforce-eager.x", "1"], ["-tp.x", "2"],
                                  ["--api_key.x", "k"]])
def test_keys_on_an_option_that_takes_no_json_are_refused(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        _serve(*argv)
    err = capsys.readouterr().err
    assert "is not a JSON option, so it takes no keys" in err and "--speculative-config" in err


def test_a_key_without_a_value_is_refused(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        _serve("--hf-overrides.x")
    assert "argument --hf-overrides.x: expected one argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _serve("--hf-overrides..x", "1")
    assert "an empty key" in capsys.readouterr().err


def test_underscores_and_equals() -> None:
    ns = _serve("--max_model_len", "4k", "--max_num_seqs=8", "--no_enable_prefix_caching", "--tensor_parallel_size",
                "1", "--api_key", "k", "--served_model_name=a.b")
    assert (ns["max_model_len"], ns["max_num_seqs"], ns["enable_prefix_caching"]) == (4000, 8, False)
    assert ns["api_key"] == ["k"] and ns["served_model_name"] == ["a.b"]
    assert vars(parse_serve_args(["--model=/x.y"]))["model"] == "/x.y"


def test_config_file_keys_and_the_command_line_merge(tmp_path: Path) -> None:
    config = tmp_path / "serve.yaml"
    config.write_text("speculative_config:\n  method: ngram\n  num_speculative_tokens: 3\n"
                      "hf_overrides.text_config.num_hidden_layers: 2\nhf_overrides.tie: false\n"
                      "hf_overrides.ids: [1, 2]\n")
    ns = _serve("--config", str(config), "--speculative-config.num_speculative_tokens", "5")
    assert ns["speculative_config"] == {"method": "ngram", "num_speculative_tokens": 5}
    assert ns["hf_overrides"] == {"text_config": {"num_hidden_layers": 2}, "tie": False, "ids": [1, 2]}


@pytest.mark.parametrize("kind", ["throughput", "latency"])
def test_bench_takes_the_same_spellings(kind: str, capsys: pytest.CaptureFixture) -> None:
    argv = ["bench", kind, "--model", "/m", "--speculative-config.method", "ngram", "-cc.cudagraph_mode", "NONE",
            "--max_num_seqs", "4"]
    ns = make_parser(argv).parse_args(argv)
    assert (ns.speculative_config, ns.compilation_config, ns.max_num_seqs) == (
        {"method": "ngram"}, {"cudagraph_mode": "NONE"}, 4)
    argv = ["bench", kind, "--max-num-seqs.x", "4"]
    with pytest.raises(SystemExit):
        make_parser(argv).parse_args(argv)
    assert "is not a JSON option" in capsys.readouterr().err


def test_bench_serve_takes_underscores() -> None:
    argv = ["bench", "serve", "--request_rate", "3", "--num_prompts=5"]
    ns = make_parser(argv).parse_args(argv)
    assert (ns.request_rate, ns.num_prompts) == (3.0, 5)


def test_help_explains_the_dotted_form() -> None:
    text = make_serve_parser().format_help()
    tip = " ".join(text.split())  # as one line, however the terminal wraps it
    assert "--speculative-config.method ngram" in tip and json.dumps({"method": "ngram"})[:-1] in tip
