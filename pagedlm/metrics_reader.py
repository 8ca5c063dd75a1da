"""``LLM.get_metrics()``: the offline engine's Prometheus registry as plain objects, shaped
like vLLM's ``vllm.v1.metrics.reader`` (Counter / Gauge / Histogram with name and labels)."""

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
