"""Offline throughput with a JSON-schema constraint on every request vs unconstrained, in one
run on one engine (same model, same prompts, same output lengths).

The schema asks for an array longer than any output can hold, so every constrained request
runs to max_tokens like the unconstrained ones (ignore_eos): both sides produce the same
number of tokens and the ratio of output tokens/s is the cost of the constraint (bitmask
fill per step, its copy, the masked logits, the matcher advance).

CPU:  python benchmarks/structured_throughput.py --shape cpu-small --num-prompts 64 --output-len 64
GPU (Llama-3.1-8B shape, random weights; target constrained/unconstrained >= 0.8):
      python benchmarks/structured_throughput.py --shape llama-3.1-8b --num-prompts 256 --input-len 512 \
          --output-len 256 --tokenizer /path/to/llama-3.1-tokenizer
Without --tokenizer the shape directory's small BPE (512 tokens) is used, padded to the model's
vocabulary; a real 128k-token tokenizer makes the grammar's per-step mask fill more expensive,
so pass one for the figure that goes into BENCHMARKS.md, or `--synthetic-vocab` for a tokenizer of
the shape's full vocabulary size.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from pagedlm.benchmarks.datasets import random_requests
from pagedlm.benchmarks.shapes import SHAPES, build_synthetic_vocab_tokenizer, make_shape_dir

SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "rows": {"type": "array", "minItems": 100000,
                 "items": {"type": "object", "properties": {"name": {"type": "string"},
                                                           "kind": {"enum": ["a", "b", "c"]},
                                                           "score": {"type": "number"}},
                           "required": ["name", "kind", "score"]}},
    },
    "required": ["id", "rows"],
}


def run(llm, requests, constrained: bool) -> dict:
    from pagedlm import SamplingParams
    from pagedlm.sampling_params import StructuredOutputsParams

    so = StructuredOutputsParams(json=SCHEMA) if constrained else None
    params = [SamplingParams(temperature=1.0, ignore_eos=True, max_tokens=r.output_len, detokenize=False,
                             structured_outputs=so) for r in requests]
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in requests]
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    num_out = sum(len(o.outputs[0].token_ids) for o in outputs)
    errors = sum(o.error is not None for o in outputs)
    return {"constrained": constrained, "num_requests": len(requests), "elapsed_s": elapsed,
            "output_tokens": num_out, "output_tokens_per_s": num_out / elapsed, "errors": errors}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", choices=sorted(SHAPES), default="cpu-small")
    p.add_argument("--tokenizer", default=None, help="a real tokenizer directory (default: the shape's tiny BPE)")
    p.add_argument("--synthetic-vocab", action="store_true",
                   help="a byte-level tokenizer with the shape's full vocabulary size (distinct strings), when no "
                        "real tokenizer of that size is at hand")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--output-json", default=None)
    args = p.parse_args()

    from pagedlm import LLM

    model_dir = make_shape_dir(args.shape, tempfile.mkdtemp())
    if args.tokenizer:
        for f in Path(args.tokenizer).glob("tokenizer*"):
            shutil.copy(f, model_dir / f.name)
    vocab = SHAPES[args.shape]["vocab_size"]
    if args.synthetic_vocab:
        build_synthetic_vocab_tokenizer(model_dir, vocab)
    requests = random_requests(args.num_prompts, args.input_len, args.output_len, 0.0, vocab)
    llm = LLM(str(model_dir), load_format="dummy", max_num_seqs=args.max_num_seqs,
              max_model_len=args.input_len + args.output_len + 16)
    run(llm, requests[:4], constrained=True)  # warm-up: compiles the grammar (cached afterwards)
    results = [run(llm, requests, constrained=False), run(llm, requests, constrained=True)]
    print(json.dumps(results, indent=2))
    ratio = results[1]["output_tokens_per_s"] / results[0]["output_tokens_per_s"]
    print(f"\nunconstrained {results[0]['output_tokens_per_s']:.1f} out tok/s, JSON schema "
          f"{results[1]['output_tokens_per_s']:.1f} out tok/s: ratio {ratio:.2f}")
    if args.output_json:
        Path(args.output_json).write_text(json.dumps({"results": results, "ratio": ratio, **vars(args)}, indent=2))


if __name__ == "__main__":
    main()
