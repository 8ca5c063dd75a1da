"""Tiny checkpoints built locally: the built-in demo model and the test fixtures.

Nothing here downloads anything. A byte-level BPE tokenizer is trained on the text below
(deterministic), and a Hugging Face model class is instantiated from a small config with
seeded random weights and saved with ``save_pretrained``. The output of such a model is not
meaningful text: it exists so the engine, server and tests have a real checkpoint to load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pagedlm.cache_dir import cache_root

_CORPUS = """\
The quick brown fox jumps over the lazy dog. Hello, my name is Ada and I like to write code.
Paged attention keeps the key and value cache in small blocks, like pages of memory in an
operating system. Continuous batching refills the running batch at every step. The capital of
France is Paris. The capital of Italy is Rome. One, two, three, four, five, six, seven, eight.
def add(a, b):\n    return a + b\nprint(add(1, 2))\n{"name": "pagedlm", "fast": true, "blocks": 16}
Once upon a time there was a small model that answered every question with random words.
Unicode text: café, naïve, Straße, 東京, 日本語, ñandú, Ελληνικά, emoji 🙂🚀 and ← arrows →.
Numbers 0123456789, punctuation !?;:'"()[]<>@#$%^&*-_=+/\\|~` and whitespace\ttabs\nnewlines.
"""

SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

DEMO_MODEL_NAME = "pagedlm-demo-tiny-llama"


def build_tokenizer(out_dir: str | os.PathLike, vocab_size: int = 512):
    """Train a byte-level BPE on the corpus above and save it as a HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|end_of_text|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))
    return fast


def _model_config(arch: str, vocab_size: int, bos_id: int, eos_id: int, **overrides):
    import transformers

    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        tie_word_embeddings=False,
    )
    config_cls = {
        "LlamaForCausalLM": transformers.LlamaConfig,
        "MistralForCausalLM": transformers.MistralConfig,
        "Qwen2ForCausalLM": transformers.Qwen2Config,
        "Qwen3ForCausalLM": transformers.Qwen3Config,
        "Gemma2ForCausalLM": transformers.Gemma2Config,
        "Gemma3ForCausalLM": transformers.Gemma3TextConfig,
        "Phi3ForCausalLM": transformers.Phi3Config,
        "MixtralForCausalLM": transformers.MixtralConfig,
        "Qwen2MoeForCausalLM": transformers.Qwen2MoeConfig,
        "Qwen3MoeForCausalLM": transformers.Qwen3MoeConfig,
        "GPT2LMHeadModel": transformers.GPT2Config,
    }.get(arch) or getattr(transformers, arch.split("For")[0] + "Config")  # GraniteForCausalLM -> GraniteConfig
    if arch == "Qwen3ForCausalLM":
        common["head_dim"] = 16
    common.update(overrides)
    return config_cls(**common)


def build_tiny_checkpoint(
    out_dir: str | os.PathLike,
    arch: str = "LlamaForCausalLM",
    seed: int = 0,
    max_shard_size: str | None = None,
    **config_overrides,
) -> Path:
    """Write a tiny random checkpoint of ``arch`` plus tokenizer into ``out_dir``.

    ``max_shard_size`` (e.g. "100KB") writes a sharded checkpoint with an index file.
    ``config_overrides`` go into the HF config (e.g. rope_scaling, tie_word_embeddings).
    """
    import torch
    import transformers

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out)
    config = _model_config(
        arch,
        vocab_size=len(tokenizer),
        bos_id=tokenizer.bos_token_id,
        eos_id=tokenizer.eos_token_id,
        **config_overrides,
    )
    torch.manual_seed(seed)
    model = getattr(transformers, arch)(config).to(torch.float32)
    with torch.no_grad():
        # HF initialises with std 0.02, which makes every logit nearly equal; larger weights
        # give peaked distributions so greedy parity checks are meaningful.
        for name, p in model.named_parameters():
            if ("norm" in name or ".ln_" in name) and not name.endswith(".bias"):
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.15 if p.dim() > 1 else 0.1)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):  # a buffer in GLM-4.5: nonzero so it moves the choice
                b.normal_(0.0, 0.1)
    kwargs = {"safe_serialization": True}
    if max_shard_size is not None:
        kwargs["max_shard_size"] = max_shard_size
    model.save_pretrained(str(out), **kwargs)
    gen_cfg = out / "generation_config.json"
    if gen_cfg.exists():
        gen_cfg.unlink()
    return out


def demo_model_dir() -> Path:
    """The built-in demo checkpoint, created deterministically on first use."""
    root = cache_root()
    path = root / DEMO_MODEL_NAME
    marker = path / ".complete"
    if not marker.exists():
        tmp = root / f".{DEMO_MODEL_NAME}.tmp{os.getpid()}"
        build_tiny_checkpoint(
            tmp,
            "LlamaForCausalLM",
            seed=1234,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
        )
        (tmp / ".complete").write_text(json.dumps({"name": DEMO_MODEL_NAME}))
        if path.exists():
            import shutil

            shutil.rmtree(path)
        os.replace(tmp, path)
    return path
