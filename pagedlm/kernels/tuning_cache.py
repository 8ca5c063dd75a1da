"""Load-time kernel choices kept on disk between runs.

The first-use tuners (``gemv``, ``scaled_gemv``, ``wna16_tuning``) time a few kernel configs per
weight shape on the card: tens of seconds per model at start-up (an AWQ Llama-3.1-8B's int4
choices, about 47 s on an H200 with the candidates compiled side by side: ``precompile``). Their
choices are kept in one JSON file per *fingerprint* under ``$PAGEDLM_CACHE_DIR/tuning`` (default
``~/.cache/pagedlm/tuning``), and a later start on the same card with the same software and
kernel code reads them back instead of timing again. The
fingerprint covers the GPU (name, compute capability, SM count), the torch, CUDA and Triton
versions, whether programmatic dependent launch is on, and a hash of the kernel sources
(``pagedlm/kernels/*.py`` and ``csrc/*``): a change to any of them starts a new file. ``PAGEDLM_TUNING_CACHE=0``
turns the cache off.

Choices are plain data, never pickles: None, a config dataclass of a type the tuner names
(stored as its class name and fields), or a list of [number, choice] pairs. A file that cannot
be read is ignored (and replaced on the next store); a choice that cannot be decoded is timed
again. Several processes (tensor-parallel ranks) may store at once: each store re-reads the file,
adds its entry and replaces the file atomically, so at worst an entry is lost and timed again.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from pagedlm.cache_dir import cache_root

logger = logging.getLogger(__name__)

_VERSION = 1  # of the file format
_loaded: dict[Path, dict[str, Any]] = {}  # file -> its entries, read once per process


def enabled() -> bool:
    return os.environ.get("PAGEDLM_TUNING_CACHE", "1") != "0"


@functools.cache
def _kernel_sources_hash() -> str:
    digest = hashlib.sha256()
    here = Path(__file__).parent
    for path in sorted([*here.glob("*.py"), *here.glob("csrc/*.cu"), *here.glob("csrc/*.cuh")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def fingerprint(device: torch.device) -> str:
    """What a stored choice is valid for (see the module docstring), as a short hash."""
    from pagedlm.kernels import pdl  # noqa: PLC0415

    parts: list[str] = [torch.__version__, str(torch.version.cuda), _kernel_sources_hash(), f"pdl={pdl.enabled()}"]
    try:
        import triton  # noqa: PLC0415

        parts.append(triton.__version__)
    except ImportError:
        parts.append("no-triton")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        parts += [props.name, f"{props.major}.{props.minor}", str(props.multi_processor_count)]
    else:
        parts.append(device.type)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _file(device: torch.device) -> Path:
    return cache_root() / "tuning" / f"{fingerprint(device)}.json"


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        if data.get("version") == _VERSION and isinstance(data.get("entries"), dict):
            return data["entries"]
        logger.warning("kernel tuning cache %s has another format; ignored", path)
    except FileNotFoundError:
        pass
    except (OSError, ValueError, AttributeError) as exc:
        logger.warning("kernel tuning cache %s could not be read (%s); ignored", path, exc)
    return {}


def _write(path: Path, entries: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": _VERSION, "entries": entries}, indent=0, sort_keys=True))
        os.replace(tmp, path)
    except OSError as exc:  # a read-only or full disk costs the next start its timing, nothing more
        logger.warning("kernel tuning cache %s could not be written (%s)", path, exc)


def encode(choice: Any) -> Any:
    if choice is None:
        return None
    if dataclasses.is_dataclass(choice) and not isinstance(choice, type):
        return {"type": type(choice).__name__, "fields": dataclasses.asdict(choice)}
    if isinstance(choice, (list, tuple)):
        return [[m, encode(c)] for m, c in choice]
    raise TypeError(f"cannot store a {type(choice).__name__} in the tuning cache")


def decode(data: Any, types: Iterable[type]) -> Any:
    """The inverse of ``encode`` for configs of ``types``; ValueError for anything else."""
    if data is None:
        return None
    by_name = {t.__name__: t for t in types}
    if isinstance(data, dict):
        cls = by_name.get(data.get("type"))
        if cls is None or not isinstance(data.get("fields"), dict):
            raise ValueError(f"not a stored config of {sorted(by_name)}: {data!r}")
        try:
            return cls(**data["fields"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"stored {cls.__name__} does not fit today's fields: {exc}") from exc
    if isinstance(data, list) and all(isinstance(p, list) and len(p) == 2 for p in data):
        return [(m, decode(c, types)) for m, c in data]
    raise ValueError(f"not a stored choice: {data!r}")


def cached(tuner: str, key: tuple, device: torch.device, types: Iterable[type], compute: Callable[[], Any]) -> Any:
    """The choice stored for (``tuner``, ``key``) on this device, else ``compute()``, stored."""
    if not enabled():
        return compute()
    path = _file(device)
    entries = _loaded.get(path)
    if entries is None:
        entries = _loaded[path] = _read(path)
    name = f"{tuner}:" + ",".join(map(str, key))
    if name in entries:
        try:
            choice = decode(entries[name], types)
            logger.debug("%s: %s from the tuning cache", tuner, key)
            return choice
        except ValueError as exc:
            logger.warning("kernel tuning cache entry %s is not usable (%s); timing again", name, exc)
    choice = compute()
    entries[name] = encode(choice)
    merged = _read(path)
    merged.update(entries)
    entries.update(merged)
    _write(path, merged)
    return choice
