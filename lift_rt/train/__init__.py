"""Self-supervised LiFT training (``python -m lift_rt.train --help``).

The recipe of the paper: a frozen backbone gives features of an image and of its
2x / 4x decimations; the upsampler learns to lift the coarser features onto the
finer ones (:mod:`lift_rt.train.losses`). :mod:`lift_rt.train.loop` runs it on
one process or many (``torchrun``); :mod:`lift_rt.train.state` saves and resumes.
"""

from lift_rt.train.losses import LOSSES, TwoScaleObjective, cosine_loss, feature_pyramid, mean_cosine, two_scale_loss
from lift_rt.train.loop import TrainConfig, Trainer, default_batch, train
from lift_rt.train.models import build_trainable, load_upsampler
from lift_rt.train.state import load_training_checkpoint, save_training_checkpoint, sidecar_path

__all__ = [
    "LOSSES", "TrainConfig", "Trainer", "TwoScaleObjective", "build_trainable",
    "cosine_loss", "default_batch", "feature_pyramid", "load_training_checkpoint", "load_upsampler",
    "mean_cosine", "save_training_checkpoint", "sidecar_path", "train", "two_scale_loss",
]
