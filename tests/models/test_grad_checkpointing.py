"""Block checkpointing recomputes activations in backward and changes nothing else."""

import pytest
import torch

from dimbench.registry import create_model


@pytest.mark.parametrize("name", ["DiM-T/2", "DiT-T/2", "U-ViT-T/2"])
def test_checkpointed_blocks_give_the_same_outputs_and_gradients(name):
    torch.manual_seed(0)
    model = create_model(name, 64)
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([3.0, 500.0]), torch.tensor([1, 2])

    def grads():
        model.zero_grad()
        out = model(x, t, y)
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain, plain_grads = grads()
    model.set_grad_checkpointing(True)
    ckpt, ckpt_grads = grads()
    assert torch.equal(plain, ckpt) and len(plain_grads) == len(ckpt_grads)
    for a, b in zip(plain_grads, ckpt_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with torch.no_grad():  # no recording, no recompute
        assert torch.equal(model(x, t, y), plain)
