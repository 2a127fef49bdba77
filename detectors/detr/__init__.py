"""Our DETR: official-checkpoint-compatible model, checkpoints, postprocessing, Cal-DETR modulation, ensemble adapter.

Training (set criterion, matcher, students, Cal-DETR logit mixing) lives in :mod:`detectors.detr.training`,
which this package does not import.

Example:
    >>> from detectors.detr import build_detr, nested_batch, postprocess
    >>> model = build_detr("detr_tiny", num_classes=3).eval()
    >>> images, mask = nested_batch([torch.rand(3, 64, 80), torch.rand(3, 96, 64)])
    >>> dets = postprocess(model(images, mask), [(64, 80), (96, 64)], top_k=5)
"""

from .calibration import modulate_logits, query_uncertainty
from .checkpoint import load_checkpoint, load_official, save_checkpoint
from .deformable_detr import DeformableDETR
from .model import DETR, PRESETS, DetrConfig, build_detr
from .postprocess import postprocess
from .preprocess import nested_batch, resize_shorter_side

__all__ = [
    "DETR",
    "PRESETS",
    "DeformableDETR",
    "DetrConfig",
    "build_detr",
    "load_checkpoint",
    "load_official",
    "modulate_logits",
    "nested_batch",
    "postprocess",
    "query_uncertainty",
    "resize_shorter_side",
    "save_checkpoint",
]
