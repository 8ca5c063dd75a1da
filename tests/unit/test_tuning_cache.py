"""The on-disk cache of load-time kernel choices (pagedlm/kernels/tuning_cache.py)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import pytest
import torch

from pagedlm.kernels import tuning_cache

CPU = torch.device("cpu")


@dataclass(frozen=True)
class Cfg:
    block: int
    warps: int = 4
    fast: bool = False


class Counter:
    """A tuner that counts how often it had to time."""

    def __init__(self, value):
        self.value, self.calls = value, 0

    def __call__(self):
        self.calls += 1
        return self.value


@pytest.fixture
def warnings(caplog):
    """The cache's log records (pagedlm's loggers do not propagate to the root logger)."""
    log = logging.getLogger("pagedlm.kernels.tuning_cache")
    log.addHandler(caplog.handler)
    caplog.handler.setLevel(logging.WARNING)
    yield caplog
    log.removeHandler(caplog.handler)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PAGEDLM_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("PAGEDLM_TUNING_CACHE", raising=False)
    monkeypatch.setattr(tuning_cache, "_loaded", {})
    return tmp_path / "tuning"


def new_process(monkeypatch):
    """What a later start sees: nothing read yet."""
    monkeypatch.setattr(tuning_cache, "_loaded", {})


@pytest.mark.parametrize("value", [Cfg(64, 8, True), None, [(1, Cfg(16)), (8, None), (512, Cfg(128, 8))]])
def test_a_later_start_reads_the_choice_back_instead_of_timing(cache, monkeypatch, value):
    key = (4096, 14336, torch.bfloat16, True)
    first = Counter(value)
    assert tuning_cache.cached("t", key, CPU, (Cfg,), first) == value and first.calls == 1
    assert tuning_cache.cached("t", key, CPU, (Cfg,), first) == value and first.calls == 1  # in memory
    new_process(monkeypatch)
    later = Counter("must not run")
    assert tuning_cache.cached("t", key, CPU, (Cfg,), later) == value and later.calls == 0
    files = list(cache.glob("*.json"))
    assert len(files) == 1 and files[0].stem == tuning_cache.fingerprint(CPU)
    # another key or another tuner is timed
    other = Counter(Cfg(1))
    assert tuning_cache.cached("t", (1, 2), CPU, (Cfg,), other) == Cfg(1) and other.calls == 1
    assert tuning_cache.cached("u", key, CPU, (Cfg,), other) == Cfg(1) and other.calls == 2


def test_other_kernel_code_or_software_starts_a_new_file(cache, monkeypatch):
    tuning_cache.cached("t", (1,), CPU, (Cfg,), Counter(Cfg(8)))
    new_process(monkeypatch)
    old = tuning_cache.fingerprint(CPU)
    monkeypatch.setattr(tuning_cache, "_kernel_sources_hash", lambda: "edited kernels")
    assert tuning_cache.fingerprint(CPU) != old
    retimed = Counter(Cfg(16))
    assert tuning_cache.cached("t", (1,), CPU, (Cfg,), retimed) == Cfg(16) and retimed.calls == 1
    assert len(list(cache.glob("*.json"))) == 2


def test_the_kernel_sources_are_part_of_the_fingerprint():
    tuning_cache._kernel_sources_hash.cache_clear()
    digest = tuning_cache._kernel_sources_hash()
    assert len(digest) == 16 and digest == tuning_cache._kernel_sources_hash()


def test_unreadable_file_and_unusable_entries_are_timed_again(cache, monkeypatch, warnings):
    tuning_cache.cached("t", (1,), CPU, (Cfg,), Counter(Cfg(8)))
    path = next(cache.glob("*.json"))
    path.write_text("{not json")
    new_process(monkeypatch)
    retimed = Counter(Cfg(32))
    assert tuning_cache.cached("t", (1,), CPU, (Cfg,), retimed) == Cfg(32) and retimed.calls == 1
    assert "could not be read" in warnings.text
    assert json.loads(path.read_text())["version"] == 1  # replaced by a valid file
    # an entry from a config class whose fields changed, and one of a type the tuner does not take
    data = json.loads(path.read_text())
    data["entries"]["t:1"] = {"type": "Cfg", "fields": {"block": 8, "gone": 1}}
    data["entries"]["t:2"] = {"type": "Other", "fields": {}}
    path.write_text(json.dumps(data))
    new_process(monkeypatch)
    for key in ((1,), (2,)):
        again = Counter(Cfg(4))
        assert tuning_cache.cached("t", key, CPU, (Cfg,), again) == Cfg(4) and again.calls == 1


def test_stores_keep_what_other_processes_stored(cache, monkeypatch):
    """Two ranks tuning at once: each store re-reads the file and adds its entry."""
    tuning_cache.cached("t", (1,), CPU, (Cfg,), Counter(Cfg(1)))
    path = next(cache.glob("*.json"))
    data = json.loads(path.read_text())
    data["entries"]["t:3"] = tuning_cache.encode(Cfg(3))  # written by another process meanwhile
    path.write_text(json.dumps(data))
    tuning_cache.cached("t", (2,), CPU, (Cfg,), Counter(Cfg(2)))
    new_process(monkeypatch)
    for key, want in (((1,), Cfg(1)), ((2,), Cfg(2)), ((3,), Cfg(3))):
        assert tuning_cache.cached("t", key, CPU, (Cfg,), Counter("must not run")) == want


def test_off_switch(cache, monkeypatch):
    monkeypatch.setenv("PAGEDLM_TUNING_CACHE", "0")
    tuner = Counter(Cfg(8))
    tuning_cache.cached("t", (1,), CPU, (Cfg,), tuner)
    tuning_cache.cached("t", (1,), CPU, (Cfg,), tuner)
    assert tuner.calls == 2 and not cache.exists()


def test_a_write_failure_costs_only_the_next_starts_timing(cache, warnings):
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text("a file where the directory should be")
    tuner = Counter(Cfg(8))
    assert tuning_cache.cached("t", (1,), CPU, (Cfg,), tuner) == Cfg(8)
    assert "could not be written" in warnings.text


def test_only_configs_none_and_lists_are_stored():
    with pytest.raises(TypeError, match="cannot store"):
        tuning_cache.encode(object())
    with pytest.raises(ValueError, match="not a stored choice"):
        tuning_cache.decode("text", (Cfg,))


def test_the_tuners_config_types_round_trip():
    pytest.importorskip("triton")
    from pagedlm.kernels import gemv, scaled_gemv
    from pagedlm.kernels.triton_wna16 import KernelConfig

    configs = [KernelConfig("wide_t", 16, 128, 6, 8, 2, unroll=2), KernelConfig("gemv", 1, 256, 4, 4, 1,
                                                                                  dequant="pair")]
    table = [(1, configs[1]), (16, configs[0]), (512, None)]
    assert tuning_cache.decode(json.loads(json.dumps(tuning_cache.encode(table))), (KernelConfig,)) == table
    for types in (gemv._config_types(), scaled_gemv._config_types()):
        for cls in types:
            cfg = cls()
            assert tuning_cache.decode(json.loads(json.dumps(tuning_cache.encode(cfg))), types) == cfg
