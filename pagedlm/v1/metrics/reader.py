"""vLLM's ``vllm.v1.metrics.reader`` import path: the classes ``LLM.get_metrics()`` returns."""

from pagedlm.metrics_reader import Counter, Gauge, Histogram, Metric, Vector

__all__ = ["Metric", "Counter", "Gauge", "Histogram", "Vector"]
