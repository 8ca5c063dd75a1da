"""One interface for every proposer; the runner's spec seam builds one from the config.

A proposer has: ``num_lookahead_tokens`` (KV slots it writes past the verified tokens),
``kv_bytes_per_block()`` and ``initialize_kv_cache(num_blocks)`` (a draft model's own cache,
indexed by the target's block ids), ``after_target_forward(inputs, hidden)`` (sees every
target step: a draft model mirrors it into its cache, EAGLE keeps the hidden states), and
``propose(states) -> (drafts per request, draft distributions per request or None)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pagedlm.spec_decode.config import SpeculativeConfig

if TYPE_CHECKING:
    from pagedlm.worker.model_runner import ModelRunner


def build_proposer(config: SpeculativeConfig, runner: "ModelRunner") -> Any:
    if config.method == "ngram":
        from pagedlm.spec_decode.ngram import NgramProposer

        return NgramProposer(config)
    if config.method == "draft_model":
        from pagedlm.spec_decode.draft_model import DraftModelProposer

        return DraftModelProposer(config, runner)
    from pagedlm.spec_decode.eagle import EagleProposer

    return EagleProposer(config, runner)
