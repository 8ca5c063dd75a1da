"""Per-step sampling metadata: the batch's SamplingParams turned into device tensors.

All the per-request Python work (bad-word prefix matching, min_tokens, logit_bias,
allowed_token_ids) happens here, once per step, and ends as a few index tensors; the
sampler itself then only runs batched tensor ops. Fields are None when no row needs them,
so a batch of plain greedy/temperature requests pays for nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pagedlm.sample.logprobs import ListedTokenIds
from pagedlm.sampling_params import SAMPLING_EPS, SamplingParams



@dataclass(slots=True)
class PenaltyMetadata:
    presence: torch.Tensor  # [B] float32
    frequency: torch.Tensor  # [B] float32
    repetition: torch.Tensor  # [B] float32
    # Padded with vocab_size. Rows without penalties are all padding. prompt_token_ids is
    # None when no row has a repetition penalty (the only penalty that looks at the prompt).
    prompt_token_ids: torch.Tensor | None  # [B, max_prompt_len] int64
    output_token_ids: torch.Tensor | None  # [B, max_output_len] int64; None when output_counts is given
    # The persistent batch's on-device state instead of the padded lists (no per-step padding):
    output_counts: torch.Tensor | None = None  # [B, V] int32
    prompt_mask: torch.Tensor | None = None  # [B, V] bool; None when no row has a repetition penalty


@dataclass(slots=True)
class SamplingMetadata:
    temperature: torch.Tensor  # [B] float32, 0 for greedy rows
    all_greedy: bool
    all_random: bool
    # Top-k / top-p apply to the rows in filter_rows only (None = every row); top_k and top_p
    # are indexed like filter_rows. Unused values: top_k = vocab_size, top_p = 1.0.
    filter_rows: torch.Tensor | None  # [R] int64
    top_k: torch.Tensor | None  # [R] int64, None when no row uses top-k
    top_p: torch.Tensor | None  # [R] float32, None when no row uses top-p
    max_top_k: int  # largest top_k in use (0 if none): torch.topk's k without a device sync
    min_p: torch.Tensor | None  # [B] float32, 0 where unused; None when no row uses it
    generators: dict[int, torch.Generator]  # row -> generator of a seeded random row
    max_num_logprobs: int | None  # None: no row asked for logprobs
    # Rows with logprob_token_ids (None: none, always so when no row asked for logprobs).
    logprob_token_ids: ListedTokenIds | None
    allowed_token_ids_mask: torch.Tensor | None  # [B, V] bool, True = not allowed
    # Tokens forced to -inf this step: bad words whose prefix matched, and stop tokens
    # while min_tokens is not reached.
    banned_token_indices: tuple[torch.Tensor, torch.Tensor] | None  # (rows [M], token ids [M]) int64
    # Stop tokens of structured-output rows while min_tokens is not reached: banned too, but
    # kept where banning them would leave the row no token (a grammar that has reached its end
    # allows only stop tokens; vLLM lets such a request stop rather than sample outside it).
    min_tokens_grammar_stops: tuple[torch.Tensor, torch.Tensor] | None  # (rows [S], token ids [S]) int64
    logit_bias: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None  # rows [M], ids [M], bias [M] f32
    penalties: PenaltyMetadata | None
    # The persistent-batch row of each row [B] (host): custom logits processors index those rows.
    batch_rows: np.ndarray | None = None


def _to_device(data: list | np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A host list -> device tensor; through pinned memory so the copy does not block."""
    cpu = torch.as_tensor(np.asarray(data), dtype=dtype)
    if device.type == "cuda":
        return cpu.pin_memory().to(device, non_blocking=True)
    return cpu.to(device)


def _pad_token_ids(rows: list[list[int]], pad_id: int) -> np.ndarray:
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), width), pad_id, dtype=np.int64)  # [B, width]
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def _bad_word_matches(word: list[int], output_ids: list[int]) -> bool:
    """A word's last token is banned when its other tokens end the output so far."""
    prefix_len = len(word) - 1
    if prefix_len < 0 or prefix_len > len(output_ids):
        return False
    return prefix_len == 0 or output_ids[-prefix_len:] == word[:-1]


