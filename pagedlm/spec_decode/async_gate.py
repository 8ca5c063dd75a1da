"""Async scheduling with speculative decoding: which requests may be scheduled again while a
step of theirs is still in flight.

A request whose in-flight step carries no drafts, and whose latest proposal was empty, is
scheduled ahead as a plain decode, exactly as with speculation off (its input token is the
in-flight step's sample, filled in on the device). This is what keeps an n-gram proposer
that finds nothing (or speculation paused by ``disable_by_batch_size``) as fast as no
speculation: the host's work overlaps the device.

A request whose in-flight step verifies drafts waits for it: the accepted count decides its
next positions. A proposal that comes back non-empty while the request has another step in
flight is stale (it does not know the in-flight token): it is dropped and the request stops
running ahead until that step is back; the proposal made then, from the full history,
drives a synchronous verify step.

Requests with a grammar never run ahead: with speculation their bitmask is computed when
the step is scheduled, from the matcher state of every token so far.
"""

from __future__ import annotations

from pagedlm.engine.request import Request


class SpecAheadGate:
    def __init__(self) -> None:
        # Requests whose latest proposal (one made with nothing of theirs in flight) was empty
        # and whose stale proposals since were empty too: the only ones that run ahead. A
        # request just prefilled is not one yet, so the proposal right after its prompt (the
        # likeliest to hit, for prompt lookup) is never made stale by a step run ahead.
        self.ahead_ok: set[str] = set()

    def waits(self, request: Request) -> bool:
        """Whether a request with a step in flight must wait for that step's output."""
        if request.num_pending_tokens == 0:
            return False
        return (request.request_id not in self.ahead_ok or bool(request.spec_token_ids)
                or request.structured_output is not None)

    def output_back(self, request: Request, drafts: list[int] | None) -> list[int] | None:
        """After a step's output for ``request`` has been counted: the drafts to keep (None
        when a proposal is stale because another step of the request is still in flight)."""
        rid = request.request_id
        if drafts:
            self.ahead_ok.discard(rid)
        elif request.num_pending_tokens == 0:
            self.ahead_ok.add(rid)
        return None if request.num_pending_tokens else drafts

    def forget(self, request_id: str) -> None:
        self.ahead_ok.discard(request_id)
