"""EAGLE and EAGLE-3 proposers: a one-layer head drafts from the target's hidden states.

Checkpoint layouts are the ones vLLM loads (SafeAILab EAGLE, EAGLE-3 / speculators exports):
- EAGLE: ``fc.weight`` [H, 2H] over cat(embed(token), target hidden), ``layers.N.*`` Llama
  decoder layers (layer 0 without ``input_layernorm``), no final norm; the embedding and the
  LM head are the target's.
- EAGLE-3: ``midlayer.*`` (q/k/v read cat(norm(embed), hidden_norm(hidden)), 2H wide),
  ``fc.weight`` [H, 3H_target] over three target layers' hidden states, ``norm.weight``, its
  own ``lm_head.weight`` over ``draft_vocab_size`` tokens with ``d2t`` (draft id -> target id
  offset); ``embed_tokens`` optional (else the target's).

The head's KV at position p is built from (token p + 1, target feature at p). After each
step the head runs over the step's accepted positions (every request, so its cache stays
valid for later prefix hits) with the tokens shifted by one (the newest sampled token last);
its last row gives the first draft, then k - 1 chained steps feed each draft with the head's
own output feature.

Under async scheduling the next step is launched (its forward run, a CUDA graph's static
output overwritten) before a step is collected and proposed from. So everything the pass
over a step reads is taken right after that step's target forward (``StepFeatures``: the
features, the step's host arrays, its draft counts and request objects) and queued; the
collected step's proposal takes its own entry. A request preempted or aborted while its
step was in flight still gets the head's KV for that step's positions (their target KV
stays in the prefix cache, which its recompute or another request may hit).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pagedlm.attention.metadata import AttentionMetadata
from pagedlm.config import ConfigError, attention_shape, load_hf_config
from pagedlm.forward_context import set_forward_context
from pagedlm.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from pagedlm.layers.linear import QKVParallelLinear, default_weight_loader
from pagedlm.layers.norm import RMSNorm
from pagedlm.layers.rotary import RotaryEmbedding
from pagedlm.models.llama import LlamaAttention, LlamaDecoderLayer, LlamaMLP, rope_settings
from pagedlm.spec_decode.config import SpeculativeConfig
from pagedlm.spec_decode.draft_model import ChainDrafter, kv_cache_bytes, make_kv_caches

if TYPE_CHECKING:
    from pagedlm.engine.messages import ModelRunnerOutput
    from pagedlm.worker.input_batch import CachedRequestState, StepInputs
    from pagedlm.worker.model_runner import ModelRunner

_STACKED = [(".q_proj", ".qkv_proj", "q"), (".k_proj", ".qkv_proj", "k"), (".v_proj", ".qkv_proj", "v"),
            (".gate_proj", ".gate_up_proj", 0), (".up_proj", ".gate_up_proj", 1)]


def _rotary(config: Any, max_position: int) -> RotaryEmbedding:
    _, _, head_dim = attention_shape(config)
    base, rope_type, params, original_max = rope_settings(config)
    return RotaryEmbedding(head_dim, max_position, base, rope_type, params, original_max,
                           config.max_position_embeddings)


class EagleHead(nn.Module):
    """EAGLE(-1): fc(cat(embed, target hidden)) -> decoder layers -> hidden (+ residual)."""

    def __init__(self, config: Any, target_hidden_size: int, max_position: int) -> None:
        super().__init__()
        self.fc = nn.Linear(config.hidden_size + target_hidden_size, config.hidden_size, bias=False)
        rotary = _rotary(config, max_position)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, rotary) for _ in range(config.num_hidden_layers))
        self.layers[0].input_layernorm = nn.Identity()  # EAGLE drops the first layer's input norm
        self.embed_tokens: nn.Module | None = None  # the target's

    def prepare_features(self, features: torch.Tensor) -> torch.Tensor:
        return features

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.fc(torch.cat((self.embed_tokens(input_ids), hidden), dim=-1))
        residual = None
        for layer in self.layers:
            h, residual = layer(positions, h, residual)
        h = h + residual
        return h, h  # (for the logits, fed to the next chained step)


class Eagle3Layer(nn.Module):
    """EAGLE-3's first layer: attention over cat(norm(embeds), hidden_norm(hidden))."""

    def __init__(self, config: Any, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config, rotary)
        attn = self.self_attn
        attn.qkv_proj = QKVParallelLinear(2 * config.hidden_size, attn.head_dim, attn.num_heads, attn.num_kv_heads,
                                          getattr(config, "attention_bias", False))
        self.mlp = LlamaMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.hidden_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.norm_before_residual = bool(getattr(config, "norm_before_residual", False))

    def forward(self, positions: torch.Tensor, embeds: torch.Tensor,
                hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embeds = self.input_layernorm(embeds)
        normed = self.hidden_norm(hidden)
        residual = normed if self.norm_before_residual else hidden
        h = self.self_attn(positions, torch.cat((embeds, normed), dim=-1))
        h, residual = self.post_attention_layernorm(h, residual)
        return self.mlp(h), residual


class Eagle3Head(nn.Module):
    def __init__(self, config: Any, target_hidden_size: int, max_position: int, target_vocab_size: int) -> None:
        super().__init__()
        self.draft_vocab_size = getattr(config, "draft_vocab_size", None) or config.vocab_size
        self.target_vocab_size = target_vocab_size
        rotary = _rotary(config, max_position)
        self.fc = nn.Linear(3 * (getattr(config, "target_hidden_size", None) or target_hidden_size),
                            config.hidden_size, bias=False)
        self.layers = nn.ModuleList([Eagle3Layer(config, rotary)] + [
            LlamaDecoderLayer(config, rotary) for _ in range(config.num_hidden_layers - 1)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = ParallelLMHead(self.draft_vocab_size, config.hidden_size)
        self.register_buffer("d2t", torch.zeros(self.draft_vocab_size, dtype=torch.long))
        self.embed_tokens: nn.Module | None = None  # own when the checkpoint has one, else the target's
        self.own_embed = VocabParallelEmbedding(config.vocab_size, config.hidden_size)

    def prepare_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)  # three target layers' hidden states -> one

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, residual = self.layers[0](positions, self.embed_tokens(input_ids), hidden)
        for layer in self.layers[1:]:
            h, residual = layer(positions, h, residual)
        return self.norm(h, residual)  # (normed for the logits, pre-norm for the next step)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = F.linear(hidden, self.lm_head.weight)  # [N, draft vocab]
        full = logits.new_full((logits.shape[0], self.target_vocab_size), float("-inf"))
        full[:, torch.arange(self.draft_vocab_size, device=logits.device) + self.d2t] = logits
        return full


def _load_head(head: nn.Module, weights: Iterable[tuple[str, torch.Tensor]], eagle3: bool) -> set[str]:
    params = dict(head.named_parameters())
    loaded: set[str] = set()
    for name, tensor in weights:
        name = name.removeprefix("model.")
        if eagle3:
            name = name.replace("midlayer.", "layers.0.")
            if name == "t2d":
                continue
            if name == "d2t":
                head.d2t.copy_(tensor.to(torch.long))
                continue
            name = name.replace("embed_tokens.", "own_embed.")
        elif name.startswith("embed_tokens."):
            continue  # EAGLE shares the target's embedding
        for ckpt, fused, shard in _STACKED:
            if ckpt in name:
                param = params[name.replace(ckpt, fused)]
                param.weight_loader(param, tensor, shard)
                loaded.add(name.replace(ckpt, fused))
                break
        else:
            if name not in params:
                raise ConfigError(f"EAGLE checkpoint tensor {name!r} matches no parameter of the head")
            param = params[name]
            getattr(param, "weight_loader", default_weight_loader)(param, tensor)
            loaded.add(name)
    return loaded


def aux_layer_ids(hf_config: Any, num_target_layers: int) -> list[int]:
    """EAGLE-3's target layers (vLLM's default: 2, L // 2, L - 3; or the config's list)."""
    eagle_config = getattr(hf_config, "eagle_config", None) or {}
    ids = list(eagle_config.get("eagle_aux_hidden_state_layer_ids")
               or (2, num_target_layers // 2, num_target_layers - 3))
    if len(ids) != 3 or not all(0 <= i < num_target_layers for i in ids):
        raise ConfigError(f"EAGLE-3 needs three target layers in [0, {num_target_layers}); got {ids} (set "
                          f"eagle_config.eagle_aux_hidden_state_layer_ids in the head's config.json)")
    return ids


@dataclass
class StepFeatures:
    """One step's inputs to the head's pass, taken right after its target forward."""

    inputs: "StepInputs"  # host arrays built for this step alone (req_ids, query_start_loc, num_computed)
    features: torch.Tensor  # [T, H] (EAGLE-3: [T, 3H]), the head's own copy
    drafts: dict[str, int]  # each request's draft count in this step (a later step rewrites spec_token_ids)
    # The runner's request objects in this step: a request preempted and scheduled again
    # since is a new object, whose blocks and positions are not this step's.
    states: list["CachedRequestState"]


class EagleProposer(ChainDrafter):
    position_offset = -1

    def __init__(self, config: SpeculativeConfig, runner: "ModelRunner") -> None:
        super().__init__(config, runner)
        self.eagle3 = config.method == "eagle3"
        target_cfg = runner.config.model_config
        hf_config = load_hf_config(config.model, target_cfg.trust_remote_code)
        self.model_config = dataclasses.replace(target_cfg, model=config.model, hf_config=hf_config)
        self.head = self._build_head(hf_config, target_cfg)
        self._aux: list[torch.Tensor] = []
        if self.eagle3:
            layers = runner.model.model.layers
            for i in aux_layer_ids(hf_config, len(layers)):
                layers[i].register_forward_pre_hook(self._capture_aux)
        # Steps launched and not yet proposed from, oldest first (two under async scheduling).
        self._steps: deque[StepFeatures] = deque()
        # A graph's static output (EAGLE's final hidden states) is rewritten by the next step's
        # replay, which async scheduling runs before this step is proposed from.
        self._copy_hidden = runner.config.scheduler_config.async_scheduling and not self.eagle3
        self._first: dict[str, int] = {}
        self._first_out: tuple[torch.Tensor, torch.Tensor] | None = None
        self._prev_hidden: torch.Tensor | None = None

    def _build_head(self, hf_config: Any, target_cfg: Any) -> nn.Module:
        from pagedlm.models.loader import _init_dummy, iterate_weights

        target_hidden = target_cfg.hf_config.hidden_size
        dtype, prev = self.model_config.torch_dtype, torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(self.device):
                head = (Eagle3Head(hf_config, target_hidden, target_cfg.max_model_len, target_cfg.vocab_size)
                        if self.eagle3 else EagleHead(hf_config, target_hidden, target_cfg.max_model_len))
        finally:
            torch.set_default_dtype(prev)
        if self.model_config.load_format == "dummy":
            _init_dummy(head, self.model_config.seed + 1)
            loaded = {n for n, _ in head.named_parameters()}
        else:
            loaded = _load_head(head, iterate_weights(self.model_config), self.eagle3)
        target_embed = self.runner.model.model.embed_tokens
        head.embed_tokens = head.own_embed if self.eagle3 and "own_embed.weight" in loaded else target_embed
        expected = {n for n, _ in head.named_parameters() if not n.startswith(("own_embed.", "embed_tokens."))}
        missing = sorted(expected - loaded)
        if missing:
            raise ConfigError(f"EAGLE checkpoint {self.model_config.model!r} is missing weights for: {missing[:8]}")
        return head.eval()

    def _capture_aux(self, module: nn.Module, args: tuple) -> None:
        _, hidden, residual = args[:3]
        self._aux.append(hidden if residual is None else hidden + residual)

    def _attention_layers(self) -> list:
        return [layer.self_attn.attn for layer in self.head.layers]

    def kv_bytes_per_block(self) -> int:
        return kv_cache_bytes(self._attention_layers(), self.block_size, self.model_config.torch_dtype)

    def initialize_kv_cache(self, num_blocks: int) -> None:
        self._aux = []  # the memory profile run's layers (a GPU sizes the cache by a forward)
        make_kv_caches(self._attention_layers(), num_blocks, self.block_size, self.model_config.torch_dtype,
                       self.device)

    def after_target_forward(self, inputs: "StepInputs", hidden: torch.Tensor | None) -> None:
        """Take the step's target features (final hidden states, or EAGLE-3's three layers,
        which the hooks captured into fresh tensors) and what the pass over it reads."""
        # The last forward's three layers (a forward outside a step also runs the hooks).
        features = torch.cat(self._aux[-3:], dim=-1) if self.eagle3 else hidden
        self._aux = []
        if self._copy_hidden:
            features = features.clone()
        states = [self.runner.requests[r] for r in inputs.req_ids]
        self._steps.append(StepFeatures(inputs, features, {s.req_id: len(s.spec_token_ids) for s in states}, states))

    def _take_step(self, output: "ModelRunnerOutput") -> StepFeatures | None:
        """The collected step's entry: its output carries the step's own req_ids list. A step
        that ran no forward (nothing scheduled) has none."""
        for i, step in enumerate(self._steps):
            if step.inputs.req_ids is output.req_ids:
                for _ in range(i + 1):  # (older entries would be steps never collected)
                    self._steps.popleft()
                return step
        return None

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head.compute_logits(hidden) if self.eagle3 else self.runner.model.compute_logits(hidden)

    def before_propose(self, output: "ModelRunnerOutput", states: dict[str, "CachedRequestState"]) -> None:
        """The head over every request's accepted positions of the step (its KV for them),
        tokens shifted by one; each request's last row is kept for its first draft."""
        self._first, self._first_out = {}, None
        step = self._take_step(output)
        plan = None if step is None else self._first_pass_plan(step, output, states)
        if plan is None:
            return
        rows, tokens, positions, qsl, seq_lens, tables, slots, last_rows = plan
        dev = self.device
        meta = AttentionMetadata(
            slot_mapping=torch.from_numpy(slots).to(dev), query_start_loc=torch.from_numpy(qsl).to(dev),
            seq_lens=torch.from_numpy(seq_lens).to(dev), block_tables=torch.from_numpy(tables).to(dev),
            max_query_len=int(np.diff(qsl).max()), max_seq_len=int(seq_lens.max()), num_actual_tokens=len(tokens))
        hidden_in = self.head.prepare_features(step.features.index_select(0, torch.from_numpy(rows).to(dev)))
        with set_forward_context(meta):
            normed, nxt = self.head(torch.from_numpy(tokens).to(dev), torch.from_numpy(positions).to(dev), hidden_in)
        self._first = last_rows
        self._first_out = (normed, nxt)

    def _first_pass_plan(self, step: StepFeatures, output: "ModelRunnerOutput",
                         states: dict[str, "CachedRequestState"]) -> tuple | None:
        inputs, drafts = step.inputs, step.drafts
        rows, tokens, positions, lens, starts, block_lists, last_rows = [], [], [], [], [], [], {}
        for i, req_id in enumerate(inputs.req_ids):
            state, emitted = step.states[i], output.sampled_token_ids[i]  # (output.req_ids is inputs.req_ids)
            lo, n = int(inputs.query_start_loc[i]), int(inputs.query_start_loc[i + 1] - inputs.query_start_loc[i])
            start = int(inputs.num_computed[i])  # positions stay on the device under device step prep
            valid = n - drafts[req_id] + len(emitted) - 1 if emitted else n  # rejected drafts' rows are dropped
            shifted = state.token_ids[start + 1 : start + valid + 1]
            gone = states.get(req_id) is not state
            if gone:  # preempted or aborted after this step was launched: its tokens were not appended
                shifted = (shifted + emitted)[:valid]
            valid = len(shifted)
            if valid == 0:
                continue
            rows.extend(range(lo, lo + valid))
            tokens.extend(shifted)
            positions.extend(range(start, start + valid))
            lens.append(valid)
            starts.append(start)
            # The blocks of this step's positions: a later step only appends blocks or rolls
            # back ones past its computed tokens, which cover these.
            block_lists.append(state.block_ids[: -(-(start + valid) // self.block_size)])
            if not gone:
                last_rows[req_id] = len(rows) - 1
        if not rows:
            return None
        qsl = np.zeros(len(lens) + 1, dtype=np.int32)
        np.cumsum(lens, out=qsl[1:])
        tables = np.zeros((len(block_lists), max(map(len, block_lists))), dtype=np.int32)
        for b, blocks in enumerate(block_lists):
            tables[b, : len(blocks)] = blocks
        pos = np.array(positions, dtype=np.int64)
        token_req = np.repeat(np.arange(len(lens)), lens)
        slots = tables[token_req, pos // self.block_size].astype(np.int64) * self.block_size + pos % self.block_size
        seq_lens = (np.array(starts) + np.array(lens)).astype(np.int32)
        return (np.array(rows, dtype=np.int64), np.array(tokens, dtype=np.int64), pos, qsl, seq_lens, tables, slots,
                last_rows)

    def propose(self, states: list["CachedRequestState"]) -> tuple[list[list[int]], list[torch.Tensor | None]]:
        """Drafts for the requests the pass over the collected step covered (a request that
        sampled in it but is another object now was preempted since: no drafts)."""
        covered = [s for s in states if s.req_id in self._first]
        if len(covered) == len(states):
            return super().propose(states)
        drafts, probs = super().propose(covered)
        by_id = {s.req_id: b for b, s in enumerate(covered)}
        return ([drafts[by_id[s.req_id]] if s.req_id in by_id else [] for s in states],
                [probs[by_id[s.req_id]] if s.req_id in by_id else None for s in states])

    def first_logits(self, states: list["CachedRequestState"]) -> torch.Tensor | None:
        normed, nxt = self._first_out
        idx = torch.tensor([self._first[s.req_id] for s in states], device=self.device)
        self._prev_hidden = nxt.index_select(0, idx)
        return self._logits(normed.index_select(0, idx))

    def chain_step(self, j: int, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        normed, self._prev_hidden = self.head(tokens, positions, self._prev_hidden)
        return self._logits(normed)
