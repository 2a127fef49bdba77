"""Cal-DETR (Munir et al., NeurIPS 2023), inference half: uncertainty from the decoder layers, logit modulation.

* Uncertainty: ``u = Var_l(z_l)`` — the variance of each query's class logits over the ``L`` decoder layers
  (population variance, i.e. the mean squared deviation over layers), ``[B, Q, C+1]``.
* Modulation (inference and training): ``z' = z_L · (1 − tanh(u))`` — uncertain logits shrink towards 0.
* Logit mixing (training regulariser) lives with the other losses in
  :mod:`detectors.detr.training.logit_mixing`.

Everything is off by default (``DetrConfig.uncertainty_modulation``, ``SetCriterion(mixing_weight=...)``).

Note: the released Cal-DETR code has two bugs that this module does NOT reproduce: it computes
``z - tanh(u)`` (operator precedence: ``logits - torch.tanh(u)`` instead of ``logits * (1 - torch.tanh(u))``),
and it never adds the logit-mixing loss to the total loss. We implement the paper's formulas.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["layer_logits", "modulate_logits", "query_uncertainty"]


def layer_logits(outputs: Mapping[str, Any]) -> Tensor:
    """Stack the class logits of every decoder layer: aux outputs then the final one, ``[L, B, Q, C+1]``."""
    aux = outputs.get("aux_outputs") or []
    if not aux:
        raise ValueError("uncertainty needs 'aux_outputs' (build the model with aux_loss=True)")
    return torch.stack([a["pred_logits"] for a in aux] + [outputs["pred_logits"]])


def query_uncertainty(logits: Tensor | Mapping[str, Any]) -> Tensor:
    """Per query and class, the variance of the logits over decoder layers.

    Args:
        logits: ``[L, B, Q, C+1]`` stacked layer logits, or a model output dict (uses :func:`layer_logits`).

    Returns:
        ``u`` ``[B, Q, C+1]`` = ``mean_l (z_l − mean_l z_l)²`` (population variance; ``L >= 2`` needed).
    """
    stacked = logits if isinstance(logits, Tensor) else layer_logits(logits)
    if stacked.shape[0] < 2:
        raise ValueError(f"uncertainty needs >= 2 decoder layers, got {stacked.shape[0]}")
    return stacked.float().var(dim=0, unbiased=False).to(stacked.dtype)


def modulate_logits(logits: Tensor, uncertainty: Tensor) -> Tensor:
    """Cal-DETR's uncertainty-guided modulation ``z · (1 − tanh(u))`` (NOT the released code's ``z − tanh(u)``)."""
    return logits * (1 - torch.tanh(uncertainty))
