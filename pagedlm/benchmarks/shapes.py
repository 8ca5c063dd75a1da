"""Checkpoint directories (config + tokenizer, no weights) of benchmark shapes, for
`--load-format dummy`. `python -m pagedlm.benchmarks.shapes NAME OUT_DIR`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

SHAPES = {
    # The reference shape of the GPU targets.
    "llama-3.1-8b": dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_theta=500000.0, torch_dtype="bfloat16",
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192},
    ),
    # A few tens of millions of parameters: the CPU benchmark.
    "cpu-small": dict(
        hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
        num_key_value_heads=4, vocab_size=8192, max_position_embeddings=2048, rms_norm_eps=1e-5,
        rope_theta=10000.0, torch_dtype="float32",
    ),
}


def make_shape_dir(name: str, out_dir: str | Path) -> Path:
    from pagedlm.demo import build_tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
              "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 4, **SHAPES[name]}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    build_tokenizer(out)  # only used for ids at either end; benchmarks do not detokenize
    return out


if __name__ == "__main__":
    print(make_shape_dir(sys.argv[1], sys.argv[2]))
