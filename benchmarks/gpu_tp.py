"""Tensor and pipeline parallelism on GPUs: TP=N and PP=M equal TP=1, then batch-1 latency
against its floor and throughput.

    python benchmarks/gpu_tp.py       # 2 GPUs: check TP=2 and PP=2, 8B @ TP=1/TP=2/PP=2, 70B @ TP=2
    python benchmarks/gpu_tp.py --configs llama-3.1-8b@1 --check-tp 1 --check-pp 1   # one GPU
    python benchmarks/gpu_tp.py --tiny --device cpu  # CPU smoke run (tiny shapes, TP=1, TP=2, PP=2)

1. Check: a random-weight checkpoint (written to disk, so every rank loads its shard through
   the weight loaders) generates greedily at TP=1, at TP=``--check-tp`` and at
   PP=``--check-pp`` (up to PP batches in flight: the batch queue must fill); token ids must
   agree up to the first divergence, where each side's token is in the other's top-5
   (vLLM's rule; bf16 sums in another order may flip near-ties).
2. Measure, per ``shape@tp`` (or ``shape@tpxpp``, e.g. ``llama-3.1-8b@1x2``; an optional
   ``:N`` sets that config's number of throughput prompts) config with ``--load-format
   dummy``: batch-1 latency (TTFT, time per output token) and offline throughput on random
   prompts. Each rank reports its weight bytes and how its batch-1 decode steps ran (CUDA
   graph replays or eager forwards).
3. Floor of batch-1 time per output token: the largest rank's weight bytes (less an untied input
   embedding table, of which a step reads one row per token) over the measured
   device-to-device copy bandwidth (stages one after another), plus one step's collectives at
   batch 1 (the embedding's and two per layer all-reduces of one hidden row, the LM head's
   all-gather of the logits), timed by the engine's own ranks as one CUDA graph replay.
Each engine runs in its own subprocess so its GPU memory is returned before the next one.
Prints one JSON document (also written to ``--output-json``) and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

NUM_LOGPROBS = 5
CHECK_PROMPTS = [[1 + (i * 7919 + j * 104729) % 500 for j in range(16 + 8 * i)] for i in range(4)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--configs",
                   default="llama-3.1-8b@1:1000,llama-3.1-8b@2:1000,llama-3.1-8b@1x2:1000,llama-3.1-70b@2:500",
                   help="comma-separated SHAPE@TP or SHAPE@TPxPP to measure, each with an optional :NUM_PROMPTS")
    p.add_argument("--check-tp", type=int, default=2, help="TP size checked against TP=1 (1: skip the check)")
    p.add_argument("--check-pp", type=int, default=2, help="PP size checked against TP=1 (1: skip the check)")
    p.add_argument("--tiny", action="store_true", help="tiny shapes and workloads (CPU smoke run)")
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--num-prompts", type=int, default=1000, help="throughput workload size (configs without :N)")
    p.add_argument("--output-json", default=None)
    p.add_argument("--run-timeout", type=float, default=None, help="seconds one config's engine may take")
    p.add_argument("--run-one", default=None, help=argparse.SUPPRESS)  # internal: one engine, JSON spec
    args = p.parse_args(argv)
    if args.tiny:
        args.configs = "cpu-small@1,cpu-small@2,cpu-small@1x2" if args.configs == p.get_default("configs") else args.configs
        args.input_len, args.output_len, args.num_prompts = 32, 8, 8
    return args


def engine_kwargs(device: str, tp: int, max_model_len: int, pp: int = 1) -> dict:
    kw = dict(device=device, tensor_parallel_size=tp, pipeline_parallel_size=pp, max_model_len=max_model_len,
              max_num_seqs=256)
    if device == "cpu":
        kw.update(dtype="float32", num_gpu_blocks_override=max(64, 4 * max_model_len // 16), max_num_seqs=16)
    return kw


def run_check(spec: dict) -> dict:
    """One engine: greedy ids and top-k logprobs of CHECK_PROMPTS."""
    from pagedlm import LLM, SamplingParams

    # A small token budget splits the prompts over several batches, so PP fills its batch queue.
    llm = LLM(spec["model"], max_num_batched_tokens=64, **engine_kwargs(spec["device"], spec["tp"], 256,
                                                                       spec.get("pp", 1)))
    params = SamplingParams(temperature=0.0, max_tokens=16, logprobs=NUM_LOGPROBS, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in CHECK_PROMPTS], params, use_tqdm=False)
    queue = llm.llm_engine.engine_core.batch_queue
    llm.llm_engine.engine_core.shutdown()
    return {"batch_queue_depth": queue.max_depth_reached if queue is not None else 1,
            "ids": [o.outputs[0].token_ids for o in outs],
            "logprobs": [[{str(t): lp.logprob for t, lp in pos.items()} for pos in o.outputs[0].logprobs]
                         for o in outs]}


def run_measure(spec: dict) -> dict:
    from pagedlm import LLM, SamplingParams
    from pagedlm.benchmarks.datasets import random_requests
    from pagedlm.benchmarks.latency import measure

    max_len = spec["input_len"] + spec["output_len"] + 16
    start = time.perf_counter()
    llm = LLM(spec["model"], load_format="dummy", **engine_kwargs(spec["device"], spec["tp"], max_len,
                                                                 spec.get("pp", 1)))
    startup_s = time.perf_counter() - start
    executor = llm.llm_engine.engine_core.executor
    before = executor.collective_rpc("runtime_stats")
    latency = measure(llm, 1, spec["input_len"], spec["output_len"], warmup=1, iters=3)
    after = executor.collective_rpc("runtime_stats")
    ranks = [{"rank": a["rank"], "weight_bytes": a["weight_bytes"], "decode_read_bytes": a["decode_read_bytes"],
              "batch1_forwards": {k: a["forward_counts"][k] - b["forward_counts"][k] for k in a["forward_counts"]}}
             for b, a in zip(before, after)]
    vocab = llm.llm_engine.model_config.vocab_size
    reqs = random_requests(spec["num_prompts"], spec["input_len"], spec["output_len"], 0.0, vocab)
    params = SamplingParams(temperature=1.0, ignore_eos=True, max_tokens=spec["output_len"], detokenize=False)
    start = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": r.prompt_token_ids} for r in reqs], params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    num_out = sum(len(o.outputs[0].token_ids) for o in outs)
    num_in = sum(len(r.prompt_token_ids) for r in reqs)
    print(json.dumps({"partial": spec["shape"], "tp": spec["tp"], "batch1": latency, "ranks": ranks,
                      "output_tokens_per_s": num_out / elapsed}), file=sys.stderr)  # kept if what follows hangs
    collectives_ms = max(executor.collective_rpc("time_step_collectives"))  # last: the engine is idle
    llm.llm_engine.engine_core.shutdown()
    return {"shape": spec["shape"], "tp": spec["tp"], "pp": spec.get("pp", 1), "startup_s": startup_s, "batch1": latency,
            "ranks": ranks, "collectives_ms": collectives_ms,
            "throughput": {"num_prompts": len(reqs), "elapsed_s": elapsed, "output_tokens_per_s": num_out / elapsed,
                           "total_tokens_per_s": (num_in + num_out) / elapsed}}


def run_floors(spec: dict) -> dict:
    """The device-to-device copy bandwidth of this GPU."""
    from benchmarks.floors import measure_floors

    return measure_floors()


def in_subprocess(spec: dict, timeout_s: float | None = None) -> dict:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--run-one", json.dumps(spec)],
                         stdout=subprocess.PIPE, check=True, text=True, timeout=timeout_s)
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(ref: dict, ours: dict) -> dict:
    """vLLM's rule: equal ids until the first divergence, where each token is in the other's top-k."""
    matched, max_diff = 0, 0.0
    for ref_ids, our_ids, ref_lps, our_lps in zip(ref["ids"], ours["ids"], ref["logprobs"], ours["logprobs"]):
        for pos, (a, b) in enumerate(zip(ref_ids, our_ids)):
            if a != b:
                if str(b) not in ref_lps[pos] or str(a) not in our_lps[pos]:
                    return {"ok": False, "why": f"diverged at {pos}: {a} vs {b}, not in each other's top-k"}
                break
            matched += 1
            max_diff = max(max_diff, abs(ref_lps[pos][str(a)] - our_lps[pos][str(b)]))
    return {"ok": True, "matched_tokens": matched, "max_logprob_diff": max_diff}


def check(args: argparse.Namespace) -> list[dict]:
    from pagedlm.demo import build_tiny_checkpoint

    size = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
                num_key_value_heads=2) if args.tiny else \
        dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=8, num_attention_heads=16,
             num_key_value_heads=4, max_position_embeddings=4096)
    model = str(build_tiny_checkpoint(tempfile.mkdtemp(prefix="gpu_tp_check_"), **size))
    base = {"mode": "check", "model": model, "device": args.device}
    ref = in_subprocess({**base, "tp": 1})
    results = []
    for tp, pp in ((args.check_tp, 1), (1, args.check_pp)):
        if tp * pp > 1:
            ours = in_subprocess({**base, "tp": tp, "pp": pp})
            result = {"tp": tp, "pp": pp, **compare(ref, ours), "batch_queue_depth": ours["batch_queue_depth"]}
            if result["ok"] and ours["batch_queue_depth"] != pp:  # PP ran one batch at a time
                result.update(ok=False, why=f"the batch queue reached depth {ours['batch_queue_depth']}, not {pp}")
            results.append(result)
            print(f"{'PASS' if result['ok'] else 'FAIL'}: TP={tp} PP={pp} vs TP=1 "
                  f"{result.get('why', '')}", file=sys.stderr)
    return results


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.run_one is not None:
        spec = json.loads(args.run_one)
        run = {"check": run_check, "measure": run_measure, "floors": run_floors}[spec["mode"]]
        print(json.dumps(run(spec)))
        return {}
    from pagedlm.benchmarks.shapes import make_shape_dir

    result: dict = {"device": args.device, "check": check(args), "runs": []}
    failed = [c for c in result["check"] if not c["ok"]]
    if failed:
        print(json.dumps(result, indent=2))
        sys.exit("; ".join(f"TP={c['tp']} PP={c['pp']} does not match TP=1: {c['why']}" for c in failed))
    floors: dict = {}
    for config in filter(None, args.configs.split(",")):
        config, _, num_prompts = config.partition(":")
        shape, world = config.split("@")
        tp, _, pp = world.partition("x")
        model = str(make_shape_dir(shape, tempfile.mkdtemp(prefix=f"gpu_tp_{shape}_")))
        spec = {"mode": "measure", "model": model, "shape": shape, "tp": int(tp), "pp": int(pp or 1),
                "device": args.device, "input_len": args.input_len, "output_len": args.output_len,
                "num_prompts": int(num_prompts or args.num_prompts)}
        if args.device == "cuda" and not floors:
            floors = in_subprocess({"mode": "floors"})
        try:
            run = in_subprocess(spec, args.run_timeout)
        except subprocess.SubprocessError as e:  # the configs after it still run
            result["runs"].append({"config": config, "error": repr(e)})
            continue
        if args.device == "cuda":
            run["floor"] = batch1_floor(run, floors)
        result["runs"].append(run)
        if args.output_json:  # after every run: a later one that runs out of time keeps these
            with open(args.output_json, "w") as f:
                json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    print_table(result["runs"])
    return result


def batch1_floor(run: dict, floors: dict) -> dict:
    """Weight reads (input embedding excluded): each stage's largest rank, stages one after
    another at batch 1; plus the
    step's collectives at TP > 1 (pipeline sends are not counted)."""
    tp = run["tp"]
    stage_bytes = [max(r["decode_read_bytes"] for r in run["ranks"][s * tp:(s + 1) * tp]) for s in range(run["pp"])]
    weights_ms = sum(stage_bytes) / floors["copy_bytes_per_s"] * 1e3
    collectives_ms = run["collectives_ms"]
    tpot = run["batch1"]["time_per_output_token_ms"]
    return {"copy_bytes_per_s": floors["copy_bytes_per_s"], "weights_ms": weights_ms,
            "collectives_ms": collectives_ms, "floor_ms": weights_ms + collectives_ms,
            "tpot_over_floor": tpot / (weights_ms + collectives_ms), "card": floors["card"]}


def print_table(runs: list[dict]) -> None:
    print("\n| config | GB/rank | TPOT ms | floor ms (weights + collectives) | x floor | batch-1 decode forwards "
          "per rank (graph/eager) | out tok/s |")
    for r in runs:
        if "error" in r:
            print(f"| {r['config']} | {r['error']} |")
            continue
        fl = r.get("floor")
        floor_txt = f"{fl['floor_ms']:.2f} ({fl['weights_ms']:.2f} + {fl['collectives_ms']:.2f})" if fl else "-"
        ratio = f"{fl['tpot_over_floor']:.2f}" if fl else "-"
        forwards = " ".join(f"{x['batch1_forwards']['graph']}/{x['batch1_forwards']['eager_decode']}"
                            for x in r["ranks"])
        print(f"| {r['shape']}@{r['tp']}x{r['pp']} | {max(x['weight_bytes'] for x in r['ranks']) / 1e9:.2f} | "
              f"{r['batch1']['time_per_output_token_ms']:.2f} | {floor_txt} | {ratio} | {forwards} | "
              f"{r['throughput']['output_tokens_per_s']:.0f} |")


if __name__ == "__main__":
    main()
