"""Tool call parsers for ``tool_choice="auto"`` (``--tool-call-parser NAME``), one per file."""

from __future__ import annotations

from pagedlm.entrypoints.openai.tool_parsers.base import ToolParser
from pagedlm.entrypoints.openai.tool_parsers.deepseek_v3 import DeepSeekV3ToolParser
from pagedlm.entrypoints.openai.tool_parsers.deepseek_v31 import DeepSeekV31ToolParser
from pagedlm.entrypoints.openai.tool_parsers.glm45 import Glm45ToolParser
from pagedlm.entrypoints.openai.tool_parsers.granite import GraniteToolParser
from pagedlm.entrypoints.openai.tool_parsers.harmony import OpenAIHarmonyToolParser
from pagedlm.entrypoints.openai.tool_parsers.hermes import HermesToolParser
from pagedlm.entrypoints.openai.tool_parsers.hunyuan_a13b import HunyuanA13BToolParser
from pagedlm.entrypoints.openai.tool_parsers.internlm import InternLMToolParser
from pagedlm.entrypoints.openai.tool_parsers.jamba import JambaToolParser
from pagedlm.entrypoints.openai.tool_parsers.kimi_k2 import KimiK2ToolParser
from pagedlm.entrypoints.openai.tool_parsers.llama3_json import Llama3JsonToolParser
from pagedlm.entrypoints.openai.tool_parsers.llama4_pythonic import Llama4PythonicToolParser
from pagedlm.entrypoints.openai.tool_parsers.longcat import LongcatToolParser
from pagedlm.entrypoints.openai.tool_parsers.minimax import MinimaxToolParser
from pagedlm.entrypoints.openai.tool_parsers.mistral import MistralToolParser
from pagedlm.entrypoints.openai.tool_parsers.phi4_mini_json import Phi4MiniJsonToolParser
from pagedlm.entrypoints.openai.tool_parsers.pythonic import PythonicToolParser
from pagedlm.entrypoints.openai.tool_parsers.qwen3_coder import Qwen3CoderToolParser
from pagedlm.entrypoints.openai.tool_parsers.seed_oss import SeedOssToolParser
from pagedlm.entrypoints.openai.tool_parsers.step3 import Step3ToolParser
from pagedlm.entrypoints.openai.tool_parsers.xlam import XlamToolParser

TOOL_PARSERS: dict[str, type[ToolParser]] = {
    "deepseek_v3": DeepSeekV3ToolParser,
    "deepseek_v31": DeepSeekV31ToolParser,
    "glm45": Glm45ToolParser,
    "granite": GraniteToolParser,
    "hermes": HermesToolParser,
    "hunyuan_a13b": HunyuanA13BToolParser,
    "internlm": InternLMToolParser,
    "jamba": JambaToolParser,
    "kimi_k2": KimiK2ToolParser,
    "llama3_json": Llama3JsonToolParser,
    "llama4_json": Llama3JsonToolParser,  # vLLM registers the same parser under both names
    "llama4_pythonic": Llama4PythonicToolParser,
    "longcat": LongcatToolParser,
    "mimo": Qwen3CoderToolParser,  # vLLM's mimo, qwen3_coder and qwen3_xml: one parser
    "minimax": MinimaxToolParser,  # MiniMax-M1's (vLLM's older name)
    "mistral": MistralToolParser,
    "openai": OpenAIHarmonyToolParser,  # gpt-oss's harmony
    "phi4_mini_json": Phi4MiniJsonToolParser,
    "pythonic": PythonicToolParser,
    "qwen3_coder": Qwen3CoderToolParser,
    "qwen3_xml": Qwen3CoderToolParser,
    "seed_oss": SeedOssToolParser,
    "step3": Step3ToolParser,
    "xlam": XlamToolParser,
}


def get_tool_parser(name: str) -> type[ToolParser]:
    try:
        return TOOL_PARSERS[name]
    except KeyError:
        raise ValueError(f"unknown tool call parser {name!r}; choose one of {sorted(TOOL_PARSERS)}") from None


__all__ = ["TOOL_PARSERS", "ToolParser", "get_tool_parser"]
