"""Cal-DETR's logit-mixing regulariser (Munir et al., NeurIPS 2023), the training half of Cal-DETR.

Over the matched (positive) queries of the last layer, ``z̃_i = λ·z_i + (1 − λ)·z̄`` with ``z̄`` the mean
positive logit (the prototype); the soft target is ``λ·onehot(y_i) + (1 − λ)·mean_j onehot(y_j)``; loss =
soft-target cross-entropy, weight 0.5, λ = 0.9. DETR uses softmax CE, so this uses softmax CE as well (the
paper's Deformable-DETR variant uses focal loss). The inference half (uncertainty, logit modulation) is
:mod:`detectors.detr.calibration`. The released code never adds this loss to the total; we do.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["logit_mixing_loss"]


def logit_mixing_loss(pos_logits: Tensor, pos_labels: Tensor, lam: float = 0.9) -> Tensor:
    """Cal-DETR's logit-mixing regulariser over the positive (matched) queries.

    Args:
        pos_logits: Logits of the matched queries ``[P, C+1]``.
        pos_labels: Their ground-truth classes ``[P]``.
        lam: Mixing coefficient λ (paper: 0.9).

    Returns:
        Scalar soft-target cross-entropy of the mixed logits (0 when there are no positives).
    """
    if pos_logits.shape[0] == 0:
        return pos_logits.sum() * 0.0
    prototype = pos_logits.mean(0, keepdim=True)
    mixed = lam * pos_logits + (1 - lam) * prototype
    onehot = F.one_hot(pos_labels.long(), pos_logits.shape[-1]).to(pos_logits.dtype)
    target = lam * onehot + (1 - lam) * onehot.mean(0, keepdim=True)
    return -(target * F.log_softmax(mixed.float(), dim=-1)).sum(-1).mean()
