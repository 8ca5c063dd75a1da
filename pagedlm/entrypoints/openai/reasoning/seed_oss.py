"""Seed-OSS: ``<seed:think>...</seed:think>``; as DeepSeek-R1, the output may start inside the
block without writing ``<seed:think>`` (vLLM's ``seed_oss``: text without ``</seed:think>`` is
all reasoning)."""

from __future__ import annotations

from pagedlm.entrypoints.openai.reasoning.base import ReasoningParser


class SeedOssReasoningParser(ReasoningParser):
    start_token = "<seed:think>"
    end_token = "</seed:think>"
    implicit_start = True
