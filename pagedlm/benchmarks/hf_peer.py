"""The transformers peer: static-batch `generate` over the same requests, same card."""

from __future__ import annotations

import time

import torch

from pagedlm.benchmarks.throughput import summarize


def load_hf_model(model_dir: str, dtype: torch.dtype, device: str, dummy: bool, seed: int = 0):
    from transformers import AutoConfig, AutoModelForCausalLM

    if not dummy:
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    config = AutoConfig.from_pretrained(model_dir)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    # Random weights drawn the way pagedlm's dummy loader draws them (values do not change speed).
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.uniform_(-0.05, 0.05)
    return model.eval()


@torch.inference_mode()
def run_hf(model, requests, batch_size: int, device: str) -> dict:
    """Static batches in arrival order; each batch runs until its longest output (the
    padding waste is the point of the comparison). Only requested tokens are counted."""
    pad_id = 0
    start = time.perf_counter()
    for i in range(0, len(requests), batch_size):
        batch = requests[i : i + batch_size]
        width = max(len(r.prompt_token_ids) for r in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, r in enumerate(batch):  # left padding, as decoder-only generation needs
            ids[row, width - len(r.prompt_token_ids):] = torch.tensor(r.prompt_token_ids)
            mask[row, width - len(r.prompt_token_ids):] = 1
        max_new = max(r.output_len for r in batch)
        model.generate(ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new, min_new_tokens=max_new,
                       do_sample=True, temperature=1.0, top_p=1.0, top_k=0, pad_token_id=pad_id)
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    num_in = sum(len(r.prompt_token_ids) for r in requests)
    num_out = sum(r.output_len for r in requests)
    return summarize(f"transformers generate (static batch {batch_size})", len(requests), num_in, num_out, elapsed)
