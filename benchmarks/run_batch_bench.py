"""`pagedlm run-batch` against the offline engine, same card, same workload: N chat lines of
about INPUT_LEN prompt tokens and OUTPUT_LEN output tokens (ignore_eos), dummy weights of a
benchmark shape. Prints the batch phase's output tokens/s (from run-batch's "Ran N request(s)
in S s" log line, the model load excluded, and the usage of every result line). Run
`benchmarks/compare_throughput.py --skip-hf` beside it in the same call for the offline figure.

python benchmarks/run_batch_bench.py [--shape llama-3.1-8b] [--num-prompts 1000] [--input-len 512] [--output-len 256]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from pagedlm.benchmarks.shapes import make_shape_dir


def random_text(tok, vocab: list[int], rng: random.Random, length: int) -> str:
    """Text of about ``length`` tokens: random ids decoded, re-encoded and cut until the text
    encodes to at most ``length`` tokens (decoding and encoding again merges bytes differently)."""
    ids = [rng.choice(vocab) for _ in range(length)]
    text = tok.decode(ids)
    for _ in range(8):
        ids = tok(text, add_special_tokens=False).input_ids
        if len(ids) <= length:
            break
        text = tok.decode(ids[:length])
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="llama-3.1-8b")
    parser.add_argument("--num-prompts", type=int, default=1000)
    parser.add_argument("--input-len", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extra", default="", help="more run-batch flags, one string")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    work = Path(tempfile.mkdtemp(prefix="run_batch_bench_"))
    model_dir = make_shape_dir(args.shape, work / "model")
    tok = AutoTokenizer.from_pretrained(model_dir)
    rng = random.Random(args.seed)
    vocab = [t for t in range(tok.vocab_size) if t not in tok.all_special_ids]
    template = tok.apply_chat_template([{"role": "user", "content": ""}], tokenize=False, add_generation_prompt=True)
    template_len = len(tok(template, add_special_tokens=False).input_ids)
    lines = []
    for i in range(args.num_prompts):
        text = random_text(tok, vocab, rng, args.input_len - template_len)
        body = {"model": "bench", "messages": [{"role": "user", "content": text}],
                "max_tokens": args.output_len, "ignore_eos": True, "temperature": 1.0}
        lines.append(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                                 "body": body}))
    (work / "in.jsonl").write_text("\n".join(lines) + "\n")
    cmd = [sys.executable, "-m", "pagedlm", "run-batch", "-i", str(work / "in.jsonl"), "-o", str(work / "out.jsonl"),
           "--model", str(model_dir), "--load-format", "dummy", "--max-model-len", "1024",
           "--served-model-name", "bench", *args.extra.split()]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        sys.exit(f"run-batch failed ({proc.returncode}):\n{log[-4000:]}")
    match = re.search(r"Ran (\d+) request\(s\) in ([0-9.]+) s", log)
    results = [json.loads(x) for x in (work / "out.jsonl").read_text().splitlines()]
    errors = [r for r in results if r["error"] is not None]
    prompt = sum(r["response"]["body"]["usage"]["prompt_tokens"] for r in results if r["error"] is None)
    out = sum(r["response"]["body"]["usage"]["completion_tokens"] for r in results if r["error"] is None)
    seconds = float(match.group(2))
    print(f"run-batch {args.shape}: {len(results)} lines, {len(errors)} errors, prompt tokens {prompt}, output "
          f"tokens {out}, batch phase {seconds:.2f} s: {out / seconds:,.0f} out tok/s, "
          f"{(prompt + out) / seconds:,.0f} total tok/s")


if __name__ == "__main__":
    main()