def _banned_tokens(
    params: list[SamplingParams], output_token_ids: list[list[int]], vocab_size: int
) -> tuple[tuple[list[int], list[int]], tuple[list[int], list[int]]]:
    """-> ((rows, ids) always banned: bad words, stop tokens under min_tokens), ((rows, ids) of
    structured-output rows' stop tokens under min_tokens, banned unless that empties the row)."""
    banned_rows: list[int] = []
    banned_ids: list[int] = []
    stop_rows: list[int] = []
    stop_ids: list[int] = []
    for row, (sp, out) in enumerate(zip(params, output_token_ids)):
        banned: set[int] = set()
        if len(out) < sp.min_tokens:
            if sp.structured_outputs is not None:
                for token_id in sp.all_stop_token_ids:
                    if 0 <= token_id < vocab_size:
                        stop_rows.append(row)
                        stop_ids.append(token_id)
            else:
                banned.update(sp.all_stop_token_ids)
        for word in sp.bad_words_token_ids or ():
            if _bad_word_matches(word, out):
                banned.add(word[-1])
        for token_id in banned:
            if 0 <= token_id < vocab_size:
                banned_rows.append(row)
                banned_ids.append(token_id)
    return (banned_rows, banned_ids), (stop_rows, stop_ids)


def _allowed_mask(params: list[SamplingParams], vocab_size: int, device: torch.device) -> torch.Tensor | None:
    restricted_rows = [i for i, sp in enumerate(params) if sp.allowed_token_ids is not None]
    if not restricted_rows:
        return None
    rows: list[int] = []
    ids: list[int] = []
    for i in restricted_rows:
        allowed = [t for t in params[i].allowed_token_ids if 0 <= t < vocab_size]
        rows += [i] * len(allowed)
        ids += allowed
    mask = torch.zeros(len(params), vocab_size, dtype=torch.bool, device=device)  # [B, V]
    mask[_to_device(restricted_rows, torch.int64, device)] = True
    mask[_to_device(rows, torch.int64, device), _to_device(ids, torch.int64, device)] = False
    return mask


