"""Tiny random *ForSequenceClassification checkpoints (BERT, RoBERTa) with a WordPiece / BPE
tokenizer, written by the tests (no download), and transformers' reference outputs."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "hello", "world", "paged", "attention",
         "what", "is", "capital", "of", "france", "paris", "berlin", "a", "city"]


def _randomize(model: torch.nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # larger than HF's init so differences (token types!) show
            p.normal_(0.0, 0.2)


def build_bert_classifier(out: Path, num_labels: int, seed: int = 0, **overrides) -> Path:
    import transformers

    out.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + [f"w{i}" for i in range(70)]
    transformers.BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(str(out))
    labels = {i: f"label_{chr(ord('a') + i)}" for i in range(num_labels)}
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                                     num_labels=num_labels, id2label=labels,
                                     label2id={v: k for k, v in labels.items()}, **overrides)
    model = transformers.BertForSequenceClassification(config)
    _randomize(model, seed)
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def build_roberta_classifier(out: Path, num_labels: int, seed: int = 0) -> Path:
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    out.mkdir(parents=True, exist_ok=True)
    vocab = ["<s>", "<pad>", "</s>", "<unk>"] + WORDS + [f"w{i}" for i in range(70)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    from tokenizers import processors

    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), add_prefix_space=False,
                                                      trim_offsets=False)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                sep_token="</s>", cls_token="<s>", pad_token="<pad>",
                                                unk_token="<unk>", model_input_names=["input_ids", "attention_mask"])
    fast.save_pretrained(str(out))
    config = transformers.RobertaConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=66,
                                        pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1,
                                        num_labels=num_labels)
    model = transformers.RobertaForSequenceClassification(config)
    _randomize(model, seed)
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def hf_logits(model_dir: Path, texts: list[str | tuple[str, str]]) -> list[torch.Tensor]:
    """transformers' logits, one text (or pair) at a time, float32."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for text in texts:
            enc = tokenizer(*text, return_tensors="pt") if isinstance(text, tuple) else tokenizer(text, return_tensors="pt")
            out.append(model(**enc).logits[0])
    return out
