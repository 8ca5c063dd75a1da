"""Prometheus metrics with vLLM's names under the ``pagedlm:`` prefix.

Each server app owns a CollectorRegistry (tests start several apps in one process). The
frontend's output handler feeds the logger: gauges and token counters from the engine cores'
stats after every step, latency histograms and finish reasons from the output processor's
per-step IterationStats.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    multiprocess,
)
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401 - re-exported for the server

from pagedlm.config import EngineConfig
from pagedlm.engine.llm_engine import EngineStats
from pagedlm.engine.messages import SchedulerStats
from pagedlm.engine.output_processor import FinishedRequestStats, IterationStats

PREFIX = "pagedlm:"
PREFIXES = ("pagedlm:", "vllm:")  # `--metrics-prefix vllm`: vLLM's names, for its Grafana dashboards

# vLLM's buckets, so dashboards built for vLLM read the same.
TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0]
REQUEST_LATENCY_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                           120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0]
ITERATION_TOKEN_BUCKETS = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
TOKEN_COUNT_BUCKETS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000]
N_PARAM_BUCKETS = [1, 2, 5, 10, 20]


def build_1_2_5_buckets(max_value: int) -> list[int]:
    """vLLM's token-count buckets: 1, 2, 5, 10, 20, 50, ... up to ``max_value`` (max_model_len)."""
    buckets, scale = [], 1
    while True:
        for mantissa in (1, 2, 5):
            if mantissa * scale > max_value:
                return buckets
            buckets.append(mantissa * scale)
        scale *= 10

# Finish reasons counted by request_success_total (all pre-created so they read 0, not absent).
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")


