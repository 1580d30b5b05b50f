"""How a pretrained encoder is adapted: trained in full, frozen, or through peft LoRA adapters."""

from __future__ import annotations

from torch import nn


def apply_finetune(module: nn.Module, mode: str, rank: int, targets: list[str]) -> nn.Module:
    """full: train everything; frozen: no gradients; lora: peft LoRA adapters on ``targets`` only."""
    if mode == "full":
        return module
    if mode == "frozen":
        return module.requires_grad_(False)
    if mode == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        if not targets:
            return module.requires_grad_(False)  # nothing LoRA can adapt (e.g. a CNN): keep it frozen
        module = inject_adapter_in_model(
            LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets), module
        )
        for name, param in module.named_parameters():
            param.requires_grad_("lora_" in name)
        return module
    raise ValueError(f"finetune must be full, frozen or lora, got {mode!r}")
