"""`pagedlm serve --logits-processors module:Class`: the processor is loaded in the engine-core
process by name, and a request's `vllm_xargs` reach it as SamplingParams.extra_args."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from e2e_helpers import API_KEY, MODEL_NAME, running_server

UNIT_DIR = Path(__file__).resolve().parents[1] / "unit"  # custom_logits_procs.py lives there


def _token_ids(resp: httpx.Response) -> list[int]:
    assert resp.status_code == 200, resp.text
    tokens = resp.json()["choices"][0]["logprobs"]["tokens"]
    return [int(t.removeprefix("token_id:")) for t in tokens]


def test_serve_loads_processors_by_name_and_vllm_xargs_configure_them(checkpoint: Path,
                                                                        tmp_path: Path) -> None:
    args = [str(checkpoint), "--served-model-name", MODEL_NAME, "--max-model-len", "128", "--device", "cpu",
            "--api-key", API_KEY, "--logits-processors", "custom_logits_procs:DummyLogitsProcessor"]
    env = {"PYTHONPATH": f"{Path(__file__).resolve().parents[2]}:{UNIT_DIR}"}
    with running_server(args, tmp_path / "server.log", env=env) as srv:
        def complete(**extra) -> httpx.Response:
            body = {"model": MODEL_NAME, "prompt": "hello there", "max_tokens": 6, "temperature": 0,
                    "ignore_eos": True, "logprobs": 1, "return_tokens_as_token_ids": True, **extra}
            return httpx.post(f"{srv.url}/v1/completions", json=body, headers=srv.headers, timeout=60)

        plain = _token_ids(complete())
        assert _token_ids(complete(vllm_xargs={"target_token": 17})) == [17] * 6
        assert plain != [17] * 6 and _token_ids(complete()) == plain  # other requests untouched
        bad = complete(vllm_xargs={"target_token": "x"})  # the processor's validate_params: a 400
        assert bad.status_code == 400 and "target_token must be an integer" in bad.json()["error"]["message"]
        assert complete(logits_processors=["custom_logits_procs:DummyLogitsProcessor"]).status_code == 400


def test_serve_refuses_a_name_that_does_not_import(checkpoint: Path, tmp_path: Path) -> None:
    args = [str(checkpoint), "--device", "cpu", "--max-model-len", "128",
            "--logits-processors", "no_such_module_xyz:Proc"]
    with pytest.raises(Exception):
        with running_server(args, tmp_path / "server.log", timeout=60):
            pass
    assert "cannot import module 'no_such_module_xyz'" in (tmp_path / "server.log").read_text()
