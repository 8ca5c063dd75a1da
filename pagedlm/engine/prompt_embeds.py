"""Prompts given as embeddings (vLLM's ``EmbedsPrompt`` / ``--enable-prompt-embeds``).

A prompt ``{"prompt_embeds": tensor [T, hidden]}`` runs its T positions through the model with
these rows in place of the token-embedding lookup; the tokens it generates then go through the
embedding table as usual. Inside the engine the request carries T placeholder token ids (0,
as vLLM's) so that every length and offset stays the same, and the rows themselves as raw
bytes (``PromptEmbeds``): the frontend -> engine-core transport is msgpack, never pickle.

Prefix caching: as vLLM's ``_gen_prompt_embeds_extra_hash_keys``, each block of an embeds
prompt is keyed by the sha256 of its rows' bytes besides its (placeholder) tokens, so an
embeds prompt shares KV blocks only with an identical embeds prefix, never with token prompts.
"""

from __future__ import annotations

import base64
import hashlib
import io
from typing import Any

import torch

from pagedlm.engine.messages import PromptEmbeds

# The floating dtypes a prompt's embeddings may come in (vLLM's server accepts these three).
ACCEPTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class PromptEmbedsError(ValueError):
    """A prompt_embeds payload that cannot be served as given."""


def check_tensor(tensor: Any, hidden_size: int) -> torch.Tensor:
    """A [T, hidden] floating tensor (a leading batch dimension of 1 is dropped, as vLLM does)."""
    if not isinstance(tensor, torch.Tensor):
        raise PromptEmbedsError(f"prompt_embeds must be a torch.Tensor of shape [num_tokens, {hidden_size}], "
                                f"got {type(tensor).__name__}")
    if tensor.dim() == 3 and tensor.shape[0] == 1:
        tensor = tensor.squeeze(0)
    if tensor.dim() != 2:
        raise PromptEmbedsError(f"prompt_embeds must have shape [num_tokens, {hidden_size}] (or [1, num_tokens, "
                                f"{hidden_size}]), got {list(tensor.shape)}")
    if tensor.dtype not in ACCEPTED_DTYPES:
        raise PromptEmbedsError(f"prompt_embeds must be float32, bfloat16 or float16, got "
                                f"{str(tensor.dtype).removeprefix('torch.')}")
    if tensor.shape[1] != hidden_size:
        raise PromptEmbedsError(f"prompt_embeds rows must have the model's hidden size {hidden_size}, got "
                                f"shape {list(tensor.shape)}")
    if tensor.shape[0] == 0:
        raise PromptEmbedsError("The prompt cannot be empty (prompt_embeds has no rows).")
    return tensor


def to_wire(tensor: torch.Tensor, dtype: torch.dtype) -> PromptEmbeds:
    """[T, hidden] (any device) -> its bytes in ``dtype`` (the model's), on the host."""
    host = tensor.detach().to(device="cpu", dtype=dtype).contiguous()
    data = host.view(-1).view(torch.uint8).numpy().tobytes()
    return PromptEmbeds(data, str(dtype).removeprefix("torch."), list(host.shape))


def from_wire(embeds: PromptEmbeds, device: torch.device | str = "cpu") -> torch.Tensor:
    """The [T, hidden] tensor a ``PromptEmbeds`` holds, on ``device``."""
    dtype = getattr(torch, embeds.dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise PromptEmbedsError(f"prompt_embeds: unknown dtype {embeds.dtype!r}")
    flat = torch.frombuffer(bytearray(embeds.data), dtype=dtype)
    return flat.reshape(embeds.shape).to(device)


def block_digest(embeds: PromptEmbeds, start: int, end: int) -> str:
    """sha256 of rows [start, end) of the embeddings, for the prefix-cache key of that block."""
    row = len(embeds.data) // embeds.shape[0]
    return hashlib.sha256(embeds.data[start * row: end * row]).hexdigest()


def load_base64(payload: Any, max_bytes: int) -> torch.Tensor:
    """vLLM's completions ``prompt_embeds``: base64 of ``torch.save(tensor)``, loaded with
    ``weights_only=True`` (tensors only, no arbitrary objects) after a size check."""
    if not isinstance(payload, (str, bytes)):
        raise PromptEmbedsError("prompt_embeds must be a base64 string of torch.save(tensor) (or a list of them)")
    if len(payload) > max_bytes * 4 // 3 + 4:
        raise PromptEmbedsError(f"prompt_embeds is too large ({len(payload)} base64 characters; at most {max_bytes} "
                                "bytes of tensor data fit the model's context)")
    try:
        raw = base64.b64decode(payload, validate=True)
    except ValueError as e:
        raise PromptEmbedsError(f"prompt_embeds is not valid base64: {e}") from e
    try:
        tensor = torch.load(io.BytesIO(raw), weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - any unpickling failure is the payload's fault
        raise PromptEmbedsError(f"prompt_embeds could not be loaded as a torch.save tensor: "
                                f"{type(e).__name__}: {str(e)[:200]}") from e
    if not isinstance(tensor, torch.Tensor):
        raise PromptEmbedsError(f"prompt_embeds must hold one tensor, got {type(tensor).__name__}")
    if tensor.is_sparse or tensor.layout != torch.strided:
        raise PromptEmbedsError("prompt_embeds must be a dense tensor")
    return tensor


def model_accepts_embeds(model_cls: type) -> bool:
    """Whether a model class's forward can take ``inputs_embeds`` in place of the token
    lookup: it has ``embed_input_ids`` and its forward (and its inner model's, where the class
    names one) takes ``inputs_embeds``. A subclass whose forward does not is refused."""
    import inspect

    if not callable(getattr(model_cls, "embed_input_ids", None)):
        return False
    if "inputs_embeds" not in inspect.signature(model_cls.forward).parameters:
        return False
    inner = getattr(model_cls, "model_cls", None)
    return inner is None or "inputs_embeds" in inspect.signature(inner.forward).parameters
