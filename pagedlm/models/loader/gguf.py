"""GGUF checkpoints (llama.cpp's single-file format): config, tokenizer and weights.

Parsing is not ours: the ``gguf`` package reads the file and dequantizes tensors, and
transformers' GGUF support maps the metadata to a HF config and tokenizer and the llama.cpp
tensor names to HF names (undoing llama.cpp's rotary permutation of Q/K for llama, and the
``+1`` stored in Gemma norms). What is ours:

- the metadata transformers' mapping leaves out, read as llama.cpp reads it (``gguf_config.py``:
  gemma3's RoPE scaling, query scale and sliding pattern; qwen3's head size);
- a *sidecar* directory per GGUF file (``config.json`` + tokenizer files + chat template),
  written once under the pagedlm cache. Parsing a GGUF's metadata costs seconds per read, and
  config and tokenizer are read several times per start-up (engine, API frontend); with the
  sidecar every later read is an ordinary HF directory load;
- streaming the weights into the model one tensor at a time (dequantized to the model dtype),
  with a progress bar, refusing tensor types outside the set we support by name; the tensor
  table is read without parsing the metadata values (``gguf_tensors.py``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import struct
from pathlib import Path
from typing import Any, Iterator

import torch

from pagedlm.cache_dir import cache_root
from pagedlm.config import ConfigError
from pagedlm.models.loader.gguf_config import fix_config
from pagedlm.models.loader.gguf_tensors import GGUFTensor, read_gguf_tensors

logger = logging.getLogger(__name__)

# Bump when the sidecar's content changes, so stale sidecars are rebuilt.
_SIDECAR_VERSION = 2
_NO_TOKENIZER_MARKER = "NO_TOKENIZER"

# GGUF general.architecture -> what we map; the rest is refused before any weight is read.
SUPPORTED_GGUF_ARCHITECTURES = ("llama", "qwen2", "qwen2moe", "qwen3", "qwen3moe", "gemma2", "gemma3", "phi3")

SUPPORTED_TENSOR_TYPES = (
    "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
)


def is_gguf_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() == ".gguf"


def _cache_root() -> Path:
    return cache_root() / "gguf"


def _sidecar_key(gguf_path: Path) -> str:
    import transformers

    st = gguf_path.stat()
    ident = f"{gguf_path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{transformers.__version__}|{_SIDECAR_VERSION}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def gguf_sidecar_dir(gguf_path: str | os.PathLike) -> Path:
    """A directory with the GGUF's HF ``config.json`` and tokenizer, built on first use."""
    path = Path(gguf_path)
    if not path.is_file():
        raise ConfigError(f"GGUF file {str(path)!r} does not exist")
    out = _cache_root() / f"{path.stem}-{_sidecar_key(path)}"
    if (out / ".complete").exists():
        return out
    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    logger.info("Reading config and tokenizer from the GGUF metadata of %s (once; cached in %s)", path, out)
    try:
        _write_config(path, tmp)
        _write_tokenizer(path, tmp)
        (tmp / ".complete").write_text(json.dumps({"gguf": str(path.resolve())}))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    try:
        os.replace(tmp, out)
    except OSError:
        # Another process finished the same sidecar first; theirs is as good as ours.
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def gguf_has_tokenizer(sidecar: Path) -> bool:
    return not (sidecar / _NO_TOKENIZER_MARKER).exists()


def _open_reader(path: Path) -> Any:
    from gguf import GGUFReader

    try:
        return GGUFReader(str(path))
    except (ValueError, OSError, KeyError) as e:
        raise ConfigError(f"{str(path)!r} is not a readable GGUF file: {e}") from e


def _field_str(reader: Any, key: str) -> str | None:
    field = reader.fields.get(key)
    return None if field is None else bytes(field.parts[field.data[0]]).decode()


