"""Direct preference optimisation on chosen/rejected pairs from corrections.

``loss = -log sigmoid(beta * ((c - c_ref) - (r - r_ref)))`` where ``c``/``r`` are the summed
log-probs of the chosen/rejected action under the policy and ``*_ref`` under the frozen
reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair DPO loss ``[B]`` and the implicit reward margins ``[B]`` (no grad)."""
    margin = (chosen - ref_chosen) - (rejected - ref_rejected)
    return -F.logsigmoid(beta * margin), margin.detach()
