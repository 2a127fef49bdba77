"""Generated COCO-format data, so that the demo, the tests and the benchmarks run offline, without downloads.

Three generators, each for what it is good at:

* :mod:`~fusion.synthetic.objects`: a dataset of objects of all scales and simulated detectors that err in
  recognisable ways (misses, jitter, false positives, wrong labels, over/under-confidence): the demo's data.
* :mod:`~fusion.synthetic.evaluation`: fast vectorised ground truth and results with the cases that trip COCO
  evaluation (crowd, tiny and huge boxes, empty images, categories without detections): tests and scoring benchmarks.
* :mod:`~fusion.synthetic.render`: rendered IMAGES of shapes with COCO annotations (train/val/test/unlabeled),
  deterministic across platforms: training data for real detectors and the test images of trained members.
* :mod:`~fusion.synthetic.miscalibrated`: members whose scores are a known distortion of their true reliability
  (each box is right with a latent probability ``q``): calibration tests and benchmark.
"""

from fusion.synthetic.evaluation import synthetic_annotations, synthetic_predictions
from fusion.synthetic.miscalibrated import simulate_miscalibrated_member
from fusion.synthetic.objects import SimulatedMember, default_members, make_coco_ground_truth, simulate_member
from fusion.synthetic.render import CLASSES as RENDER_CLASSES
from fusion.synthetic.render import render_dataset
from fusion.synthetic.render_scene import RenderConfig

__all__ = [
    "RENDER_CLASSES",
    "RenderConfig",
    "SimulatedMember",
    "default_members",
    "make_coco_ground_truth",
    "render_dataset",
    "simulate_member",
    "simulate_miscalibrated_member",
    "synthetic_annotations",
    "synthetic_predictions",
]
