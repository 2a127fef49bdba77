"""Training room of our DETR: Hungarian matcher, set criterion (with Cal-DETR logit mixing), train step, students,
and the fast DETR's losses (focal, encoder proposals, query groups, denoising: :mod:`.fast_losses`).

Not imported by :mod:`detectors.detr` (inference stays light); ``fusion train`` reaches it through
``DetrDetector.trainable``.

Example:
    >>> from detectors.detr import build_detr, nested_batch
    >>> from detectors.detr.training import SetCriterion, train_step
    >>> model = build_detr("detr_tiny", num_classes=3)
    >>> criterion = SetCriterion(num_classes=3)
"""

from .criterion import SetCriterion, train_step
from .fast_losses import FocalHungarianMatcher, FocalSetCriterion, GroupSetLoss, criterion_for
from .logit_mixing import logit_mixing_loss
from .matcher import HungarianMatcher, Target
from .student import StudentPlan, build_student, ffn_importance, head_importance, plan_student

__all__ = [
    "FocalHungarianMatcher",
    "FocalSetCriterion",
    "GroupSetLoss",
    "HungarianMatcher",
    "SetCriterion",
    "StudentPlan",
    "Target",
    "build_student",
    "criterion_for",
    "ffn_importance",
    "head_importance",
    "logit_mixing_loss",
    "plan_student",
    "train_step",
]
