"""Multi-LoRA serving: PEFT adapters on one base model, batched per token in every step.

request.py   LoRARequest (the user-facing handle, as vLLM's)
peft.py      reading and validating PEFT adapter directories
config.py    LoRAConfig (the engine's LoRA settings)
ops.py       shrink / expand: PyTorch reference and the Triton dispatch
triton_lora.py  the SGMV-style Triton kernels
layers.py    LoRALinear, the wrapper around a base linear layer
manager.py   the worker side: device slots, host LRU, the per-step token -> slot mapping
scheduling.py  the scheduler side: at most max_loras adapters per step; the lora_requests_info stats
registry.py  the frontend side: adapter names -> LoRARequest (server --lora-modules, runtime load)
"""

from pagedlm.lora.request import LoRARequest

__all__ = ["LoRARequest"]
