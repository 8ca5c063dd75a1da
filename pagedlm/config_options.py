"""vLLM's config objects that scripts pass to ``LLM(...)`` / ``EngineArgs(...)`` instead of a dict:
``LLM(compilation_config=CompilationConfig(cudagraph_capture_sizes=[1, 2, 4]))``,
``LLM(pooler_config=PoolerConfig(pooling_type="MEAN"))``. pagedlm.config names them where vLLM
code imports them (``vllm.config``).

An object is only another spelling of the dict: it takes vLLM's field names, remembers which
ones were given, and EngineArgs turns it into the dict of those fields (``as_option_dict``), so
each field is honoured or refused by name exactly as in the dict form, in one place
(pagedlm.compilation, pagedlm.pooling_config). A name vLLM's class does not have is a
TypeError at construction, as in vLLM. No torch here.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
from typing import Any, ClassVar


class CompilationMode(enum.IntEnum):
    """vLLM's compilation levels. pagedlm compiles nothing with torch.compile: NONE (0) turns the
    CUDA graphs off as well (vLLM's "no optimization"); the others have no effect (a notice)."""

    NONE = 0
    STOCK_TORCH_COMPILE = 1
    DYNAMO_TRACE_ONCE = 2
    VLLM_COMPILE = 3


class CUDAGraphMode(enum.Enum):
    """vLLM's CUDA-graph modes. pagedlm captures full graphs of decode steps (FULL_DECODE_ONLY);
    NONE turns graphs off, the other modes with graphs run as FULL_DECODE_ONLY (a notice)."""

    NONE = 0
    PIECEWISE = 1
    FULL = 2
    FULL_DECODE_ONLY = (FULL, NONE)
    FULL_AND_PIECEWISE = (FULL, PIECEWISE)


class _OptionObject:
    """Keyword fields named in ``FIELDS``; reading an unset field gives its vLLM default."""

    FIELDS: ClassVar[dict[str, Any]] = {}  # field -> vLLM's default

    def __init__(self, **fields: Any) -> None:
        unknown = sorted(set(fields) - set(self.FIELDS))
        if unknown:
            raise TypeError(f"{type(self).__name__}() got unexpected keyword arguments {unknown}; its fields are "
                            f"{sorted(self.FIELDS)}")
        object.__setattr__(self, "_given", dict(fields))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in self.FIELDS:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}")
        # an unset field reads as a copy of its default (a list the caller appends to stays its own)
        return self._given[name] if name in self._given else copy.deepcopy(self.FIELDS[name])

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self.FIELDS:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}; its fields are {sorted(self.FIELDS)}")
        self._given[name] = value

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._given == self._given  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self._given.items())})"

    def to_dict(self) -> dict[str, Any]:
        """The fields given (at construction or set since), as the dict form of the option."""
        return {name: _plain(value) for name, value in self._given.items()}


def _plain(value: Any) -> Any:
    """Enum members by name (``CUDAGraphMode.NONE`` -> "NONE"), as they are written in JSON."""
    return value.name if isinstance(value, enum.Enum) else value


class CompilationConfig(_OptionObject):
    """``compilation_config=CompilationConfig(...)``: as the dict of the same fields (the CUDA-graph
    ones work, the torch.compile ones have no effect; see pagedlm.compilation)."""

    FIELDS: ClassVar[dict[str, Any]] = {
        # the CUDA-graph settings
        "cudagraph_capture_sizes": None, "max_cudagraph_capture_size": None, "max_capture_size": None,
        "cudagraph_mode": None, "use_cudagraph": True,
        # torch.compile and graph-mechanics settings (no effect here)
        "level": None, "mode": None, "backend": "", "custom_ops": [], "splitting_ops": None, "use_inductor": None,
        "compile_sizes": None, "inductor_compile_config": {}, "inductor_passes": {}, "pass_config": None,
        "debug_dump_path": None, "cache_dir": "", "local_cache_dir": None, "compile_cache_save_format": "binary",
        "cudagraph_num_of_warmups": 0, "cudagraph_copy_inputs": False, "full_cuda_graph": False,
        "use_inductor_graph_partition": False, "compile_mm_encoder": False, "cudagraph_specialize_lora": True,
        "dynamic_shapes_config": None, "fast_moe_cold_start": None, "static_all_moe_layers": None,
    }


class PoolerConfig(_OptionObject):
    """``pooler_config=PoolerConfig(...)``: as the dict (pooling_type and normalize are honoured;
    vLLM's other pooler fields are refused by name when the engine starts)."""

    FIELDS: ClassVar[dict[str, Any]] = {
        "pooling_type": None, "normalize": None, "task": None, "seq_pooling_type": None, "tok_pooling_type": None,
        "use_activation": None, "activation": None, "softmax": None, "dimensions": None,
        "enable_chunked_processing": False, "max_embed_len": None, "logit_mean": None, "logit_sigma": None,
        "logit_bias": None, "logit_scale": None, "step_tag_id": None, "returned_token_ids": None,
    }


class KVTransferConfig:
    """vLLM's disaggregated-prefill settings: pagedlm has no KV transfer, so building one is refused
    (rather than accepted and ignored)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("KVTransferConfig: KV cache transfer (disaggregated prefill) is not supported by "
                                  "pagedlm; run one engine that does prefill and decode (leave kv_transfer_config "
                                  "unset)")


def as_option_dict(value: Any) -> Any:
    """An option's value as EngineArgs reads it: a config object (or pagedlm's own
    StructuredOutputsConfig, a dataclass) -> the dict of the fields given (for a dataclass: those
    away from their defaults); enum members -> their names (an int level for CompilationMode);
    anything else (None, a dict, JSON text, a wrong type for the option's own error) as it is."""
    if isinstance(value, _OptionObject):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if getattr(value, f.name) != f.default}
    if isinstance(value, enum.IntEnum):
        return int(value)
    if isinstance(value, dict) and any(isinstance(v, enum.Enum) for v in value.values()):
        return {k: _plain(v) for k, v in value.items()}
    return value
