"""Picking a batch's patch and text tokens out of a layer's activations."""

from __future__ import annotations

import torch


def trim_text(text_pos: torch.Tensor, text_valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The text positions and validity [B, Tm] cut after the batch's last valid text token."""
    last = text_valid * torch.arange(1, text_valid.shape[1] + 1, device=text_valid.device)
    width = int(last.max().item()) if text_valid.numel() else 0
    return text_pos[:, :width], text_valid[:, :width]


def gather_tokens(acts: torch.Tensor, pos: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """acts[b, pos[b, j]] for every b, j as [B, J, N], written to `out` ([B * J, N], rows may be strided)."""
    B, J = pos.shape
    rows = (torch.arange(B, device=acts.device)[:, None] * acts.shape[1] + pos).reshape(-1)
    return torch.index_select(acts.reshape(-1, acts.shape[2]), 0, rows, out=out).view(B, J, out.shape[-1])
