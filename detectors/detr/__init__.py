"""Our DETR: official-checkpoint-compatible model, students, set loss, Cal-DETR calibration, ensemble adapter.

Example:
    >>> from detectors.detr import build_detr, nested_batch, postprocess
    >>> model = build_detr("detr_tiny", num_classes=3).eval()
    >>> images, mask = nested_batch([torch.rand(3, 64, 80), torch.rand(3, 96, 64)])
    >>> dets = postprocess(model(images, mask), [(64, 80), (96, 64)], top_k=5)
"""

from .calibration import logit_mixing_loss, modulate_logits, query_uncertainty
from .checkpoint import load_checkpoint, load_official, save_checkpoint
from .criterion import SetCriterion, train_step
from .deformable_detr import DeformableDETR
from .matcher import HungarianMatcher
from .model import DETR, PRESETS, DetrConfig, build_detr
from .postprocess import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh, postprocess
from .preprocess import nested_batch, resize_shorter_side
from .student import StudentPlan, build_student, plan_student

__all__ = [
    "DETR",
    "PRESETS",
    "DeformableDETR",
    "DetrConfig",
    "HungarianMatcher",
    "SetCriterion",
    "StudentPlan",
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "build_detr",
    "build_student",
    "load_checkpoint",
    "load_official",
    "logit_mixing_loss",
    "modulate_logits",
    "nested_batch",
    "plan_student",
    "postprocess",
    "query_uncertainty",
    "resize_shorter_side",
    "save_checkpoint",
    "train_step",
]
