"""ModelRunner: SchedulerOutput in, ModelRunnerOutput out. Owns the model, the KV cache
tensors and the runner-side copy of every running request."""

from __future__ import annotations

import gc
import logging
from collections import deque

import numpy as np
import torch

from pagedlm.config import EngineConfig
from pagedlm.engine.messages import ModelRunnerOutput, SchedulerOutput
from pagedlm.engine.sleep_mode import SLEEP_TAGS
from pagedlm.forward_context import set_forward_context
from pagedlm.kernels import ops
from pagedlm.layers.pooler import Pooler
from pagedlm.models.loader import load_model
from pagedlm.models.pipeline import IntermediateTensors
from pagedlm.sample.custom_logits import build_custom_logits
from pagedlm.sample.logprobs import compute_logprobs, gather_logprobs, pinned_copy
from pagedlm.sample.metadata import build_sampling_metadata
from pagedlm.sample.sampler import Sampler
from pagedlm.structured_output.apply import apply_grammar_bitmask
from pagedlm.worker import memory, profile_run, step_extras
from pagedlm.worker.distributed import (
    broadcast_from_output_rank,
    get_parallel_state,
    is_first_pp_rank,
    is_output_rank,
    pp_recv,
    pp_send,
)
from pagedlm.worker.cuda_graphs import CUDAGraphRunner, capture_sizes
from pagedlm.worker.graph_sampling import GraphSampler
from pagedlm.worker.inflight_step import InflightStep, concat_logprobs_lists, logprobs_lists
from pagedlm.worker.input_batch import CachedRequestState, StepInputs, build_step_inputs
from pagedlm.worker.persistent_batch import PersistentBatch
from pagedlm.worker.step_buffers import StepBuffers

logger = logging.getLogger(__name__)


