"""Factories for ``vllm-bi check package.module:factory`` in the CLI tests."""

from __future__ import annotations

import torch


class RowMLP(torch.nn.Module):
    """Linear -> log_softmax over rows: batch-invariant exactly when its kernels are."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(32, 48)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.proj(x), dim=-1)


def module_and_probe() -> tuple[torch.nn.Module, torch.Tensor]:
    return RowMLP(), torch.randn(1, 32, generator=torch.Generator().manual_seed(1))


def module_only() -> torch.nn.Module:
    return RowMLP()
