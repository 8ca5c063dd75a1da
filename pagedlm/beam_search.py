"""Beam search with vLLM's semantics, built in the frontend on top of generate.

Each step asks the engine for one token per live beam with ``2 * beam_width`` logprobs,
extends every beam by each candidate, and keeps the ``beam_width`` best by score
(cumulative logprob / length ** length_penalty, EOS not counted in the length). A beam that
ends in EOS is set aside as completed (unless ignore_eos). After ``max_tokens`` steps the
completed and live beams compete together. Prefix caching makes the repeated prompts cheap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from pagedlm.outputs import Logprob, RequestOutput
from pagedlm.sampling_params import BeamSearchParams, RequestOutputKind, SamplingParams



def check_logprobs_mode(logprobs_mode: str) -> None:
    """Beam search ranks beams by summed logprobs: refused under --logprobs-mode *_logits, whose
    'logprobs' are logits (vLLM would sum those silently)."""
    if logprobs_mode.endswith("_logits"):
        raise ValueError(f"beam search is not supported with logprobs_mode={logprobs_mode!r}: it ranks beams by "
                         "summed logprobs; use raw_logprobs or processed_logprobs")

@dataclass
class BeamSearchSequence:
    """``tokens`` holds the prompt and the generated tokens, as in vLLM."""

    tokens: list[int]
    logprobs: list[dict[int, Logprob]] = field(default_factory=list)
    cum_logprob: float = 0.0
    text: str | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class BeamSearchOutput:
    sequences: list[BeamSearchSequence]


def beam_score(seq: BeamSearchSequence, eos_token_id: int | None, length_penalty: float) -> float:
    seq_len = len(seq.tokens)
    if eos_token_id is not None and seq.tokens[-1] == eos_token_id:
        seq_len -= 1
    try:
        return seq.cum_logprob / (seq_len ** length_penalty)
    except OverflowError:  # a length penalty so large the length term is infinite (a 500 before)
        return seq.cum_logprob / math.inf


@dataclass
class _Instance:
    prompt_len: int
    beams: list[BeamSearchSequence]
    completed: list[BeamSearchSequence] = field(default_factory=list)


class BeamSearch:
    """The algorithm, independent of how a step's requests are run (offline or async)."""

    def __init__(self, prompts_token_ids: list[list[int]], params: BeamSearchParams, eos_token_id: int | None) -> None:
        self.params = params
        self.eos_token_id = eos_token_id
        self.instances = [_Instance(len(ids), [BeamSearchSequence(list(ids))]) for ids in prompts_token_ids]

    def step_params(self) -> SamplingParams:
        p = self.params
        return SamplingParams(logprobs=2 * p.beam_width, max_tokens=1, temperature=p.temperature,
                              ignore_eos=True, detokenize=False, output_kind=RequestOutputKind.FINAL_ONLY)

    def live_beams(self) -> list[BeamSearchSequence]:
        return [beam for inst in self.instances for beam in inst.beams]

    def live_owners(self) -> list[int]:
        """The prompt index of each live beam, in live_beams() order."""
        return [i for i, inst in enumerate(self.instances) for _ in inst.beams]

    def advance(self, outputs: list[RequestOutput]) -> None:
        """``outputs``: one per live beam, in live_beams() order."""
        key = self._key
        it = iter(outputs)
        for inst in self.instances:
            candidates: list[BeamSearchSequence] = []
            for beam in inst.beams:
                result = next(it)
                logprobs = result.outputs[0].logprobs
                if not logprobs:
                    continue
                for token_id, lp in logprobs[0].items():
                    new = BeamSearchSequence(beam.tokens + [token_id], beam.logprobs + [logprobs[0]],
                                             beam.cum_logprob + lp.logprob)
                    if token_id == self.eos_token_id and not self.params.ignore_eos:
                        new.finish_reason, new.stop_reason = "stop", None
                        inst.completed.append(new)
                    else:
                        candidates.append(new)
            inst.beams = sorted(candidates, key=key, reverse=True)[: self.params.beam_width]

    def finish(self, decode: Callable[[list[int]], str], include_prompt_text: bool) -> list[BeamSearchOutput]:
        outputs = []
        for inst in self.instances:
            for beam in inst.beams:
                beam.finish_reason = beam.finish_reason or "length"
            best = sorted(inst.completed + inst.beams, key=self._key, reverse=True)[: self.params.beam_width]
            for beam in best:
                ids = beam.tokens if include_prompt_text else beam.tokens[inst.prompt_len:]
                if beam.finish_reason == "stop" and not include_prompt_text and not self.params.include_stop_str_in_output:
                    ids = ids[:-1]  # the EOS token is not text
                beam.text = decode(ids)
            outputs.append(BeamSearchOutput(best))
        return outputs

    def _key(self, seq: BeamSearchSequence) -> float:
        return beam_score(seq, self.eos_token_id, self.params.length_penalty)


def run_beam_search(search: BeamSearch, generate: Callable[[list[list[int]], SamplingParams], list[RequestOutput]],
                    on_step: Callable[[], None] | None = None) -> None:
    for _ in range(search.params.max_tokens):
        beams = search.live_beams()
        if not beams:
            break
        search.advance(generate([b.tokens for b in beams], search.step_params()))
        if on_step is not None:
            on_step()


async def run_beam_search_async(search: BeamSearch,
                                generate: Callable[[list[list[int]], SamplingParams], Awaitable[list[RequestOutput]]],
                                ) -> None:
    for _ in range(search.params.max_tokens):
        beams = search.live_beams()
        if not beams:
            break
        search.advance(await generate([b.tokens for b in beams], search.step_params()))


__all__: list[Any] = ["BeamSearchParams", "BeamSearchSequence", "BeamSearchOutput", "BeamSearch"]