class ModelRunner:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.device = torch.device(config.device_config.device)
        self.block_size = config.cache_config.block_size
        ops.use_backend("triton" if self.device.type == "cuda" else "torch")
        memory.use_expandable_segments(self.device)  # before the weights take their memory
        torch.manual_seed(config.model_config.seed)
        self.model = load_model(config.model_config, self.device.type)
        self.vocab_size = config.model_config.vocab_size
        # vLLM's custom logits processors (None without any): told of every row change by the
        # persistent batch, applied by the sampler.
        self.custom_logits = build_custom_logits(config, self.device)
        self.sampler = Sampler(self.custom_logits, config.model_config.logprobs_mode)
        pooler_config = config.model_config.pooler_config
        # runner="pooling": finished prompts are pooled into embeddings instead of sampled.
        self.pooler = None
        if pooler_config is not None:  # a classifier's head (its `classify`) runs in the pooler
            self.pooler = Pooler(pooler_config, getattr(self.model, "classify", None))
        self.requests: dict[str, CachedRequestState] = {}
        # Seeded requests preempted (to be recomputed): their generators, until they resume or end.
        self._paused_generators: dict[str, torch.Generator] = {}
        self.kv_caches: list[torch.Tensor] = []
        self.num_blocks = 0
        self.sleep_level = 0  # sleep mode: the level of the current sleep, 0 when awake
        self.sleeping_tags: set[str] = set()  # the parts still asleep: "weights", "kv_cache"
        self._discarded: list[tuple[torch.nn.Parameter, torch.Size]] = []  # level 2: the weights' shapes
        sched = config.scheduler_config
        # Verify graphs pad a step with up to one padding sequence per request (verify_graphs.py).
        max_seq_slots = sched.max_num_seqs * (2 if config.speculative_config is not None else 1)
        self.buffers = StepBuffers(max(sched.max_num_batched_tokens, sched.max_num_seqs), max_seq_slots,
                                   -(-sched.max_model_len // self.block_size), self.device)
        # One row per running request, updated by each step's diff (block tables, penalty counts).
        self.batch = PersistentBatch(sched.max_num_seqs, sched.max_model_len + 1,
                                     -(-sched.max_model_len // self.block_size), self.vocab_size, self.device,
                                     observer=self.custom_logits)
        self.lora = self._make_lora_manager()  # wraps the target layers before memory is profiled
        self.graph_runner: CUDAGraphRunner | None = None
        self.verify_graphs = None  # speculative verify steps' graphs (spec_decode/verify_graphs.py)
        self.graph_sampler: GraphSampler | None = None  # lm_head + plain sampling per decode graph
        self._graph_size: int | None = None  # the decode graph size the last _forward replayed
        # How each forward ran (Worker.runtime_stats): a graph replay, or eagerly with/without prefill.
        self.forward_counts = {"graph": 0, "eager_decode": 0, "eager_prefill": 0}
        # Positions, slots and block tables derived on the device from the persistent batch
        # (the host sends rows and counts); on CPU numpy on the host is as fast.
        self.device_step_prep = self.device.type == "cuda"
        self._inflight: deque[InflightStep] = deque()
        self._deferred: tuple | None = None  # a launched step waiting for its grammar bitmask
        # Pipeline parallelism: only the last stage samples; every rank learns the sampled
        # tokens from the next SchedulerOutput (engine/batch_queue.py), so no stage waits on another's sampling.
        self._tokens_from_scheduler = get_parallel_state().pp_size > 1
        self.spec = None  # speculative decoding's seam (pagedlm.spec_decode.spec_runner)
        if config.speculative_config is not None:
            from pagedlm.spec_decode.spec_runner import SpecDecodeRunner

            self.spec = SpecDecodeRunner(self)
        # --enable-prompt-embeds (checked at start-up: one pipeline stage, no speculation, a
        # generative model whose forward takes inputs_embeds).
        self.has_prompt_embeds = config.model_config.enable_prompt_embeds
        # requests whose prompt rows given as embeddings are not all computed yet
        self._embeds_pending: set[str] = set()

    # ---- start-up -------------------------------------------------------------------
    def _make_lora_manager(self):
        if self.config.lora_config is None:
            return None
        from pagedlm.lora.manager import LoRAManager

        return LoRAManager(self.model, self.config.lora_config, self.config.model_config.hf_config,
                           self.buffers.max_tokens, self.device, self.config.model_config.torch_dtype)

    def determine_num_blocks(self) -> int:
        override = self.config.cache_config.num_gpu_blocks_override
        if override is not None:
            num_blocks = override
        elif not self.model.attention_layers():
            num_blocks = memory.no_kv_num_blocks(self.config)
        elif self.device.type == "cuda":
            num_blocks = memory.gpu_num_blocks(self.config, self._profile_run, self._graph_memory)
        else:
            num_blocks = memory.cpu_num_blocks(self.config)
        if self.spec is not None and override is None:  # the draft's cache shares the budget
            num_blocks = self.spec.share_kv_budget(num_blocks)
        memory.check_max_model_len_fits(self.config, num_blocks)
        return num_blocks

    def _profile_run(self) -> int:
        """The start-up profile forward and sampling (``profile_run.profile_run``); returns the
        bytes of the scratch KV cache it ran over."""
        return profile_run.profile_run(self)

    def initialize_kv_cache(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        dtype = memory.kv_cache_dtype(self.config)
        for attn in self.model.attention_layers():
            cache = memory.zeroed_kv_cache((2, num_blocks, self.block_size, attn.num_kv_heads, attn.head_dim),
                                           dtype, self.device)
            attn.kv_cache = cache
            self.kv_caches.append(cache)
        if self.spec is not None:
            self.spec.proposer.initialize_kv_cache(num_blocks)
        logger.info("KV cache: %d blocks of %d tokens = %d tokens (%s)", num_blocks, self.block_size,
                    num_blocks * self.block_size, str(dtype).removeprefix("torch."))

    def decode_graph_sizes(self) -> list[int]:
        """The decode batch sizes captured as CUDA graphs (--cuda-graph-sizes, the compilation
        config, else vLLM's default list up to max_num_seqs); empty: none."""
        chosen = self.config.device_config.cuda_graph_sizes
        return capture_sizes(self.config.scheduler_config.max_num_seqs) if chosen is None else list(chosen)

    def warm_up(self) -> None:
        """Capture the decode CUDA graphs once the KV cache exists (GPU, unless enforce_eager)."""
        self._capture_graphs()

    def ready(self) -> None:
        """Start-up is over (graphs captured, the engine's warm-up steps run: engine/warm_up.py).
        Re-seed the sampling generator, so that the first requests draw the same numbers
        whether or not warm-up steps sampled; arm --calculate-kv-scales, so that the first real
        batch, not a warm-up one, sets the fp8 cache's scales."""
        torch.manual_seed(self.config.model_config.seed)
        if self.config.cache_config.calculate_kv_scales:
            for attn in self.model.attention_layers():
                attn.calculate_kv_scales = True

    def _graph_sizes(self) -> list[int]:
        """The decode graph sizes this runner captures; empty: it runs every step eagerly."""
        sizes = self.decode_graph_sizes()
        # Pooling runs whole prompts only: decode graphs would never replay. Pipeline stages
        # exchange tensors between graph replays; those steps run eagerly. A model may run
        # eagerly only (the transformers backend: its forward is transformers' code).
        if self.device.type == "cuda" and not self.config.device_config.enforce_eager and sizes and self.pooler is None \
                and get_parallel_state().pp_size == 1 and (self.spec is None or self.spec.allows_target_graphs) \
                and getattr(self.model, "supports_cuda_graphs", True):
            return sizes
        return []

    def _samples_in_graphs(self) -> bool:
        # Sampled ids are broadcast under TP (eager there). Speculation samples through
        # these graphs in decode steps without drafts (e.g. paused by disable_by_batch_size).
        # Custom logits processors run in the eager Sampler only.
        return get_parallel_state().world_size == 1 and self.custom_logits is None

    def _capture_graphs(self, largest_only: bool = False) -> None:
        """Every CUDA graph the steps replay. ``largest_only``: each ladder (decode, verify, a
        draft's chain) its largest size alone, which holds what the whole ladder holds: the
        start-up's measurement before the KV cache is sized (profile_run.graph_memory)."""
        sched, sizes = self.config.scheduler_config, self._graph_sizes()
        if sizes:
            sizes = sizes[-1:] if largest_only else sizes
            self.graph_runner = CUDAGraphRunner(self.model, self.buffers, sizes, sched.max_model_len)
            self.graph_runner.capture()
            if self.spec is not None:
                self.verify_graphs = self.spec.capture_verify_graphs(self.graph_runner.pool, largest_only)
                # a draft model's, after the target's it mirrors
                self.spec.capture_proposer_graphs(largest_only=largest_only)
            if self._samples_in_graphs():
                sampler = GraphSampler(self.model, self.graph_runner.outputs, self.graph_runner.pool,
                                       sched.max_num_seqs, self.device)
                self.graph_sampler = sampler if sampler.capture() else None

    def _graph_memory(self) -> int:
        """The bytes the CUDA graphs will hold (``profile_run.graph_memory``)."""
        return profile_run.graph_memory(self)

    # ---- sleep mode (vLLM's LLM.sleep / wake_up) ---------------------------------------
    # The decode CUDA graphs hold the addresses of the weights and of the KV cache; both move
    # on sleep, so sleep drops the graphs (and their memory pool) and the wake-up that makes
    # the runner whole again captures them afresh. No step runs while the runner sleeps (the
    # engine core refuses requests then).
    def sleep(self, level: int = 1) -> None:
        """Level 1: weights to (pinned) host memory, KV cache freed. Level 2: weights
        discarded too (registered buffers, e.g. rotary tables, are kept on the host); wake_up
        then leaves zeros and ``reload_weights`` must load the weights again. On CPU, level 1
        keeps the weights where they are."""
        if level not in (1, 2):
            raise ValueError(f"sleep level must be 1 or 2, got {level!r}")
        if self.sleeping_tags:
            return
        self._drop_graphs()
        for attn in self.model.attention_layers():
            attn.kv_cache = None
        self.kv_caches = []
        on_cuda = self.device.type == "cuda"
        if level == 2:  # storage freed; the shapes kept for wake_up
            self._discarded = [(param, param.shape) for param in self.model.parameters()]
            for param, _ in self._discarded:
                param.data = torch.empty(0, dtype=param.dtype, device=param.device)
        if on_cuda:  # the buffers (and at level 1 the weights) wait in pinned host memory
            self.model._apply(pinned_copy)
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        self.sleep_level = level
        self.sleeping_tags = set(SLEEP_TAGS)
        logger.info("Sleeping (level %d): KV cache freed, weights %s", level,
                    "discarded" if level == 2 else "offloaded to host memory" if on_cuda else "kept in place (CPU)")

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Restore ``tags`` ("weights", "kv_cache"; None: both). The KV cache comes back
        zeroed; the CUDA graphs are captured again once neither part sleeps."""
        tags = list(SLEEP_TAGS) if tags is None else list(tags)
        unknown = sorted(set(tags) - set(SLEEP_TAGS))
        if unknown:
            raise ValueError(f"unknown wake_up tags {unknown}; expected 'weights' and/or 'kv_cache'")
        if "weights" in tags and "weights" in self.sleeping_tags:
            device = self.device
            for param, shape in self._discarded:  # zeros until reload_weights
                param.data = torch.zeros(shape, dtype=param.dtype, device=device)
            self._discarded = []
            if device.type == "cuda":
                self.model._apply(lambda t: t.to(device, non_blocking=True))
                torch.cuda.synchronize()
            self.sleeping_tags.discard("weights")
        if "kv_cache" in tags and "kv_cache" in self.sleeping_tags:
            self.initialize_kv_cache(self.num_blocks)
            self.sleeping_tags.discard("kv_cache")
        if not self.sleeping_tags and self.sleep_level:
            self.sleep_level = 0
            self._capture_graphs()  # the weights and the cache are at new addresses

    def reload_weights(self) -> None:
        """Load the checkpoint's weights again into the model (after a level-2 sleep;
        vLLM's ``collective_rpc("reload_weights")``)."""
        from pagedlm.models.loader import reload_weights

        if "weights" in self.sleeping_tags:
            raise RuntimeError("reload_weights: the weights are asleep; wake_up(tags=['weights']) first")
        reload_weights(self.model, self.config.model_config)

    def _drop_graphs(self) -> None:
        self.graph_runner = None
        self.verify_graphs = None
        self.graph_sampler = None
        self._graph_size = None
        if self.spec is not None:
            self.spec.drop_proposer_graphs()
        # Graphs held in reference cycles (a draft's capture closures) die now: a CUDA graph
        # destroyed by a garbage collection during a later capture invalidates that capture.
        gc.collect()

    # ---- one step ---------------------------------------------------------------------
    def _update_states(self, sched: SchedulerOutput) -> None:
        for req_id in sched.preempted_req_ids:  # recomputed later: a seeded stream goes on where it was
            state = self.requests.pop(req_id, None)
            if state is not None and state.generator is not None:
                self._paused_generators[req_id] = state.generator
            self.batch.remove(req_id)
            self._embeds_pending.discard(req_id)
        for req_id in sched.finished_req_ids:
            self.requests.pop(req_id, None)
            self._embeds_pending.discard(req_id)
            self._paused_generators.pop(req_id, None)
            self.batch.remove(req_id)
        # New requests fill the holes first (lowest row first), then the last rows fill the
        # holes left: vLLM's order, so custom logits processors get the same BatchUpdate.
        for data in sched.scheduled_new_reqs:
            state = CachedRequestState.from_new(data, self.device, self._paused_generators.pop(data.req_id, None))
            self.requests[data.req_id] = state
            if state.prompt_embeds is not None:
                self._embeds_pending.add(data.req_id)
            # The runner's own lists: the output list is the live one custom processors read.
            self.batch.add(data.req_id, state.prompt_token_ids, state.output_token_ids, data.block_ids,
                           data.num_computed_tokens, None if data.pooling_params else data.sampling_params)
        self.batch.condense()
        if self.custom_logits is not None:
            self.custom_logits.begin_step(self.batch.num_rows)
        if self.spec is not None:  # rejected drafts' blocks went back to the pool
            self.spec.roll_back(sched, self.requests)
        for data in sched.scheduled_cached_reqs:
            state = self.requests[data.req_id]
            state.block_ids.extend(data.new_block_ids)
            state.num_computed_tokens = data.num_computed_tokens
            if data.new_token_ids is not None:
                tail = _append_missing_tokens(state, data.new_token_ids, data.num_computed_tokens
                                              + sched.num_scheduled_tokens[data.req_id])
                row = np.array([self.batch.row_of[data.req_id]])
                for token_id in tail:
                    self.batch.append_sampled(row, np.array([token_id]))
            if data.new_block_ids:
                self.batch.append_blocks(self.batch.row_of[data.req_id], data.new_block_ids)
        if sched.scheduled_cached_reqs:
            cached = sched.scheduled_cached_reqs
            self.batch.num_computed_tokens[self.batch.rows_of([d.req_id for d in cached])] = np.fromiter(
                (d.num_computed_tokens for d in cached), dtype=np.int32, count=len(cached))
        if self.lora is not None:
            self.lora.update_requests(sched)
        if self.spec is not None:
            self.spec.update_states(sched, self.requests)

    def _call_model(self, input_ids: torch.Tensor, positions: torch.Tensor,
                    intermediate: IntermediateTensors | None = None,
                    token_type_ids: torch.Tensor | None = None,
                    inputs_embeds: torch.Tensor | None = None) -> torch.Tensor | IntermediateTensors:
        if token_type_ids is not None:  # (encoders only: no pipeline stages)
            return self.model(input_ids, positions, token_type_ids=token_type_ids)
        if inputs_embeds is not None:  # (prompt embeds: one stage, checked at start-up)
            return self.model(input_ids, positions, inputs_embeds=inputs_embeds)
        if get_parallel_state().pp_size == 1:
            return self.model(input_ids, positions)
        return self.model(input_ids, positions, intermediate)

    def _run_stage(self, input_ids: torch.Tensor, positions: torch.Tensor,
                   token_type_ids: torch.Tensor | None = None,
                   embeds_spans: list[tuple[int, torch.Tensor]] | None = None) -> torch.Tensor | None:
        """This pipeline stage's part of the forward: receive the previous stage's hidden
        states and residual, run, and send on; None on every stage but the last."""
        intermediate = None
        if not is_first_pp_rank():
            shape = (len(input_ids), self.config.model_config.hf_config.hidden_size)
            hidden, residual = pp_recv([shape, shape], self.config.model_config.torch_dtype, self.device)
            intermediate = IntermediateTensors(hidden, residual)
        embeds = step_extras.inputs_embeds(self.model, input_ids, embeds_spans) if embeds_spans else None
        out = self._call_model(input_ids, positions, intermediate, token_type_ids, embeds)
        if isinstance(out, IntermediateTensors):
            pp_send([out.hidden_states, out.residual])
            return None
        return out

    def _forward(self, inputs: StepInputs, rows: np.ndarray) -> torch.Tensor | None:
        """hidden states [T, H] for the step (None on a pipeline stage but the last):
        through a CUDA graph for decode-only steps and speculative verify steps that fit one,
        else eagerly. Either way the inputs reach the device in one copy, and input tokens
        still on the device (the last step's samples) are filled in there."""
        num_seqs, num_tokens = len(inputs.seq_lens), len(inputs.input_ids)
        max_query_len = int(np.diff(inputs.query_start_loc).max())
        graphs, shape = None, None
        # Prompt rows given as embeddings run eagerly (a decode graph embeds token ids); the
        # decode steps after such a prompt read token ids only and replay graphs as usual.
        embeds_spans = step_extras.take_embeds_spans(self.requests, self._embeds_pending, inputs)
        for candidate in (self.graph_runner, self.verify_graphs):  # decode steps, verify steps
            if embeds_spans:
                break
            if candidate is not None and (shape := candidate.shape_for(num_seqs, max_query_len)) is not None:
                graphs = candidate
                break
        self.forward_counts["graph" if shape else "eager_decode" if max_query_len == 1 else "eager_prefill"] += 1
        padded = shape.num_tokens if shape else num_tokens
        padded_seqs, pad_len = (shape.num_seqs, shape.pad_query_len) if shape else (num_seqs, 1)
        self._graph_size = shape.size if shape and graphs is self.graph_runner else None
        if self.device_step_prep:
            self.buffers.stage_rows(inputs, rows, padded, padded_seqs, pad_len)
        else:
            self.buffers.stage(inputs, padded, padded_seqs, pad_len)
        if inputs.pending_req_ids:
            prev = self._inflight[-1]
            self.buffers.stage_pending_sources([prev.row_of[r] for r in inputs.pending_req_ids])
        self.buffers.upload(padded_seqs, with_tables=not self.device_step_prep)
        if self.device_step_prep:
            self.buffers.prepare(self.batch.block_table_dev, padded, padded_seqs, num_seqs, self.block_size)
        if inputs.pending_req_ids:
            self.buffers.fill_pending(len(inputs.pending_req_ids), self._inflight[-1].sampled)
        if shape is not None:
            return graphs.replay(shape.size, num_tokens)
        input_ids, positions, meta = self.buffers.device_inputs(
            num_tokens, num_seqs, max_query_len, int(inputs.seq_lens.max()), num_tokens)
        token_types = step_extras.token_type_ids(self.model, self.requests, inputs, self.device)
        with set_forward_context(meta):
            return self._run_stage(input_ids, positions, token_types, embeds_spans)

    @torch.inference_mode()
    def execute_model(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        """Run a step and wait for its sampled tokens."""
        self.launch(sched)
        return self.take_output()

    @torch.inference_mode()
    def launch(self, sched: SchedulerOutput) -> None:
        """Start a step on the device without waiting for it; take_output() collects it.
        At most one earlier step may still be in flight: its samples feed this step's inputs."""
        self._update_states(sched)
        if sched.total_num_scheduled_tokens == 0:
            self._inflight.append(InflightStep(ModelRunnerOutput(req_ids=[], sampled_token_ids=[])))
            return
        if self._inflight and not self._inflight[-1].resolved and not self._tokens_from_scheduler and any(
                self.requests[r].needs_history for r in sched.num_scheduled_tokens):
            self._inflight[-1].resolve(self.requests, self.batch)  # bad words, min_tokens need the last token
        rows = self.batch.rows_of(list(sched.num_scheduled_tokens))
        inputs = self._build_inputs(sched, rows)
        request_errors = {}
        if self.lora is not None:  # the step's token -> adapter slot mapping
            request_errors = self.lora.prepare_step(inputs.req_ids, inputs.query_start_loc)
        hidden = self._forward(inputs, rows)  # [T, hidden]; None on a pipeline stage but the last
        step = InflightStep(ModelRunnerOutput(req_ids=inputs.req_ids, sampled_token_ids=[[] for _ in inputs.req_ids],
                                              request_errors=request_errors))
        if self.spec is not None:
            self.spec.after_forward(inputs, hidden)
        if inputs.sample_rows and self.pooler is not None:
            self._pool(hidden, inputs, step.output)
        elif inputs.sample_rows and self.spec is not None and self.spec.verifies(inputs):
            self.spec.sample(hidden, inputs, step, sched)  # drafts to verify: the rejection sampler
        elif inputs.sample_rows and not self._sample_in_graph(inputs, step, sched, rows):
            self._sample(hidden, inputs, step, sched)
        if inputs.prompt_logprob_spans and hidden is not None:
            self._prompt_logprobs(hidden, inputs, step.output)
        for state, num in zip((self.requests[r] for r in inputs.req_ids), sched.num_scheduled_tokens.values()):
            state.num_computed_tokens += num
        self.batch.num_computed_tokens[rows] += np.diff(inputs.query_start_loc)
        self._inflight.append(step)

    def _build_inputs(self, sched: SchedulerOutput, rows: np.ndarray) -> StepInputs:
        def build() -> StepInputs:
            return build_step_inputs(self.requests, sched.num_scheduled_tokens, self.block_size,
                                     None if self.device_step_prep else self.batch.block_tables(rows),
                                     host_slots=not self.device_step_prep)
        if self.spec is None:
            return build()
        with self.spec.append_drafts(self.requests):  # drafts are input tokens of this step
            return build()

    @torch.inference_mode()  # under async scheduling the worker calls it alone: penalty counts update in place
    def take_output(self) -> ModelRunnerOutput:
        """The oldest launched step's output (waits for its sampled ids)."""
        step = self._inflight.popleft()
        step.resolve(self.requests, self.batch)
        if self.spec is not None:
            self.spec.propose(step.output, self.requests)
        return step.output

    def _sample(self, hidden: torch.Tensor | None, inputs: StepInputs, step: InflightStep,
                sched: SchedulerOutput) -> None:
        states = [self.requests[inputs.req_ids[i]] for i in inputs.sample_rows]
        logits = None
        if hidden is not None:  # the last pipeline stage
            # Already on the device: a pageable host copy here would wait for the forward pass.
            indices = self.buffers.logits_indices(len(inputs.sample_rows))
            logits = self.model.compute_logits(hidden.index_select(0, indices))  # [S, V], a TP collective
        step.row_of = {s.req_id: row for row, s in enumerate(states)}
        step.rows = inputs.sample_rows
        if sched.grammar_deferred:  # sample_deferred() finishes once the bitmask is known
            self._deferred = (logits, states, step, sched.structured_output_request_ids)
            return
        self._sample_logits(logits, states, step, sched.structured_output_request_ids, sched.grammar_bitmask)

    @torch.inference_mode()
    def sample_deferred(self, bitmask: np.ndarray) -> None:
        """(async scheduling) sample the launched step whose grammar bitmask came after launch."""
        if self._deferred is None:  # the scheduler and the runner disagree on which rows sample
            raise RuntimeError("sample_deferred: no launched step is waiting for a grammar bitmask")
        logits, states, step, req_ids = self._deferred
        self._deferred = None
        self._sample_logits(logits, states, step, req_ids, bitmask)

    def _sample_logits(self, logits: torch.Tensor | None, states: list[CachedRequestState], step: InflightStep,
                       grammar_req_ids: list[str], bitmask: np.ndarray | None) -> None:
        """The output rank samples; with several ranks it broadcasts the ids, so every rank's
        copy of each request (and the on-device feedback of async scheduling) stays identical."""
        sampled = None
        # Penalised rows read (and bump) their token counts on the device: no padding, no sync.
        batch_rows = self.batch.rows_of([s.req_id for s in states])
        rows = self._penalty_rows(batch_rows)
        if logits is not None and is_output_rank():
            if bitmask is not None:  # structured outputs: only grammar-allowed tokens
                logits = apply_grammar_bitmask(logits, bitmask, [step.row_of[r] for r in grammar_req_ids])
            metadata = build_sampling_metadata(
                [s.sampling_params for s in states], [s.prompt_token_ids for s in states],
                [s.output_token_ids for s in states], [s.generator for s in states], self.vocab_size, self.device,
                self.batch.penalty_tensors(rows) if rows is not None else None,
            )
            metadata.batch_rows = batch_rows
            result = self.sampler(logits, metadata)
            sampled, step.logprobs = result.sampled_token_ids, result.logprobs
        if get_parallel_state().world_size > 1 and not self._tokens_from_scheduler:
            if sampled is None:
                sampled = torch.empty(len(states), dtype=torch.long, device=self.device)
            broadcast_from_output_rank(sampled)
        if rows is not None and sampled is not None:
            self.batch.record_sampled(rows, sampled)
        step.sampled = sampled
        step.num_logprobs = [s.sampling_params.logprobs for s in states]
        step.start_host_copy()
        if self._tokens_from_scheduler:
            step.feeds_states = False  # each token comes back with the request's next step
            return
        for state in states:
            state.num_pending += 1

    def _sample_in_graph(self, inputs: StepInputs, step: InflightStep, sched: SchedulerOutput,
                         rows: np.ndarray) -> bool:
        """A decode-graph step whose rows all sample plainly: lm_head and sampling replay as
        the size's sampling graph. False (nothing done) for every other step."""
        size = self._graph_size
        if (self.graph_sampler is None or size not in self.graph_sampler.graphs or sched.structured_output_request_ids
                or inputs.prompt_logprob_spans or len(inputs.sample_rows) != len(inputs.req_ids)
                or not self.batch.plain[rows].all()):
            return False
        step.sampled = self.graph_sampler.replay(size, self.batch.temperature[rows])
        step.row_of = {r: i for i, r in enumerate(inputs.req_ids)}
        step.rows = inputs.sample_rows
        step.num_logprobs = [None] * len(inputs.req_ids)
        step.start_host_copy()
        for req_id in inputs.req_ids:
            self.requests[req_id].num_pending += 1
        return True

    def _penalty_rows(self, rows: np.ndarray) -> torch.Tensor | None:
        """Device tensor of the sampling rows' persistent ``rows``, when any row is penalised."""
        if not self.batch.penalised[rows].any():
            return None
        rows_t = torch.from_numpy(rows)
        return rows_t.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else rows_t

    def _pool(self, hidden: torch.Tensor, inputs: StepInputs, output: ModelRunnerOutput) -> None:
        states = [self.requests[inputs.req_ids[i]] for i in inputs.sample_rows]
        results = self.pooler(hidden, inputs.query_start_loc, inputs.sample_rows, [s.pooling_params for s in states])
        for state, result in zip(states, results):
            output.pooler_output[state.req_id] = result

    def _prompt_logprobs(self, hidden: torch.Tensor, inputs: StepInputs, output: ModelRunnerOutput) -> None:
        """A chunk's prompt logprobs, max_num_seqs rows at a time: the [rows, vocab] logits and
        logprobs of a whole chunk (up to max_num_batched_tokens rows: 16 GiB at 16,384 rows of a
        128k vocabulary) would outgrow what the start-up profile reserved, whose sampling pass
        covers max_num_seqs rows (``_profile_sampling``)."""
        rows = self.config.scheduler_config.max_num_seqs
        for i, (first, count, target_pos) in inputs.prompt_logprob_spans.items():
            state = self.requests[inputs.req_ids[i]]
            k = state.sampling_params.prompt_logprobs
            targets = torch.tensor(state.token_ids[target_pos : target_pos + count], device=self.device)
            parts = []
            for lo in range(0, count, rows):
                logits = self.model.compute_logits(hidden[first + lo : first + min(count, lo + rows)])
                # Always raw logprobs, whatever --logprobs-mode says: vLLM's runner does the same.
                tensors = gather_logprobs(compute_logprobs(logits.float()), targets[lo : lo + rows], k).to_cpu()
                parts.append(logprobs_lists(tensors, k))
            output.prompt_logprobs[state.req_id] = concat_logprobs_lists(parts)


def _append_missing_tokens(state: CachedRequestState, new_token_ids: list[int], num_tokens: int) -> list[int]:
    """(pipeline parallelism) extend the request to ``num_tokens`` tokens with the tail of
    ``new_token_ids``, the step's tokens past its prompt, as the scheduler sent them; returns
    the tokens appended."""
    missing = num_tokens - len(state.token_ids)
    if missing > len(new_token_ids):
        raise RuntimeError(f"request {state.req_id}: the runner lacks {missing} tokens, the step brought "
                           f"{len(new_token_ids)}")
    if missing <= 0:
        return []
    tail = new_token_ids[len(new_token_ids) - missing:]
    state.token_ids.extend(tail)
    state.output_token_ids.extend(tail)
    return tail
