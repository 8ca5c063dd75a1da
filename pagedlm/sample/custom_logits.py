"""Custom logits processors (vLLM V1's ``logits_processors``): loading them, and the one seam
between them and the engine.

Loading: the engine config names each processor class by its fully qualified name
("module:Class"), so the list travels to the engine-core process and to every worker as
plain strings; classes given to ``LLM(logits_processors=[...])`` are turned into that name,
and one that cannot be found again by it (a class defined inside a function) is refused at
start-up.

The seam, ``CustomLogits``: the persistent batch reports each row change (removed, added,
moved) as it happens; ``begin_step`` hands the step's changes to every processor as one
``BatchUpdate``; the sampler calls ``apply`` on its logits. Processors index rows of the
persistent batch, while the sampler's logits hold only the rows that sample this step, in
the step's order, so ``apply`` scatters them into a [batch rows, vocab] tensor, runs the
processors and gathers the sampling rows back (rows that do not sample read zeros, and what
a processor writes there is dropped).
"""

from __future__ import annotations

import importlib
from typing import Any, Sequence

import numpy as np
import torch

from pagedlm.config import ConfigError
from pagedlm.sampling_params import SamplingParams
from pagedlm.v1.sample.logits_processor.interface import (
    BatchUpdate,
    LogitsProcessor,
    MoveDirectionality,
)


def fqcn_of(entry: Any) -> str:
    """A processor class or its name -> "module:Qualified.Name"; "module.Class" is read as
    "module:Class". ConfigError for anything else."""
    if isinstance(entry, type):
        return f"{entry.__module__}:{entry.__qualname__}"
    if not isinstance(entry, str) or not entry.strip(". :"):
        raise ConfigError(f"logits_processors entries must be LogitsProcessor classes or 'module:Class' names, "
                          f"got {entry!r}")
    if ":" in entry:
        return entry
    module, _, name = entry.rpartition(".")
    if not module:
        raise ConfigError(f"logits processor {entry!r}: give it as 'module:Class' (e.g. my_pkg.procs:MyProcessor)")
    return f"{module}:{name}"


def load_processor_class(fqcn: str) -> type[LogitsProcessor]:
    """Import "module:Qualified.Name"; ConfigError naming what failed."""
    module_name, _, qualname = fqcn.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's to fix
        raise ConfigError(f"logits processor {fqcn!r}: cannot import module {module_name!r} "
                          f"({type(e).__name__}: {e}); it must be importable (on PYTHONPATH) where the engine "
                          "runs") from e
    for attr in qualname.split("."):
        if attr == "<locals>" or not hasattr(obj, attr):
            raise ConfigError(f"logits processor {fqcn!r}: {qualname!r} is not found in module {module_name!r}; "
                              "define the class at the top level of an importable module")
        obj = getattr(obj, attr)
    if not isinstance(obj, type) or not issubclass(obj, LogitsProcessor):
        raise ConfigError(f"logits processor {fqcn!r} is not a subclass of "
                          "pagedlm.v1.sample.logits_processor.LogitsProcessor (vllm's LogitsProcessor interface)")
    return obj


def resolve_logits_processors(entries: Sequence[Any] | None) -> tuple[str, ...]:
    """The engine config's form of ``logits_processors``: each entry's name, checked to load
    (and, for a class, to load as that very class)."""
    if entries is None:
        return ()
    if isinstance(entries, (str, type)) or not isinstance(entries, (list, tuple)):
        raise ConfigError(f"logits_processors must be a list of classes or 'module:Class' names, got {entries!r}")
    names = []
    for entry in entries:
        fqcn = fqcn_of(entry)
        cls = load_processor_class(fqcn)
        if isinstance(entry, type) and cls is not entry:
            raise ConfigError(f"logits processor {entry.__qualname__} cannot be found by its name {fqcn!r} (is it "
                              "defined inside a function?); define it at the top level of a module")
        names.append(fqcn)
    return tuple(names)


def validate_request_params(classes: Sequence[type[LogitsProcessor]], params: SamplingParams) -> None:
    """The frontend's check of one request: ``extra_args`` only when a processor can read them;
    each processor's ``validate_params`` (ValueError)."""
    if params.extra_args and not classes:
        raise ValueError("extra_args are read by custom logits processors, and none is loaded (start the engine "
                         "with logits_processors=[...] / --logits-processors)")
    for cls in classes:
        cls.validate_params(params)


class CustomLogits:
    """The processors of one worker and the row changes they have not been told about yet."""

    def __init__(self, processors: list[LogitsProcessor]) -> None:
        self.non_argmax_invariant = [p for p in processors if not p.is_argmax_invariant()]
        self.argmax_invariant = [p for p in processors if p.is_argmax_invariant()]
        self.processors = processors
        self.batch_size = 0
        self._removed: list[int] = []
        self._added: list[tuple[int, SamplingParams, list[int] | None, list[int]]] = []
        self._moved: list[tuple[int, int, MoveDirectionality]] = []

    # ---- the persistent batch's reports (in the order they happen) ----------------------
    def removed(self, row: int) -> None:
        self._removed.append(row)

    def added(self, row: int, params: SamplingParams, prompt_token_ids: list[int], output_token_ids: list[int]) -> None:
        # A row freed and taken again in one step is only "added" (vLLM's convention; helpers
        # such as process_dict_updates read added before removed).
        if row in self._removed:
            self._removed.remove(row)
        self._added.append((row, params, prompt_token_ids, output_token_ids))

    def moved(self, src: int, dst: int) -> None:
        self._moved.append((src, dst, MoveDirectionality.UNIDIRECTIONAL))

    # ---- the runner's and the sampler's calls --------------------------------------------
    def begin_step(self, batch_size: int) -> None:
        """Before the step's forward: each processor's update_state, once (None: no change)."""
        self.batch_size = batch_size
        update = None
        if self._removed or self._added or self._moved:
            update = BatchUpdate(batch_size, self._removed, self._added, self._moved)
            self._removed, self._added, self._moved = [], [], []
        for processor in self.processors:
            processor.update_state(update)

    def apply(self, logits: torch.Tensor, batch_rows: np.ndarray | None, argmax_invariant: bool) -> torch.Tensor:
        """logits [S, V] of the sampling rows, ``batch_rows`` [S] their persistent-batch rows ->
        processed logits [S, V]. ``argmax_invariant``: the processors that run after the
        temperature on random rows; else those that run before greedy sampling."""
        processors = self.argmax_invariant if argmax_invariant else self.non_argmax_invariant
        if not processors:
            return logits
        if batch_rows is None:
            raise RuntimeError("custom logits processors need the persistent-batch row of each sampled row")
        rows = torch.from_numpy(np.asarray(batch_rows, dtype=np.int64)).to(logits.device)  # [S]
        full = logits.new_zeros(self.batch_size, logits.shape[1])  # [batch rows, V]
        full.index_copy_(0, rows, logits)
        for processor in processors:
            full = processor.apply(full)
        return full.index_select(0, rows)


def build_custom_logits(config: Any, device: torch.device) -> CustomLogits | None:
    """The worker's processors, built from the config's names; None when there are none."""
    names = getattr(config, "logits_processors", ())
    if not names:
        return None
    pin = torch.device(device).type == "cuda"
    return CustomLogits([load_processor_class(name)(config, torch.device(device), pin) for name in names])