def _logit_bias(
    params: list[SamplingParams], vocab_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    rows: list[int] = []
    ids: list[int] = []
    values: list[float] = []
    for row, sp in enumerate(params):
        for token_id, bias in (sp.logit_bias or {}).items():
            if 0 <= token_id < vocab_size:
                rows.append(row)
                ids.append(token_id)
                values.append(bias)
    if not rows:
        return None
    return (
        _to_device(rows, torch.int64, device),
        _to_device(ids, torch.int64, device),
        _to_device(values, torch.float32, device),
    )


def _listed_token_ids(params: list[SamplingParams], device: torch.device) -> ListedTokenIds | None:
    """The rows with logprob_token_ids (SamplingParams gave them logprobs = the list's length);
    called only when some row asked for logprobs."""
    rows = [i for i, sp in enumerate(params) if sp.logprob_token_ids]
    if not rows:
        return None
    lists = [params[i].logprob_token_ids for i in rows]
    width = max(len(ids) for ids in lists)
    padded = [ids + [ids[0]] * (width - len(ids)) for ids in lists]
    listed = set(rows)
    top_ks = [sp.logprobs for i, sp in enumerate(params) if sp.logprobs is not None and i not in listed]
    return ListedTokenIds(_to_device(rows, torch.int64, device), _to_device(padded, torch.int64, device),
                          max(top_ks, default=0))


def _has_penalties(sp: SamplingParams) -> bool:
    return (
        abs(sp.presence_penalty) >= SAMPLING_EPS
        or abs(sp.frequency_penalty) >= SAMPLING_EPS
        or abs(sp.repetition_penalty - 1.0) >= SAMPLING_EPS
    )


def _penalties(
    params: list[SamplingParams],
    prompt_token_ids: list[list[int]],
    output_token_ids: list[list[int]],
    vocab_size: int,
    device: torch.device,
    penalty_state: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> PenaltyMetadata | None:
    penalized = [_has_penalties(sp) for sp in params]
    if not any(penalized):
        return None
    if penalty_state is not None:  # the persistent batch's device counts: nothing to pad
        return PenaltyMetadata(
            presence=_to_device([sp.presence_penalty for sp in params], torch.float32, device),
            frequency=_to_device([sp.frequency_penalty for sp in params], torch.float32, device),
            repetition=_to_device([sp.repetition_penalty for sp in params], torch.float32, device),
            prompt_token_ids=None, output_token_ids=None,
            output_counts=penalty_state[0], prompt_mask=penalty_state[1],
        )
    outputs = [out if p else [] for out, p in zip(output_token_ids, penalized)]
    use_prompt = [abs(sp.repetition_penalty - 1.0) >= SAMPLING_EPS for sp in params]
    prompt_ids = None
    if any(use_prompt):
        prompts = [list(pr) if u else [] for pr, u in zip(prompt_token_ids, use_prompt)]
        prompt_ids = _to_device(_pad_token_ids(prompts, vocab_size), torch.int64, device)
    return PenaltyMetadata(
        presence=_to_device([sp.presence_penalty for sp in params], torch.float32, device),
        frequency=_to_device([sp.frequency_penalty for sp in params], torch.float32, device),
        repetition=_to_device([sp.repetition_penalty for sp in params], torch.float32, device),
        prompt_token_ids=prompt_ids,
        output_token_ids=_to_device(_pad_token_ids(outputs, vocab_size), torch.int64, device),
    )


def _uses_top_k(sp: SamplingParams, vocab_size: int) -> bool:
    return 0 < sp.top_k < vocab_size


def _top_k_top_p(
    params: list[SamplingParams], random_rows: list[int], vocab_size: int, device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, int]:
    """-> (filter_rows, top_k, top_p, max_top_k) over the random rows that use top-k/top-p."""
    rows = [i for i in random_rows if _uses_top_k(params[i], vocab_size) or params[i].top_p < 1.0]
    if not rows:
        return None, None, None, 0
    top_ks = [params[i].top_k if _uses_top_k(params[i], vocab_size) else vocab_size for i in rows]
    top_ps = [params[i].top_p for i in rows]
    max_top_k = max((k for k in top_ks if k < vocab_size), default=0)
    top_k = _to_device(top_ks, torch.int64, device) if max_top_k > 0 else None
    top_p = _to_device(top_ps, torch.float32, device) if min(top_ps) < 1.0 else None
    filter_rows = None if len(rows) == len(params) else _to_device(rows, torch.int64, device)
    return filter_rows, top_k, top_p, max_top_k


def build_sampling_metadata(
    params: list[SamplingParams],
    prompt_token_ids: list[list[int]],
    output_token_ids: list[list[int]],
    generators: list[torch.Generator | None],
    vocab_size: int,
    device: torch.device,
    penalty_state: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> SamplingMetadata:
    """One row per row of logits. output_token_ids are the tokens generated before this step.
    ``penalty_state``: (output counts [B, V], prompt mask [B, V] or None) kept on the device by
    the persistent batch; when given, penalties read it and output/prompt lists are not padded."""
    device = torch.device(device)
    greedy = [sp.temperature < SAMPLING_EPS for sp in params]
    random_rows = [i for i, g in enumerate(greedy) if not g]
    filter_rows, top_k, top_p, max_top_k = _top_k_top_p(params, random_rows, vocab_size, device)
    min_ps = [0.0 if g else sp.min_p for sp, g in zip(params, greedy)]
    requested = [sp.logprobs for sp in params if sp.logprobs is not None]
    (banned_rows, banned_ids), (stop_rows, stop_ids) = _banned_tokens(params, output_token_ids, vocab_size)
    banned = grammar_stops = None
    if banned_rows:
        banned = (_to_device(banned_rows, torch.int64, device), _to_device(banned_ids, torch.int64, device))
    if stop_rows:
        grammar_stops = (_to_device(stop_rows, torch.int64, device), _to_device(stop_ids, torch.int64, device))
    return SamplingMetadata(
        temperature=_to_device([0.0 if g else sp.temperature for sp, g in zip(params, greedy)], torch.float32, device),
        all_greedy=all(greedy),
        all_random=not any(greedy),
        filter_rows=filter_rows,
        top_k=top_k,
        top_p=top_p,
        max_top_k=max_top_k,
        min_p=_to_device(min_ps, torch.float32, device) if max(min_ps, default=0.0) > SAMPLING_EPS else None,
        # A greedy row never draws, so its generator stays untouched.
        generators={i: gen for i, gen in enumerate(generators) if gen is not None and not greedy[i]},
        max_num_logprobs=max(requested) if requested else None,
        logprob_token_ids=_listed_token_ids(params, device) if requested else None,
        allowed_token_ids_mask=_allowed_mask(params, vocab_size, device),
        banned_token_indices=banned,
        min_tokens_grammar_stops=grammar_stops,
        logit_bias=_logit_bias(params, vocab_size, device),
        penalties=_penalties(params, prompt_token_ids, output_token_ids, vocab_size, device, penalty_state),
    )
