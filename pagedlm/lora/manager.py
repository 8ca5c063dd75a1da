"""The worker side of multi-LoRA: wraps the target layers, keeps adapters in ``max_loras``
device slots (LRU) and ``max_cpu_loras`` host copies (LRU), and turns each step's requests
into the token -> slot mapping the wrappers read.

The scheduler guarantees at most ``max_loras`` distinct adapters per step, so every adapter
of a step fits in a slot: slots held by adapters of this step are never evicted. Copies into
a slot are ordered on the device stream after the previous step's kernels, so a step still
running never sees a slot change under it.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from torch import nn

from pagedlm.config import ConfigError
from pagedlm.engine.messages import SchedulerOutput
from pagedlm.layers.linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from pagedlm.lora import ops as lora_ops
from pagedlm.lora.config import LoRAConfig
from pagedlm.lora.layers import LoRALinear, LoRASlice, StepLoRAState
from pagedlm.lora.peft import SUPPORTED_MODULES, LoRAAdapterError, load_adapter_weights
from pagedlm.lora.request import wire_id

logger = logging.getLogger(__name__)

# One adapter ready for set_slot: wrapper index -> slice index -> (A, B).
Grouped = dict[int, dict[int, tuple[torch.Tensor, torch.Tensor]]]


def _fused_names(mapping: list[tuple[str, str, Any]], leaf: str) -> dict[Any, str]:
    """shard id -> checkpoint projection name for a fused layer (from stacked_params_mapping)."""
    return {sid: ckpt.strip(".") for ckpt, fused, sid in mapping if fused.strip(".") == leaf}


def layer_slices(leaf: str, module: nn.Module, mapping: list[tuple[str, str, Any]]) -> tuple[list[LoRASlice], bool]:
    """(slices, row_parallel) of a target layer; no slices when it is not one."""
    if isinstance(module, QKVParallelLinear):
        names = _fused_names(mapping, leaf)
        if set(names) != {"q", "k", "v"}:
            return [], False
        q, kv = module.q_size, module.kv_size
        return [LoRASlice(names["q"], 0, q, module.tp_rank), LoRASlice(names["k"], q, kv, module.kv_shard),
                LoRASlice(names["v"], q + kv, kv, module.kv_shard)], False
    if isinstance(module, MergedColumnParallelLinear):
        names = _fused_names(mapping, leaf)
        if set(names) != set(range(len(module.local_output_sizes))):
            return [], False
        offsets = np.cumsum([0] + module.local_output_sizes).tolist()
        return [LoRASlice(names[i], offsets[i], size, module.tp_rank)
                for i, size in enumerate(module.local_output_sizes)], False
    if leaf not in SUPPORTED_MODULES:
        return [], False
    if isinstance(module, RowParallelLinear):
        return [LoRASlice(leaf, 0, module.output_size, 0)], True
    if isinstance(module, ColumnParallelLinear) and not module.gather_output:
        return [LoRASlice(leaf, 0, module.output_size_per_partition, module.tp_rank)], False
    return [], False


class LoRAManager:
    def __init__(self, model: nn.Module, config: LoRAConfig, hf_config: Any, max_num_tokens: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.config = config
        self.hf_config = hf_config
        self.state = StepLoRAState(max_num_tokens, device)
        self.wrappers: list[LoRALinear] = []
        self.targets: dict[str, tuple[int, int]] = {}  # HF module name -> (wrapper index, slice index)
        self._wrap(model, device, dtype)
        if not self.targets:
            raise ConfigError(f"{type(model).__name__} has no layers LoRA adapters can target")
        (lora_ops.use_triton if device.type == "cuda" else lora_ops.use_reference)()
        self.host: OrderedDict[int, Grouped] = OrderedDict()  # adapter id -> weights, LRU order
        self.slot_of: OrderedDict[int, int] = OrderedDict()  # adapter id -> device slot, LRU order
        self.free_slots = list(range(config.max_loras - 1, -1, -1))
        self.req_lora: dict[str, dict[str, Any]] = {}  # runner-side requests that use an adapter

    def _wrap(self, model: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
        mapping = list(getattr(model, "stacked_params_mapping", []))
        for path, module in list(model.named_modules()):
            parent, _, leaf = path.rpartition(".")
            slices, row = layer_slices(leaf, module, mapping)
            if not slices:
                continue
            wrapper = LoRALinear(module, slices, row, self.state, self.config.max_loras, self.config.max_lora_rank,
                                 dtype, device)
            setattr(model.get_submodule(parent), leaf, wrapper)
            for i, sl in enumerate(slices):
                self.targets[f"{parent}.{sl.name}"] = (len(self.wrappers), i)
            self.wrappers.append(wrapper)

    # ---- per step ----------------------------------------------------------------------
    def update_requests(self, sched: SchedulerOutput) -> None:
        """Follow the runner's requests: which use an adapter (every step, even an empty one)."""
        for req_id in sched.finished_req_ids | sched.preempted_req_ids:
            self.req_lora.pop(req_id, None)
        for data in sched.scheduled_new_reqs:
            if data.lora_request:
                self.req_lora[data.req_id] = data.lora_request

    def prepare_step(self, req_ids: list[str], query_start_loc: np.ndarray) -> dict[str, str]:
        """Make this step's adapters resident and write the token -> slot mapping (-1: the
        base model) into the buffer the wrappers read. Returns req id -> why for requests
        whose adapter could not be read (the frontend checked it, but a host copy evicted
        by --max-cpu-loras is read from disk again, and the files may be gone or changed):
        their tokens run on the base model and the scheduler fails them; the step and the
        other requests go on."""
        loras = [self.req_lora.get(r) for r in req_ids]
        needed = {wire_id(lora): lora for lora in loras if lora}
        if len(needed) > self.config.max_loras:  # the scheduler's invariant
            raise RuntimeError(f"a step mixes {len(needed)} LoRA adapters, more than max_loras="
                               f"{self.config.max_loras}")
        self.state.active = self.state.always or bool(needed)
        if not self.state.active:
            return {}
        failed: dict[int, str] = {}
        for lora_id, lora in needed.items():
            try:
                self._make_resident(lora, needed)
            except (LoRAAdapterError, OSError) as e:
                logger.error("LoRA adapter %r (id %d) cannot be loaded: %s", lora["name"], lora_id, e)
                failed[lora_id] = f"LoRA adapter {lora['name']!r} could not be loaded: {e}"
        slots = np.array([self.slot_of[wire_id(lora)] if lora and wire_id(lora) not in failed else -1
                          for lora in loras], dtype=np.int32)
        self.state.upload(np.repeat(slots, np.diff(query_start_loc)))
        return {r: failed[wire_id(lora)] for r, lora in zip(req_ids, loras) if lora and wire_id(lora) in failed}

    def _make_resident(self, lora: dict[str, Any], needed: dict[int, Any]) -> None:
        lora_id = wire_id(lora)
        if lora_id in self.slot_of:
            self.slot_of.move_to_end(lora_id)
            return
        weights = self._host_weights(lora)
        if self.free_slots:
            slot = self.free_slots.pop()
        else:  # the least recently used adapter that this step does not need
            victim = next(i for i in self.slot_of if i not in needed)
            slot = self.slot_of.pop(victim)
        for index, wrapper in enumerate(self.wrappers):
            wrapper.set_slot(slot, weights.get(index, {}))
        self.slot_of[lora_id] = slot
        logger.info("LoRA adapter %r (id %d) loaded into device slot %d", lora["name"], lora_id, slot)

    def _host_weights(self, lora: dict[str, Any]) -> Grouped:
        lora_id = wire_id(lora)
        if lora_id in self.host:
            self.host.move_to_end(lora_id)
            return self.host[lora_id]
        try:
            adapter = load_adapter_weights(lora["path"], self.config.max_lora_rank, self.hf_config)
        except (LoRAAdapterError, OSError):
            raise
        except Exception as e:  # noqa: BLE001 - a file changed under us (truncated safetensors, ...)
            raise LoRAAdapterError(f"cannot read the adapter at {lora['path']!r}: {e}") from e
        grouped: Grouped = {}
        for module, (a, b) in adapter.modules.items():
            if module not in self.targets:
                raise LoRAAdapterError(f"LoRA adapter {lora['path']!r} targets {module}, which this model does "
                                       "not have")
            index, slice_index = self.targets[module]
            grouped.setdefault(index, {})[slice_index] = (a, b)
        self.host[lora_id] = grouped
        while len(self.host) > self.config.max_cpu_loras:
            self.host.popitem(last=False)
        return grouped

    def resident_ids(self) -> list[int]:
        return list(self.slot_of)
