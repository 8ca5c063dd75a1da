"""Reasoning parsers (``--reasoning-parser NAME``): split ``<think>...</think>`` from the answer.

The registry maps names to classes; the engine core reads only each class's marker strings
(``start_token``, ``end_token``, ``implicit_start``) to start constraints after the reasoning;
the server reads ``keep_special_tokens`` (markers that detokenizing would otherwise drop).
"""

from __future__ import annotations

from pagedlm.entrypoints.openai.reasoning.base import ReasoningParser
from pagedlm.entrypoints.openai.reasoning.deepseek_r1 import DeepSeekR1ReasoningParser
from pagedlm.entrypoints.openai.reasoning.ernie45 import Ernie45ReasoningParser
from pagedlm.entrypoints.openai.reasoning.glm45 import Glm45ReasoningParser
from pagedlm.entrypoints.openai.reasoning.gpt_oss import GptOssReasoningParser
from pagedlm.entrypoints.openai.reasoning.granite import GraniteReasoningParser
from pagedlm.entrypoints.openai.reasoning.hunyuan_a13b import HunyuanA13BReasoningParser
from pagedlm.entrypoints.openai.reasoning.mistral import MistralReasoningParser
from pagedlm.entrypoints.openai.reasoning.qwen3 import Qwen3ReasoningParser
from pagedlm.entrypoints.openai.reasoning.seed_oss import SeedOssReasoningParser
from pagedlm.entrypoints.openai.reasoning.step3 import Step3ReasoningParser

REASONING_PARSERS: dict[str, type[ReasoningParser]] = {
    "deepseek_r1": DeepSeekR1ReasoningParser,
    "ernie45": Ernie45ReasoningParser,
    "glm45": Glm45ReasoningParser,
    "granite": GraniteReasoningParser,
    "hunyuan_a13b": HunyuanA13BReasoningParser,
    "mistral": MistralReasoningParser,
    "openai_gptoss": GptOssReasoningParser,
    "qwen3": Qwen3ReasoningParser,
    "seed_oss": SeedOssReasoningParser,
    "step3": Step3ReasoningParser,
}


def get_reasoning_parser(name: str) -> type[ReasoningParser]:
    try:
        return REASONING_PARSERS[name]
    except KeyError:
        raise ValueError(f"unknown reasoning parser {name!r}; choose one of {sorted(REASONING_PARSERS)}") from None


__all__ = ["REASONING_PARSERS", "ReasoningParser", "get_reasoning_parser"]
