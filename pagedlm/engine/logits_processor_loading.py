"""Loading custom logits processors (vLLM V1's ``logits_processors``) by name, and the
frontend's check of a request's ``extra_args``. No torch here: the engine's arguments and
input processor import this (the engine-core modules stay importable without torch); the
processors' runtime seam is pagedlm.sample.custom_logits.

The engine config names each processor class by its fully qualified name ("module:Class"),
so the list travels to the engine-core process and to every worker as plain strings; classes
given to ``LLM(logits_processors=[...])`` are turned into that name, and one that cannot be
found again by it (a class defined inside a function) is refused at start-up.

Installed packages add processors as vLLM's plugins do: an entry point in the group
``pagedlm.logits_processors`` (vLLM's is ``vllm.logits_processors``, whose classes subclass
vLLM's own interface) naming a LogitsProcessor subclass is loaded at start-up, before those
the engine is given, wherever custom processors run (not for pooling models nor with
speculative decoding, which vLLM skips too).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from typing import TYPE_CHECKING, Any, Sequence

from pagedlm.config import ConfigError
from pagedlm.sampling_params import SamplingParams

LOGITSPROCS_GROUP = "pagedlm.logits_processors"

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from pagedlm.v1.sample.logits_processor.interface import LogitsProcessor


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
    from pagedlm.v1.sample.logits_processor.interface import LogitsProcessor  # imports torch

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


def plugin_logits_processors() -> tuple[str, ...]:
    """The names of the processors installed packages register under LOGITSPROCS_GROUP, in
    entry-point order; one that fails to load, or is not a LogitsProcessor class, stops start-up
    naming its entry point (as vLLM's loader does)."""
    classes = []
    for entry_point in importlib.metadata.entry_points(group=LOGITSPROCS_GROUP):
        try:
            obj = entry_point.load()
        except Exception as e:  # noqa: BLE001 - any import failure is the plugin's
            raise ConfigError(f"logits processor plugin {entry_point.name!r} ({entry_point.value}, entry-point group "
                              f"{LOGITSPROCS_GROUP!r}) failed to load ({type(e).__name__}: {e}); fix or uninstall "
                              "the package that registers it") from e
        if not isinstance(obj, type):
            raise ConfigError(f"logits processor plugin {entry_point.name!r} ({entry_point.value}) is not a class")
        logger.info("Loading logits processor plugin %s (%s)", entry_point.name, entry_point.value)
        classes.append(obj)
    return resolve_logits_processors(classes)


def engine_logits_processors(entries: Sequence[Any] | None, pooling: bool, speculative: bool) -> tuple[str, ...]:
    """The engine's custom processors: the installed plugins' (where custom processors run at
    all), then the ones given; a processor named by both runs once."""
    given = resolve_logits_processors(entries)
    if pooling or speculative:  # given ones are refused there (check_custom_logits_fit); plugins skipped
        return given
    return tuple(dict.fromkeys(plugin_logits_processors() + given))