class PrometheusStatLogger:
    """The engine's metrics; see SPEC.md "Metrics" for the names."""

    def __init__(self, model_name: str, registry: CollectorRegistry | None = None, prefix: str = PREFIX,
                 engine_config: EngineConfig | None = None, multiprocess_dir: str | None = None,
                 engine_stats: bool = True) -> None:
        """``multiprocess_dir``: one of several API server processes (api_server_pool.py), whose
        metrics are Prometheus multiprocess files there (the process must have started with
        PROMETHEUS_MULTIPROC_DIR set to it); ``render`` reads them all. ``engine_stats``: this
        process records what the engine cores report (gauges, preemptions, prefix cache, step
        sizes): one process of a pool does, or those would count once per process."""
        if prefix not in PREFIXES:
            raise ValueError(f"metrics prefix must be one of {PREFIXES}, got {prefix!r}")
        if multiprocess_dir is not None and os.environ.get("PROMETHEUS_MULTIPROC_DIR") != multiprocess_dir:
            raise ValueError("multiprocess metrics need PROMETHEUS_MULTIPROC_DIR set to the directory before "
                             "the process starts")
        self.multiprocess_dir = multiprocess_dir
        self.engine_stats = engine_stats
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.model_name = model_name
        self.prefix = prefix
        # vLLM's labels: model_name and engine (the engine core's index, "0" without data parallelism).
        labels = ["model_name", "engine"]
        r = self.registry
        max_model_len = engine_config.model_config.max_model_len if engine_config is not None else None
        self.token_count_buckets = build_1_2_5_buckets(max_model_len) if max_model_len else TOKEN_COUNT_BUCKETS

        def gauge(name: str, doc: str) -> PerEngine:
            # Several processes: only one sets these (the others hold 0); all values are >= 0.
            return PerEngine(Gauge(prefix + name, doc, labels, registry=r, multiprocess_mode="max"), model_name)

        def counter(name: str, doc: str) -> PerEngine:
            return PerEngine(Counter(prefix + name, doc, labels, registry=r), model_name)

        def histogram(name: str, doc: str, buckets: list[float]) -> PerEngine:
            return PerEngine(Histogram(prefix + name, doc, labels, buckets=buckets, registry=r), model_name)

        self._add_engine_families(gauge, counter)
        self._add_sleep_state(labels)
        self._add_request_families(histogram)
        self._add_step_and_phase_families(histogram)
        self._add_config_families(engine_config)
        if multiprocess_dir is None:
            # Process metrics (process_*, python_info, python_gc_*), unprefixed as in vLLM (one
            # process of a pool would answer for all of them: none then, as vLLM).
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        self._last_per_engine: dict[int, SchedulerStats] = {}  # engine index -> its last stats
        self._steps_seen: dict[int, int] = {}  # engine index -> num_steps_total already observed
        self.spec_decoding = None  # spec-decode counters, made on the first stats that carry them

    def _add_engine_families(self, gauge, counter) -> None:
        """What the engine cores report: batch gauges, token and prefix-cache counters."""
        self.num_requests_running = gauge("num_requests_running", "Number of requests in model execution batches.")
        self.num_requests_waiting = gauge("num_requests_waiting", "Number of requests waiting to be processed.")
        self.kv_cache_usage_perc = gauge("kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
        # vLLM's name before 0.9, still queried by its example Grafana dashboard: the same value.
        self.gpu_cache_usage_perc = gauge("gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage. "
                                          "DEPRECATED: Use kv_cache_usage_perc instead.")
        self.prompt_tokens = counter("prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("generation_tokens", "Number of generation tokens processed.")
        self.num_preemptions = counter("num_preemptions", "Cumulative number of preemption from the engine.")
        self.prefix_cache_queries = counter("prefix_cache_queries",
                                            "Prefix cache queries, in terms of number of queried tokens.")
        self.prefix_cache_hits = counter("prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.")

    def _add_sleep_state(self, labels: list[str]) -> None:
        """vLLM's engine_sleep_state: per engine, one series per ``sleep_state`` (awake,
        weights_offloaded: sleep level 1, discard_all: level 2), the current one 1, the others 0."""
        self.engine_sleep_state = Gauge(
            self.prefix + "engine_sleep_state",
            "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is awake; "
            "weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2.",
            labels + ["sleep_state"], registry=self.registry, multiprocess_mode="mostrecent")
        if self.engine_stats:
            self.record_sleep_state(False)  # awake from the start (reads 1, not absent)

    def record_sleep_state(self, sleeping: bool, level: int = 0, num_engines: int = 1) -> None:
        """After sleep (``sleeping``, at ``level``) or wake_up, for engines 0..num_engines-1 (the
        frontend's sleep and wake_up reach them all)."""
        values = {"awake": int(not sleeping), "weights_offloaded": int(sleeping and level == 1),
                  "discard_all": int(sleeping and level == 2)}
        for engine in range(num_engines):
            for state, value in values.items():
                self.engine_sleep_state.labels(self.model_name, str(engine), state).set(value)

    def _add_request_families(self, histogram) -> None:
        """Per finished request: outcome, latencies and token counts."""
        success = Counter(self.prefix + "request_success", "Count of successfully processed requests.",
                          ["model_name", "engine", "finished_reason"], registry=self.registry)
        self._success = success
        for reason in FINISH_REASONS:
            success.labels(self.model_name, "0", reason)  # read 0, not absent
        self.ttft = histogram("time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                              TTFT_BUCKETS)
        self.itl = histogram("inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                             ITL_BUCKETS)
        # vLLM's per-request mean; its older time_per_output_token_seconds is the per-token ITL.
        self.tpot = histogram("request_time_per_output_token_seconds",
                              "Histogram of time_per_output_token_seconds per request.", ITL_BUCKETS)
        self.itl_legacy = histogram("time_per_output_token_seconds",
                                    "Histogram of time per output token in seconds. "
                                    "DEPRECATED: Use inter_token_latency_seconds instead.", ITL_BUCKETS)
        self.e2e = histogram("e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                             REQUEST_LATENCY_BUCKETS)
        self.queue_time = histogram("request_queue_time_seconds",
                                    "Histogram of time spent in WAITING phase for request.", REQUEST_LATENCY_BUCKETS)
        tokens = self.token_count_buckets
        self.request_prompt_tokens = histogram("request_prompt_tokens", "Number of prefill tokens processed.", tokens)
        self.request_generation_tokens = histogram("request_generation_tokens",
                                                   "Number of generation tokens processed.", tokens)
        self.max_num_generation_tokens = histogram(
            "request_max_num_generation_tokens", "Histogram of maximum number of requested generation tokens.", tokens)
        self.params_n = histogram("request_params_n", "Histogram of the n request parameter.", N_PARAM_BUCKETS)
        self.params_max_tokens = histogram("request_params_max_tokens",
                                           "Histogram of the max_tokens request parameter.", tokens)

    def _add_step_and_phase_families(self, histogram) -> None:
        self.iteration_tokens = histogram("iteration_tokens_total", "Histogram of number of tokens per engine_step.",
                                          ITERATION_TOKEN_BUCKETS)
        self.prefill_time = histogram("request_prefill_time_seconds",
                                      "Histogram of time spent in PREFILL phase for request.", REQUEST_LATENCY_BUCKETS)
        self.decode_time = histogram("request_decode_time_seconds",
                                     "Histogram of time spent in DECODE phase for request.", REQUEST_LATENCY_BUCKETS)
        self.inference_time = histogram("request_inference_time_seconds",
                                        "Histogram of time spent in RUNNING phase for request.",
                                        REQUEST_LATENCY_BUCKETS)

    def _add_config_families(self, config: EngineConfig | None) -> None:
        self.lora_info: Gauge | None = None
        self._cache_info: tuple[Gauge, dict[str, str]] | None = None
        if config is None:
            return
        self._add_cache_config_info(config)
        if config.lora_config is not None:
            # vLLM's lora_requests_info: the value is the time of the update, the adapters are labels.
            self.lora_info = Gauge(self.prefix + "lora_requests_info", "Running stats on lora requests.",
                                   ["max_lora", "waiting_lora_adapters", "running_lora_adapters"],
                                   registry=self.registry, multiprocess_mode="max")

    def _add_cache_config_info(self, config: EngineConfig) -> None:
        cache = config.cache_config
        info = {
            "block_size": str(cache.block_size), "cache_dtype": cache.cache_dtype,
            "enable_prefix_caching": str(cache.enable_prefix_caching),
            "gpu_memory_utilization": str(cache.gpu_memory_utilization),
            "kv_cache_memory_bytes": str(cache.kv_cache_memory_bytes),
            "num_gpu_blocks_override": str(cache.num_gpu_blocks_override),
        }
        # One series per engine core (vLLM's "engine" label); more appear as engines report.
        self._cache_info = (Gauge(self.prefix + "cache_config_info", "Information of the LLMEngine CacheConfig",
                                  list(info) + ["engine"], registry=self.registry, multiprocess_mode="max"), info)
        self._cache_info[0].labels(**info, engine="0").set(1)

    # ------------------------------------------------------------------ frontend hooks (event loop)

    def record_stats(self, stats: EngineStats) -> None:
        """The engines' stats summed: only lora_requests_info reads them (vLLM's has no engine
        label); everything else is per engine (record_engine_stats) or per request (record_iteration)."""
        if not self.engine_stats or self.lora_info is None:
            return
        self.lora_info.clear()  # one series: the current adapters, not every set ever seen
        self.lora_info.labels(max_lora=str(stats.max_lora),
                              waiting_lora_adapters=",".join(sorted(stats.waiting_lora_adapters)),
                              running_lora_adapters=",".join(sorted(stats.running_lora_adapters)),
                              ).set_to_current_time()

    def record_engine_stats(self, engine_index: int, stats: SchedulerStats) -> None:
        """One engine core's own stats (not summed), under its ``engine`` label: gauges, and
        counters advanced by the difference of its running totals; each step it ran is observed once."""
        if not self.engine_stats:
            return
        if engine_index not in self._last_per_engine and self._cache_info is not None:
            gauge, info = self._cache_info
            gauge.labels(**info, engine=str(engine_index)).set(1)
        last = self._last_per_engine.get(engine_index, SchedulerStats())
        self._last_per_engine[engine_index] = stats
        for name in ("num_preemptions", "prefix_cache_queries", "prefix_cache_hits"):
            delta = getattr(stats, name + "_total") - getattr(last, name + "_total")
            if delta > 0:
                getattr(self, name).of(engine_index).inc(delta)
        self.num_requests_running.of(engine_index).set(stats.num_running_reqs)
        self.num_requests_waiting.of(engine_index).set(stats.num_waiting_reqs)
        self.kv_cache_usage_perc.of(engine_index).set(stats.kv_cache_usage)
        self.gpu_cache_usage_perc.of(engine_index).set(stats.kv_cache_usage)
        if stats.spec_decoding is not None:
            if self.spec_decoding is None:
                from pagedlm.spec_decode.metrics import SpecDecodingPrometheus

                self.spec_decoding = SpecDecodingPrometheus(self.registry, self.prefix, self.model_name)
            self.spec_decoding.record(engine_index, stats.spec_decoding)
        if stats.num_steps_total > self._steps_seen.get(engine_index, 0) and stats.last_step_num_tokens > 0:
            self.iteration_tokens.of(engine_index).observe(stats.last_step_num_tokens)
        self._steps_seen[engine_index] = stats.num_steps_total

    def record_iteration(self, stats: IterationStats) -> None:
        """One batch of core outputs (of engine ``stats.engine_index``), as the output processor
        summarised it."""
        engine = stats.engine_index
        if stats.num_prompt_tokens:
            self.prompt_tokens.of(engine).inc(stats.num_prompt_tokens)
        if stats.num_generation_tokens:
            self.generation_tokens.of(engine).inc(stats.num_generation_tokens)
        for ttft in stats.time_to_first_tokens:
            self.ttft.of(engine).observe(ttft)
        for itl in stats.inter_token_latencies:
            self.itl.of(engine).observe(itl)
            self.itl_legacy.of(engine).observe(itl)
        for max_generated in stats.max_num_generation_tokens:
            self.max_num_generation_tokens.of(engine).observe(max_generated)
        for n in stats.n_params:
            self.params_n.of(engine).observe(n)
        for finished in stats.finished_requests:
            self._record_finished(engine, finished)

    def record_aborts(self, request_ids: list[str]) -> None:
        # An abort from the frontend: the engine that held the request is not known here.
        if request_ids:
            self._success.labels(self.model_name, "0", "abort").inc(len(request_ids))

    def _record_finished(self, engine: int, req: FinishedRequestStats) -> None:
        reason = req.finish_reason if req.finish_reason in FINISH_REASONS else "stop"
        self._success.labels(self.model_name, str(engine), reason).inc()
        self.e2e.of(engine).observe(req.e2e_latency)
        self.request_prompt_tokens.of(engine).observe(req.num_prompt_tokens)
        self.request_generation_tokens.of(engine).observe(req.num_generation_tokens)
        if req.max_tokens_param:
            self.params_max_tokens.of(engine).observe(req.max_tokens_param)
        if req.queue_time is not None:
            self.queue_time.of(engine).observe(req.queue_time)
        if req.mean_time_per_output_token is not None:
            self.tpot.of(engine).observe(req.mean_time_per_output_token)
        if req.prefill_time is not None:
            self.prefill_time.of(engine).observe(req.prefill_time)
        if req.decode_time is not None:
            self.decode_time.of(engine).observe(req.decode_time)
        if req.prefill_time is not None and req.decode_time is not None:
            self.inference_time.of(engine).observe(req.prefill_time + req.decode_time)

    def render(self) -> bytes:
        if self.multiprocess_dir is not None:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)
            return generate_latest(registry)
        return generate_latest(self.registry)


class PerEngine:
    """A metric family with vLLM's ``model_name`` and ``engine`` labels: ``of(i)`` is engine i's
    series; engine 0's exists from the start (reads 0, not absent)."""

    def __init__(self, family: Counter | Gauge | Histogram, model_name: str) -> None:
        self.family, self.model_name = family, model_name
        self._children = {0: family.labels(model_name, "0")}

    def of(self, engine_index: int):
        child = self._children.get(engine_index)
        if child is None:
            child = self._children[engine_index] = self.family.labels(self.model_name, str(engine_index))
        return child