def _write_config(path: Path, out: Path) -> None:
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    reader = _open_reader(path)
    arch = _field_str(reader, "general.architecture")
    if arch not in SUPPORTED_GGUF_ARCHITECTURES:
        raise ConfigError(f"GGUF architecture {arch!r} is not supported by pagedlm; supported GGUF "
                          f"architectures: {list(SUPPORTED_GGUF_ARCHITECTURES)}")
    try:
        config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    except (ValueError, KeyError, OSError) as e:
        raise ConfigError(f"could not read a model config from the GGUF metadata of {str(path)!r}: {e}") from e
    config.architectures = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[config.model_type]]
    fix_config(reader, arch, config)
    config.save_pretrained(str(out))


def _write_tokenizer(path: Path, out: Path) -> None:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:  # noqa: BLE001 - any failure means "no usable tokenizer in the metadata"
        logger.info("GGUF %s has no usable tokenizer in its metadata (%s); --tokenizer is required", path, e)
        (out / _NO_TOKENIZER_MARKER).write_text(str(e))
        return
    tokenizer.save_pretrained(str(out))


@contextlib.contextmanager
def tensor_name_maps_built_once() -> Iterator[None]:
    """Within the block, gguf's ``get_tensor_name_map`` is memoized. transformers'
    ``get_gguf_hf_weights_map`` walks every submodule and builds gguf's ``TensorNameMap`` for
    the architecture anew at each one (397 times for SmolLM2: 14 s of a 2-core host); it
    imports the builder from the package at each call, so the memo is seen there."""
    import gguf

    build = gguf.get_tensor_name_map
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(build)
    try:
        yield
    finally:
        gguf.get_tensor_name_map = build


def _hf_name_map(hf_config: Any, processor: Any) -> dict[str, str]:
    """llama.cpp tensor name -> HF parameter name, from a weightless HF model of the config."""
    from transformers import AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import get_gguf_hf_weights_map

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(hf_config)
    with tensor_name_maps_built_once():
        return get_gguf_hf_weights_map(skeleton, processor)


def iterate_gguf(gguf_path: str, hf_config: Any, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor in ``dtype``) for every tensor of the file, dequantized one at a time."""
    import numpy as np
    from gguf import dequantize
    from tqdm.auto import tqdm
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

    try:
        table = read_gguf_tensors(gguf_path)
    except (ValueError, OSError, KeyError, struct.error) as e:
        raise ConfigError(f"{gguf_path!r} is not a readable GGUF file: {e}") from e
    _check_tensor_types(table.tensors, gguf_path)
    processor = TENSOR_PROCESSORS.get(table.architecture or "", TensorProcessor)(config=hf_config.to_dict())
    name_map = _hf_name_map(hf_config, processor)
    parsed: dict[str, Any] = {"config": hf_config.to_dict(), "tensors": {}}
    for tensor in tqdm(table.tensors, desc="Loading GGUF tensors", unit="tensor"):
        weights = dequantize(tensor.data, tensor.tensor_type)
        result = processor.process(weights=weights, name=tensor.name, tensor_key_mapping=name_map,
                                   parsed_parameters=parsed)
        if result.name not in name_map:
            continue  # e.g. rope_freqs: derived from the config, not loaded
        yield name_map[result.name], torch.from_numpy(np.array(result.weights, copy=True)).to(dtype)
    # What the processors assemble across tensors (MoE experts: each file tensor holds one of
    # gate / up / down for every expert; transformers' fused gate_up_proj / down_proj by HF name)
    for name, tensor in parsed["tensors"].items():
        yield name, tensor.to(dtype)


def _check_tensor_types(tensors: list[GGUFTensor], gguf_path: str) -> None:
    for tensor in tensors:
        type_name = tensor.tensor_type.name
        if type_name not in SUPPORTED_TENSOR_TYPES:
            raise ConfigError(
                f"GGUF tensor {tensor.name!r} in {gguf_path!r} has type {type_name}, which pagedlm cannot "
                f"dequantize; supported types: {', '.join(SUPPORTED_TENSOR_TYPES)}"
            )
