"""Adapters for the tests, made with peft on the tiny checkpoints, and their merged
transformers reference."""

from __future__ import annotations

from pathlib import Path

import torch

ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(base_path: str, out_dir: str | Path, targets: list[str], r: int = 8, alpha: float = 16,
                 seed: int = 0, use_rslora: bool = False, std: float = 0.1) -> str:
    """A PEFT adapter with non-zero A and B (peft starts B at zero: a no-op adapter)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=targets,
                                                  use_rslora=use_rslora, lora_dropout=0.0))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    peft_model.save_pretrained(str(out_dir))
    return str(out_dir)


def merged_model(base_path: str, adapter_dir: str | None):
    """transformers + PEFT with the adapter merged into the weights, float32 (the oracle)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    return model.eval()


def reference(model, prompts: list[list[int]], max_tokens: int) -> list[tuple[list[int], list[torch.Tensor]]]:
    results = []
    for prompt in prompts:
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                                 do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0)
        results.append((out.sequences[0, len(prompt):].tolist(),
                        [step[0].float().log_softmax(-1) for step in out.logits]))
    return results


def check_close(ref: list[tuple[list[int], list[torch.Tensor]]], outputs, num_logprobs: int, what: str) -> None:
    """Greedy ids and logprobs equal the reference (1e-4); where a token differs, vLLM's rule:
    each side's token is in the other's top-k, and the comparison stops there."""
    for (ref_ids, ref_lps), out in zip(ref, outputs):
        completion = out.outputs[0]
        assert len(completion.token_ids) == len(ref_ids), what
        for pos, (ref_id, ours_id) in enumerate(zip(ref_ids, completion.token_ids)):
            ours = completion.logprobs[pos]
            if ref_id != ours_id:
                assert ours_id in torch.topk(ref_lps[pos], num_logprobs).indices.tolist() and ref_id in ours, (
                    f"{what}: diverged at {pos}: hf {ref_id}, pagedlm {ours_id}")
                break
            assert abs(ours[ours_id].logprob - ref_lps[pos][ref_id].item()) < 1e-4, what


def assert_same(ref_outputs, outputs, num_logprobs: int) -> None:
    """Two pagedlm runs agree: ids, and top-k logprobs to 1e-4 (vLLM's rule where a token differs)."""
    for r, o in zip(ref_outputs, outputs, strict=True):
        ref_c, our_c = r.outputs[0], o.outputs[0]
        assert len(our_c.token_ids) == len(ref_c.token_ids)
        for pos, (ref_id, our_id) in enumerate(zip(ref_c.token_ids, our_c.token_ids)):
            ref_lp, our_lp = ref_c.logprobs[pos], our_c.logprobs[pos]
            if ref_id != our_id:
                assert our_id in ref_lp and ref_id in our_lp, f"diverged at {pos}"
                break
            for tid, lp in ref_lp.items():
                if lp.rank <= num_logprobs:
                    assert tid in our_lp and abs(our_lp[tid].logprob - lp.logprob) < 1e-4, (pos, tid)
