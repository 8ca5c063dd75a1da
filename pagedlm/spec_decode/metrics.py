"""Speculative decoding counters (engine core, pure Python) and the periodic log line."""

from __future__ import annotations

import logging
import time
from typing import Any

logger = logging.getLogger("pagedlm.spec_decode")


class SpecDecodingStats:
    """Cumulative: drafts verified, draft tokens, accepted tokens, accepted per position."""

    def __init__(self, num_spec_tokens: int) -> None:
        self.num_drafts = 0
        self.num_draft_tokens = 0
        self.num_accepted_tokens = 0
        self.accepted_per_pos = [0] * num_spec_tokens

    def observe(self, num_draft_tokens: int, num_accepted: int) -> None:
        self.num_drafts += 1
        self.num_draft_tokens += num_draft_tokens
        self.num_accepted_tokens += num_accepted
        for pos in range(num_accepted):
            self.accepted_per_pos[pos] += 1

    def snapshot(self) -> dict[str, Any]:
        return {"num_drafts": self.num_drafts, "num_draft_tokens": self.num_draft_tokens,
                "num_accepted_tokens": self.num_accepted_tokens, "accepted_per_pos": list(self.accepted_per_pos)}


def summarize(delta: dict[str, Any]) -> str:
    """One log line over an interval: acceptance rate, mean acceptance length (tokens per
    verify step, the bonus token included), and per-position acceptance."""
    drafts, draft_tokens, accepted = delta["num_drafts"], delta["num_draft_tokens"], delta["num_accepted_tokens"]
    rate = accepted / draft_tokens if draft_tokens else 0.0
    mean_len = 1 + accepted / drafts if drafts else 0.0
    per_pos = ", ".join(f"{n / drafts:.3f}" if drafts else "0.000" for n in delta["accepted_per_pos"])
    return (f"SpecDecoding metrics: Draft acceptance rate: {rate:.1%}, Mean acceptance length: {mean_len:.2f}, "
            f"Accepted: {accepted} tokens, Drafted: {draft_tokens} tokens, Per-position acceptance rate: {per_pos}")


class SpecDecodingLogger:
    """Logs ``summarize`` of what changed since the last line, at most every interval_s."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._last: dict[str, Any] | None = None
        self._last_time = time.monotonic()

    def maybe_log(self, snapshot: dict[str, Any] | None, force: bool = False) -> str | None:
        if snapshot is None:
            return None
        now = time.monotonic()
        if not force and now - self._last_time < self.interval_s:
            return None
        last = self._last or {"num_drafts": 0, "num_draft_tokens": 0, "num_accepted_tokens": 0,
                              "accepted_per_pos": [0] * len(snapshot["accepted_per_pos"])}
        delta = {k: snapshot[k] - last[k] for k in ("num_drafts", "num_draft_tokens", "num_accepted_tokens")}
        delta["accepted_per_pos"] = [a - b for a, b in zip(snapshot["accepted_per_pos"], last["accepted_per_pos"])]
        self._last, self._last_time = snapshot, now
        if not delta["num_drafts"]:
            return None
        line = summarize(delta)
        logger.info(line)
        return line


class SpecDecodingPrometheus:
    """vLLM's spec-decode counters: {prefix}spec_decode_num_drafts_total, ..._num_draft_tokens_total,
    ..._num_accepted_tokens_total and ..._num_accepted_tokens_per_pos_total{position}. The
    engine sends running totals; counters advance by the difference, per engine."""

    def __init__(self, registry: Any, prefix: str, model_name: str) -> None:
        from prometheus_client import Counter

        def counter(name: str, doc: str, extra: list[str] | None = None) -> Any:
            return Counter(prefix + name, doc, ["model_name", "engine"] + (extra or []), registry=registry)

        # vLLM's labels: model_name and engine (the engine core's index).
        self.model_name = model_name
        self.num_drafts = counter("spec_decode_num_drafts", "Number of spec decoding drafts.")
        self.num_draft_tokens = counter("spec_decode_num_draft_tokens", "Number of draft tokens.")
        self.num_accepted = counter("spec_decode_num_accepted_tokens", "Number of accepted tokens.")
        self.per_pos = counter("spec_decode_num_accepted_tokens_per_pos", "Accepted tokens per draft position.",
                               ["position"])
        for family in (self.num_drafts, self.num_draft_tokens, self.num_accepted):
            family.labels(model_name, "0")  # read 0, not absent
        self._last: dict[int, dict[str, Any]] = {}

    def record(self, engine_index: int, snapshot: dict[str, Any]) -> None:
        last = self._last.get(engine_index)
        engine = str(engine_index)
        for counter, key in ((self.num_drafts, "num_drafts"), (self.num_draft_tokens, "num_draft_tokens"),
                             (self.num_accepted, "num_accepted_tokens")):
            delta = snapshot[key] - (last[key] if last else 0)
            child = counter.labels(self.model_name, engine)
            if delta > 0:
                child.inc(delta)
        for pos, now in enumerate(snapshot["accepted_per_pos"]):
            delta = now - (last["accepted_per_pos"][pos] if last else 0)
            child = self.per_pos.labels(self.model_name, engine, str(pos))  # created at 0 on the first report
            if delta > 0:
                child.inc(delta)
        self._last[engine_index] = snapshot
