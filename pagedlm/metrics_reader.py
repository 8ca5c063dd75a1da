"""``LLM.get_metrics()``: the offline engine's Prometheus registry as plain objects, shaped
like vLLM's ``vllm.v1.metrics.reader`` (Counter / Gauge / Histogram / Vector with name and
labels; ``pagedlm.v1.metrics.reader`` is this module under vLLM's path)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry


@dataclass
class Metric:
    name: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class Counter(Metric):
    value: float = 0.0


@dataclass
class Gauge(Metric):
    value: float = 0.0


@dataclass
class Vector(Metric):
    """vLLM's one non-Prometheus shape: the per-position counters of
    ``spec_decode_num_accepted_tokens_per_pos`` as a list indexed by draft position."""

    values: list[int] = field(default_factory=list)


# The counter family read back as a Vector (its ``position`` label becomes the list index).
PER_POSITION_COUNTER = "spec_decode_num_accepted_tokens_per_pos"


@dataclass
class Histogram(Metric):
    count: float = 0.0
    sum: float = 0.0
    buckets: dict[str, float] = field(default_factory=dict)  # upper bound -> cumulative count


def get_metrics_snapshot(registry: CollectorRegistry, prefix: str) -> list[Metric]:
    """Every engine series (those under ``prefix``) in the registry, now."""
    out: list[Metric] = []
    for family in registry.collect():
        if not family.name.startswith(prefix):
            continue
        if family.type == "histogram":
            out.extend(_histograms(family))
            continue
        if family.type == "counter" and family.name == prefix + PER_POSITION_COUNTER:
            out.extend(_vectors(family))
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            cls = Counter if family.type == "counter" else Gauge
            out.append(cls(name=family.name, labels=dict(sample.labels), value=sample.value))
    return out


def _histograms(family) -> list[Histogram]:
    by_labels: dict[tuple, Histogram] = {}
    for sample in family.samples:
        labels = {k: v for k, v in sample.labels.items() if k != "le"}
        hist = by_labels.setdefault(tuple(sorted(labels.items())), Histogram(name=family.name, labels=labels))
        if sample.name.endswith("_bucket"):
            hist.buckets[sample.labels["le"]] = sample.value
        elif sample.name.endswith("_count"):
            hist.count = sample.value
        elif sample.name.endswith("_sum"):
            hist.sum = sample.value
    return list(by_labels.values())


def _vectors(family) -> list[Vector]:
    """One Vector per label set (engine, model) other than ``position``; a position no sample
    names reads 0, as vLLM's reader does."""
    by_labels: dict[tuple, dict[int, float]] = {}
    for sample in family.samples:
        if not sample.name.endswith("_total"):
            continue
        labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "position"))
        by_labels.setdefault(labels, {})[int(sample.labels["position"])] = sample.value
    num_positions = 1 + max((pos for counts in by_labels.values() for pos in counts), default=-1)
    return [Vector(name=family.name, labels=dict(labels),
                   values=[int(counts.get(pos, 0)) for pos in range(num_positions)])
            for labels, counts in by_labels.items()]
