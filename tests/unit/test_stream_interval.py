"""stream_interval (vLLM's --stream-interval and the request's own): a streamed request's
outputs come with the first token, then every k new tokens of a sequence, and at the end;
DELTA outputs carry every token in between, so they still concatenate to the whole."""

from __future__ import annotations

import pytest

from pagedlm import SamplingParams
from pagedlm.engine.messages import EngineCoreOutput, EngineCoreRequest
from pagedlm.engine.output_processor import OutputProcessor
from pagedlm.sampling_params import RequestOutputKind


def _stream(engine_interval: int, params: SamplingParams, tokens_per_step: list[int], n: int = 1):
    """Outputs of one request fed ``tokens_per_step`` new tokens a step (each child alike); the
    last step finishes it. -> [(step, [token ids of each choice])] for the steps that gave one."""
    processor = OutputProcessor(None, engine_interval)  # no tokenizer: ids only
    children = [EngineCoreRequest(f"r-{i}", [1, 2, 3], params, None, 0.0) for i in range(n)]
    processor.add_request("r", None, children)
    out, next_id = [], 10
    for step, count in enumerate(tokens_per_step):
        last = step == len(tokens_per_step) - 1
        core = [EngineCoreOutput(c.request_id, list(range(next_id, next_id + count)),
                                 finish_reason="length" if last else None) for c in children]
        next_id += count
        for output in processor.process_outputs(core).request_outputs:
            out.append((step, [list(o.token_ids) for o in output.outputs]))
    return out


def test_delta_outputs_every_k_tokens_and_concatenate() -> None:
    params = SamplingParams(max_tokens=10, output_kind=RequestOutputKind.DELTA, stream_interval=3)
    got = _stream(1, params, [1] * 10)
    assert [step for step, _ in got] == [0, 3, 6, 9]  # the first token, then every 3, then the end
    assert [ids[0] for _, ids in got] == [[10], [11, 12, 13], [14, 15, 16], [17, 18, 19]]
    # without it: one output a step
    assert len(_stream(1, SamplingParams(max_tokens=10, output_kind=RequestOutputKind.DELTA), [1] * 10)) == 10


def test_the_engine_setting_is_a_floor_and_speculative_steps_count_their_tokens() -> None:
    delta = dict(max_tokens=12, output_kind=RequestOutputKind.DELTA)
    assert [s for s, _ in _stream(4, SamplingParams(**delta), [1] * 12)] == [0, 4, 8, 11]
    assert [s for s, _ in _stream(4, SamplingParams(**delta, stream_interval=2), [1] * 12)] == [0, 4, 8, 11]
    assert [s for s, _ in _stream(2, SamplingParams(**delta, stream_interval=6), [1] * 12)] == [0, 6, 11]
    # several tokens a step (speculative decoding): out once 3 or more have gathered
    assert [s for s, _ in _stream(1, SamplingParams(**delta, stream_interval=3), [1, 2, 2, 1, 3, 1])] == [0, 2, 4, 5]


def test_cumulative_n_and_final_only() -> None:
    cumulative = _stream(1, SamplingParams(max_tokens=5, output_kind=RequestOutputKind.CUMULATIVE,
                                           stream_interval=2, n=2, temperature=1.0), [1] * 5, n=2)
    assert [s for s, _ in cumulative] == [0, 2, 4]
    assert cumulative[-1][1] == [[10, 11, 12, 13, 14], [10, 11, 12, 13, 14]]
    final = _stream(1, SamplingParams(max_tokens=5, output_kind=RequestOutputKind.FINAL_ONLY, stream_interval=2),
                    [1] * 5)
    assert [s for s, _ in final] == [4]


def test_bad_values_are_refused() -> None:
    from pagedlm.config import ConfigError
    from pagedlm.engine_args import EngineArgs

    with pytest.raises(ValueError, match="stream_interval"):
        SamplingParams(stream_interval=0)
    with pytest.raises(ConfigError, match="stream_interval"):
        EngineArgs(model="x", stream_interval=0).create_engine_config()


def test_engine_streams_in_chunks(tmp_path) -> None:
    """--stream-interval in a running engine: a DELTA request's outputs come every 4 tokens and
    concatenate to the tokens of a request without it."""
    from pagedlm.demo import build_tiny_checkpoint
    from pagedlm.engine.llm_engine import LLMEngine
    from pagedlm.engine_args import EngineArgs

    path = str(build_tiny_checkpoint(tmp_path / "ckpt"))
    engine = LLMEngine.from_engine_args(EngineArgs(model=path, device="cpu", max_model_len=64, stream_interval=4))

    def run(**extra) -> list[list[int]]:
        params = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True,
                                output_kind=RequestOutputKind.DELTA, **extra)
        engine.add_request(f"r{len(extra)}", {"prompt_token_ids": [1, 5, 9, 14]}, params)
        chunks = []
        while engine.has_unfinished_requests():
            chunks += [list(o.outputs[0].token_ids) for o in engine.step()]
        return chunks

    chunks = run()
    assert [len(c) for c in chunks] == [1, 4, 4, 1]
    assert [len(c) for c in run(stream_interval=6)] == [1, 6, 3]
    whole = LLMEngine.from_engine_args(EngineArgs(model=path, device="cpu", max_model_len=64))
    whole.add_request("w", {"prompt_token_ids": [1, 5, 9, 14]},
                      SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True))
    final = []
    while whole.has_unfinished_requests():
        final = whole.step() or final
    assert sum(chunks, []) == list(final[0].outputs[0].token_ids)
