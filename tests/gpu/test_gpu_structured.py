"""Structured outputs on a GPU: xgrammar's CUDA mask kernel, CUDA graphs, and async scheduling
(on by default on CUDA: the bitmask is built after launch and sampling is deferred). Every
sampled output must validate. Skipped without CUDA."""

from __future__ import annotations

import json
import re

import pytest
import torch

from pagedlm import LLM, SamplingParams
from pagedlm.sampling_params import StructuredOutputsParams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
jsonschema = pytest.importorskip("jsonschema")

SCHEMA = {"type": "object", "properties": {"k": {"enum": ["cat", "dog"]}, "n": {"type": "string",
                                                                                 "pattern": "^[a-z]{1,4}$"}},
          "required": ["k", "n"], "additionalProperties": False}


@pytest.mark.parametrize("async_scheduling", [True, False])
def test_gpu_json_and_regex_outputs_validate(llama_checkpoint, async_scheduling):
    llm = LLM(llama_checkpoint, device="cuda", max_model_len=256, max_num_seqs=64, num_gpu_blocks_override=512,
              async_scheduling=async_scheduling)
    json_params = SamplingParams(temperature=1.0, max_tokens=60, n=4, structured_outputs=StructuredOutputsParams(
        json=SCHEMA, disable_any_whitespace=True))
    regex_params = SamplingParams(temperature=1.0, max_tokens=30, structured_outputs=StructuredOutputsParams(
        regex="[0-9]{2}-[ab]{1,6}"))
    plain = SamplingParams(temperature=1.0, max_tokens=20, ignore_eos=True)
    outs = llm.generate([f"p{i}" for i in range(48)], [json_params, regex_params, plain] * 16, use_tqdm=False)
    for i, out in enumerate(outs):
        if i % 3 == 0:
            for c in out.outputs:
                jsonschema.validate(json.loads(c.text), SCHEMA)
        elif i % 3 == 1:
            assert re.fullmatch("[0-9]{2}-[ab]{1,6}", out.outputs[0].text)
        else:
            assert len(out.outputs[0].token_ids) == 20
