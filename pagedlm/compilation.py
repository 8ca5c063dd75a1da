"""vLLM's ``--compilation-config`` (``-O``) and ``--cuda-graph-sizes``, as far as they mean
something here: which decode batch sizes are captured as CUDA graphs.

pagedlm compiles nothing with torch.compile: a decode step (one token per sequence) replays a
CUDA graph of the whole forward when its batch fits a captured size, and every other step runs
eagerly (vLLM's ``FULL_DECODE_ONLY`` mode). So of vLLM's compilation settings the CUDA-graph
ones work (capture sizes, the largest size, the mode ``NONE`` or ``use_cudagraph: false`` for
no graphs), optimization level 0 (``-O0``: vLLM's "no optimization", so no CUDA graphs either),
the torch.compile ones log that they have no effect, and a key vLLM does not have is refused
by name.
"""

from __future__ import annotations

from typing import Any

from pagedlm.config import ConfigError

# The largest default capture size. vLLM stops at 512 and runs larger batches through its
# piecewise-compiled model; pagedlm has no such path, and an eager 8B decode step at ~1,000
# requests is host-bound on an H200 (48% of the step idle, BENCHMARKS.md session 12), so the
# default list goes on (every 16) to 1,024, the largest default max_num_seqs.
MAX_CAPTURE_SIZE = 1024

# torch.compile and graph-mechanics settings of vLLM with no counterpart here.
_NO_EFFECT_KEYS = frozenset({
    "level", "mode", "backend", "custom_ops", "splitting_ops", "use_inductor", "compile_sizes",
    "inductor_compile_config", "inductor_passes", "pass_config", "debug_dump_path", "cache_dir", "local_cache_dir",
    "compile_cache_save_format", "cudagraph_num_of_warmups", "cudagraph_copy_inputs", "full_cuda_graph",
    "use_inductor_graph_partition", "compile_mm_encoder", "cudagraph_specialize_lora", "dynamic_shapes_config",
    "fast_moe_cold_start", "static_all_moe_layers",
})
_GRAPH_KEYS = frozenset({"cudagraph_capture_sizes", "max_cudagraph_capture_size", "max_capture_size", "cudagraph_mode",
                         "use_cudagraph"})
# vLLM's CUDAGraphMode names (and enum values) -> graphs on?
_MODES = {"NONE": False, "0": False, "FULL_DECODE_ONLY": True, "FULL": True, "2": True, "PIECEWISE": True, "1": True,
          "FULL_AND_PIECEWISE": True}


def default_capture_sizes(top: int) -> list[int]:
    """vLLM's list up to ``top``: 1, 2, 4, every 8 to 256, every 16 above, and ``top`` itself."""
    sizes = [s for s in (1, 2, 4) if s <= top] + list(range(8, min(top, 256) + 1, 8)) + list(range(272, top + 1, 16))
    if not sizes or sizes[-1] != top:
        sizes.append(top)
    return sizes


def as_compilation_dict(value: Any) -> dict[str, Any]:
    """--compilation-config as a dict: ``-O3`` / ``compilation_config=3`` is vLLM's level 3."""
    if value is None:
        return {}
    if isinstance(value, bool) or not isinstance(value, (int, dict)):
        raise ConfigError(f"compilation_config must be a JSON object or an optimization level, got {value!r}")
    return {"level": value} if isinstance(value, int) else dict(value)


def _positive_ints(name: str, value: Any) -> list[int]:
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
        raise ConfigError(f"{name} must be positive integers, got {value!r}")
    return list(values)


def resolve_cuda_graph_sizes(max_num_seqs: int, cuda_graph_sizes: list[int] | None,
                             compilation_config: Any) -> tuple[int, ...]:
    """The decode batch sizes to capture (empty: no graphs), from --cuda-graph-sizes (one value:
    the largest size of the default list; several: the list) or the compilation config's
    ``cudagraph_capture_sizes`` / ``max_cudagraph_capture_size`` / ``cudagraph_mode``; sizes
    above max_num_seqs are dropped. A key vLLM does not have is refused."""
    cc = as_compilation_dict(compilation_config)
    unknown = sorted(set(cc) - _NO_EFFECT_KEYS - _GRAPH_KEYS)
    if unknown:
        raise ConfigError(f"compilation_config: unknown key(s) {unknown}; pagedlm takes vLLM's CUDA-graph settings "
                          f"({sorted(_GRAPH_KEYS)}) and ignores its torch.compile ones")
    mode = cc.get("cudagraph_mode")
    mode = None if mode is None else str(mode).upper()
    if mode is not None and mode not in _MODES:
        raise ConfigError(f"compilation_config: unknown cudagraph_mode {cc['cudagraph_mode']!r}; one of "
                          f"{sorted(_MODES)}")
    if cc.get("use_cudagraph") is False or (mode is not None and not _MODES[mode]):
        return ()
    if mode is None and _level_zero(cc):  # -O0 without an explicit cudagraph_mode
        return ()
    explicit = cc.get("cudagraph_capture_sizes")
    largest = cc.get("max_cudagraph_capture_size", cc.get("max_capture_size"))
    if cuda_graph_sizes is not None and (explicit is not None or largest is not None):
        raise ConfigError("give the capture sizes once: --cuda-graph-sizes or the compilation config's "
                          "cudagraph_capture_sizes / max_cudagraph_capture_size")
    if cuda_graph_sizes is not None:
        sizes = _positive_ints("--cuda-graph-sizes", cuda_graph_sizes)
        explicit, largest = (sizes, None) if len(sizes) > 1 else (None, sizes[0])
    if explicit is not None:
        chosen = sorted({s for s in _positive_ints("cudagraph_capture_sizes", explicit) if s <= max_num_seqs})
        if not chosen:
            raise ConfigError(f"no CUDA-graph capture size at or below max_num_seqs ({max_num_seqs}): {explicit}")
        if largest is not None and chosen and max(chosen) > largest:
            raise ConfigError(f"cudagraph_capture_sizes go up to {max(chosen)}, above max_cudagraph_capture_size "
                              f"{largest}")
        return tuple(chosen)
    top = MAX_CAPTURE_SIZE if largest is None else _positive_ints("max_cudagraph_capture_size", largest)[0]
    return tuple(default_capture_sizes(min(top, max_num_seqs)))


def _level_zero(cc: dict[str, Any]) -> bool:
    """vLLM's optimization level 0 (``level`` before vLLM 0.12, ``mode`` since)."""
    return any(str(cc.get(key)) in ("0", "NONE", "CompilationMode.NONE") for key in ("level", "mode") if key in cc)


def compilation_notices(compilation_config: Any) -> list[str]:
    """One line per compilation setting that has no effect here (the entry point logs them)."""
    cc = as_compilation_dict(compilation_config)
    level_keys = {"level", "mode"} if _level_zero(cc) else set()  # level 0 turns the graphs off: it acts
    lines = [f"compilation_config {key!r} has no effect: pagedlm does not use torch.compile (decode steps replay "
             "CUDA graphs)." for key in sorted(set(cc) & _NO_EFFECT_KEYS - level_keys)]
    mode = str(cc.get("cudagraph_mode", "")).upper()
    if _MODES.get(mode) and mode != "FULL_DECODE_ONLY":  # graphs on, in a mode other than the one there is
        lines.append(f"compilation_config cudagraph_mode {cc['cudagraph_mode']!r} runs as FULL_DECODE_ONLY: "
                     "decode steps replay full CUDA graphs, other steps run eagerly.")
    return lines
