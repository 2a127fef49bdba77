"""Training and distillation jobs: the generic loop, data, checkpoints and the contract trainable detectors meet.

The core never imports ``detectors``: a detector plugin makes itself trainable by implementing
:meth:`fusion.detector.Detector.trainable`, which returns a :class:`~fusion.training.trainable.Trainable`.
"""

from fusion.training.trainable import ExternalTrainJob, NotTrainableError, Trainable, TrainTarget

__all__ = ["ExternalTrainJob", "NotTrainableError", "TrainTarget", "Trainable"]
