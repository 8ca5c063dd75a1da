"""Tiny random decoder checkpoints with heads, written by the tests (no download):
transformers' ``LlamaForSequenceClassification`` / ``Qwen2ForSequenceClassification`` (a
``score`` linear on the last token), and a ``Qwen2ForRewardModel`` checkpoint as vLLM reads it
(transformers has no such class: Qwen2Model plus a ``score.0`` / ReLU / ``score.2`` MLP, saved by
hand), with their reference outputs."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pagedlm.demo import _model_config, build_tokenizer

TEXTS = ["hello world", "the quick brown fox jumps over the lazy dog", "Paris", "The capital of France is Paris."]


def _tokenizer(out: Path):
    """The demo BPE with a Llama-style pair template (``<bos> a <bos> b``) whose second segment
    has token type 1, so a pair encoding carries token types a decoder must not get."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    fast = build_tokenizer(out)
    bos = fast.bos_token
    fast.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1", special_tokens=[(bos, fast.bos_token_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=fast.backend_tokenizer, bos_token=bos, eos_token=fast.eos_token,
                                   pad_token=fast.pad_token)
    fast.save_pretrained(str(out))
    return fast


def _randomize(model: torch.nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.8, 1.2)
            else:
                p.normal_(0.0, 0.1)


def build_decoder_classifier(out: Path, arch: str, num_labels: int, seed: int = 0, **overrides) -> Path:
    """arch: "LlamaForSequenceClassification" | "Qwen2ForSequenceClassification"."""
    import transformers

    out.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(out)
    labels = {i: f"label_{chr(ord('a') + i)}" for i in range(num_labels)}
    causal = arch.replace("ForSequenceClassification", "ForCausalLM")
    config = _model_config(causal, vocab_size=len(tok), bos_id=tok.bos_token_id, eos_id=tok.eos_token_id,
                           pad_token_id=tok.pad_token_id, num_labels=num_labels, id2label=labels,
                           label2id={v: k for k, v in labels.items()}, **overrides)
    model = getattr(transformers, arch)(config).to(torch.float32)
    _randomize(model, seed)
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def hf_decoder_logits(model_dir: Path, texts: list[str | tuple[str, str]]) -> torch.Tensor:
    """transformers' logits [len(texts), num_labels], one text (or pair) at a time, float32.
    A pair is the tokenizer's pair encoding, without token types (a decoder has none)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for text in texts:
            pair = text if isinstance(text, tuple) else (text,)
            ids = tokenizer(*pair, return_tensors="pt")["input_ids"]
            out.append(model(input_ids=ids).logits[0])
    return torch.stack(out)


class _RewardReference(torch.nn.Module):
    """vLLM's Qwen2ForRewardModel in plain torch: transformers' Qwen2Model, then the MLP head."""

    def __init__(self, config) -> None:
        import transformers

        super().__init__()
        self.model = transformers.Qwen2Model(config)
        hidden = config.hidden_size
        self.score = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
                                         torch.nn.Linear(hidden, 1))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.score(self.model(input_ids=input_ids).last_hidden_state)


def build_reward_model(out: Path, seed: int = 0) -> tuple[Path, _RewardReference]:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(out)
    config = _model_config("Qwen2ForCausalLM", vocab_size=len(tok), bos_id=tok.bos_token_id,
                           eos_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    reference = _RewardReference(config).to(torch.float32).eval()
    _randomize(reference, seed)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    config.architectures = ["Qwen2ForRewardModel"]
    config.save_pretrained(str(out))
    assert json.loads((out / "config.json").read_text())["architectures"] == ["Qwen2ForRewardModel"]
    return out, reference
