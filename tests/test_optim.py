"""The fused AdamW that mimkit trains with makes the same updates as torch's reference AdamW."""

from __future__ import annotations

import torch
from torch import nn

from mimkit.engine.optim import adamw, build_optimizer


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.Linear(32, 4))


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 5) -> None:
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        model(torch.randn(8, 16, generator=generator)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def test_adamw_is_fused_on_cpu_and_matches_the_reference_update():
    fused_model, reference_model = _model(), _model()
    fused = build_optimizer(fused_model, lr=1e-2, weight_decay=0.05, betas=(0.9, 0.95))
    assert fused.defaults["fused"] is True
    by_name = dict(reference_model.named_parameters())
    names = {id(p): n for n, p in fused_model.named_parameters()}
    reference_groups = [
        {"params": [by_name[names[id(p)]] for p in group["params"]], "weight_decay": group["weight_decay"]}
        for group in fused.param_groups
    ]
    reference = torch.optim.AdamW(reference_groups, lr=1e-2, betas=(0.9, 0.95), foreach=False)
    _train(fused_model, fused)
    _train(reference_model, reference)
    for (name, a), b in zip(fused_model.named_parameters(), reference_model.parameters(), strict=True):
        assert not torch.equal(a, _model().state_dict()[name]), name
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_adamw_falls_back_to_the_default_update_where_no_fused_kernel_exists():
    assert adamw([nn.Parameter(torch.zeros(3, dtype=torch.float64))], lr=1e-3).defaults["fused"] is True
    assert adamw([nn.Parameter(torch.zeros(2, device="meta"))], lr=1e-3).defaults["fused"] is None
