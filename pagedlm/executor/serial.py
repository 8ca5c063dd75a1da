"""msgpack encodings of the per-step messages between the engine core and worker processes.

No pickle crosses a socket: SchedulerOutput goes out and ModelRunnerOutput comes back as
msgpack (msgspec). Decoding rebuilds the dataclasses field by field; SamplingParams is
restored without re-running its constructor, so fields the engine filled in (e.g. the EOS
id in all_stop_token_ids) survive.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec
import numpy as np

from pagedlm.engine.messages import (
    CachedRequestData,
    LogprobsLists,
    ModelRunnerOutput,
    NewRequestData,
    PromptEmbeds,
    SchedulerOutput,
)
from pagedlm.sampling_params import SamplingParams, StructuredOutputsParams

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):  # e.g. the grammar bitmask: raw bytes, shape, dtype
        return {"__ndarray__": obj.tobytes(), "shape": list(obj.shape), "dtype": str(obj.dtype)}
    raise TypeError(f"cannot encode {type(obj).__name__}")


def decode_ndarray(d: dict[str, Any] | None) -> np.ndarray | None:
    if d is None:
        return None
    return np.frombuffer(d["__ndarray__"], dtype=d["dtype"]).reshape(d["shape"]).copy()


def encode(obj: Any) -> bytes:
    return _encoder.encode(msgspec.to_builtins(obj, builtin_types=(bytes,), enc_hook=_enc_hook))


def decode_raw(data: bytes) -> Any:
    return _decoder.decode(data)


def _sampling_params(d: dict[str, Any]) -> SamplingParams:
    sp = SamplingParams.__new__(SamplingParams)
    for f in dataclasses.fields(SamplingParams):
        setattr(sp, f.name, d.get(f.name, f.default))
    sp.all_stop_token_ids = set(sp.all_stop_token_ids or ())
    if sp.logit_bias is not None:  # msgpack map keys come back as they went: ints
        sp.logit_bias = {int(k): float(v) for k, v in sp.logit_bias.items()}
    if sp.structured_outputs is not None:
        sp.structured_outputs = StructuredOutputsParams(**sp.structured_outputs)
    return sp


def decode_scheduler_output(data: bytes) -> SchedulerOutput:
    d = _decoder.decode(data)
    new_reqs = []
    for r in d["scheduled_new_reqs"]:
        r["sampling_params"] = _sampling_params(r["sampling_params"])
        if r.get("prompt_embeds") is not None:  # (an array-like struct: [data, dtype, shape])
            r["prompt_embeds"] = PromptEmbeds(*r["prompt_embeds"])
        new_reqs.append(NewRequestData(**r))
    return SchedulerOutput(
        scheduled_new_reqs=new_reqs,
        scheduled_cached_reqs=[CachedRequestData(**r) for r in d["scheduled_cached_reqs"]],
        num_scheduled_tokens=d["num_scheduled_tokens"],
        total_num_scheduled_tokens=d["total_num_scheduled_tokens"],
        finished_req_ids=set(d["finished_req_ids"]),
        preempted_req_ids=set(d["preempted_req_ids"]),
        structured_output_request_ids=d.get("structured_output_request_ids", []),
        grammar_bitmask=decode_ndarray(d.get("grammar_bitmask")),
        scheduled_spec_decode_tokens=d.get("scheduled_spec_decode_tokens", {}),
    )


def decode_runner_output(data: bytes) -> ModelRunnerOutput:
    d = _decoder.decode(data)
    return ModelRunnerOutput(
        req_ids=d["req_ids"],
        sampled_token_ids=d["sampled_token_ids"],
        logprobs=msgspec.convert(d["logprobs"], dict[str, LogprobsLists]),
        prompt_logprobs=msgspec.convert(d["prompt_logprobs"], dict[str, LogprobsLists]),
        pooler_output=d.get("pooler_output", {}),
        spec_token_ids=d.get("spec_token_ids", {}),
        request_errors=d.get("request_errors", {}),
    )
