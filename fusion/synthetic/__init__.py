"""Generated COCO-format data, so that the demo, the tests and the benchmarks run offline, without downloads.

Three generators, each for what it is good at:

* :mod:`~fusion.synthetic.objects`: a dataset of objects of all scales and simulated detectors that err in
  recognisable ways (misses, jitter, false positives, wrong labels, over/under-confidence): the demo's data.
* :mod:`~fusion.synthetic.evaluation`: fast vectorised ground truth and results with the cases that trip COCO
  evaluation (crowd, tiny and huge boxes, empty images, categories without detections): tests and scoring benchmarks.
* :mod:`~fusion.synthetic.miscalibrated`: members whose scores are a known distortion of their true reliability
  (each box is right with a latent probability ``q``): calibration tests and benchmark.
"""

from fusion.synthetic.evaluation import synthetic_annotations, synthetic_predictions
from fusion.synthetic.miscalibrated import simulate_miscalibrated_member
from fusion.synthetic.objects import SimulatedMember, default_members, make_coco_ground_truth, simulate_member

__all__ = [
    "SimulatedMember",
    "default_members",
    "make_coco_ground_truth",
    "simulate_member",
    "simulate_miscalibrated_member",
    "synthetic_annotations",
    "synthetic_predictions",
]
