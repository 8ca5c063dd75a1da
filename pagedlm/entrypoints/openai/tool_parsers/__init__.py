"""Tool call parsers for ``tool_choice="auto"`` (``--tool-call-parser NAME``), one per file."""

from __future__ import annotations

from pagedlm.entrypoints.openai.tool_parsers.base import ToolParser
from pagedlm.entrypoints.openai.tool_parsers.deepseek_v3 import DeepSeekV3ToolParser
from pagedlm.entrypoints.openai.tool_parsers.glm45 import Glm45ToolParser
from pagedlm.entrypoints.openai.tool_parsers.granite import GraniteToolParser
from pagedlm.entrypoints.openai.tool_parsers.harmony import OpenAIHarmonyToolParser
from pagedlm.entrypoints.openai.tool_parsers.hermes import HermesToolParser
from pagedlm.entrypoints.openai.tool_parsers.internlm import InternLMToolParser
from pagedlm.entrypoints.openai.tool_parsers.kimi_k2 import KimiK2ToolParser
from pagedlm.entrypoints.openai.tool_parsers.llama3_json import Llama3JsonToolParser
from pagedlm.entrypoints.openai.tool_parsers.mistral import MistralToolParser
from pagedlm.entrypoints.openai.tool_parsers.phi4_mini_json import Phi4MiniJsonToolParser
from pagedlm.entrypoints.openai.tool_parsers.pythonic import PythonicToolParser
from pagedlm.entrypoints.openai.tool_parsers.qwen3_coder import Qwen3CoderToolParser
from pagedlm.entrypoints.openai.tool_parsers.xlam import XlamToolParser

TOOL_PARSERS: dict[str, type[ToolParser]] = {
    "deepseek_v3": DeepSeekV3ToolParser,
    "glm45": Glm45ToolParser,
    "granite": GraniteToolParser,
    "hermes": HermesToolParser,
    "internlm": InternLMToolParser,
    "kimi_k2": KimiK2ToolParser,
    "llama3_json": Llama3JsonToolParser,
    "llama4_json": Llama3JsonToolParser,  # vLLM registers the same parser under both names
    "mistral": MistralToolParser,
    "openai": OpenAIHarmonyToolParser,  # gpt-oss's harmony
    "phi4_mini_json": Phi4MiniJsonToolParser,
    "pythonic": PythonicToolParser,
    "qwen3_coder": Qwen3CoderToolParser,
    "xlam": XlamToolParser,
}


def get_tool_parser(name: str) -> type[ToolParser]:
    try:
        return TOOL_PARSERS[name]
    except KeyError:
        raise ValueError(f"unknown tool call parser {name!r}; choose one of {sorted(TOOL_PARSERS)}") from None


__all__ = ["TOOL_PARSERS", "ToolParser", "get_tool_parser"]
