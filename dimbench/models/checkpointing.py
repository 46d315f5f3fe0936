"""Activation checkpointing of whole blocks (timm's ``set_grad_checkpointing``): a block's
activations are recomputed in backward instead of kept, for the largest training runs."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def run_block(block: nn.Module, checkpointed: bool, *args: torch.Tensor) -> torch.Tensor:
    """``block(*args)``, checkpointed when asked for and gradients are being recorded."""
    if checkpointed and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False)
    return block(*args)


class GradCheckpointing:
    """Mixin: ``model.set_grad_checkpointing(True)`` recomputes every block in backward."""

    grad_checkpointing: bool = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
