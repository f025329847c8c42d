"""lift_rt: an inference runtime for LiFT, the lightweight feature transform for dense ViT descriptors."""

import logging

from lift_rt.backbones import BACKBONES, BackboneSpec, ViTFeatures, WeightsNotFoundError, build_backbone, get_spec
from lift_rt.backends import BackendUnavailable
from lift_rt.checkpoint import load_lift, save_lift
from lift_rt.engine import Engine, build_pipeline
from lift_rt.extract import FeatureStore
from lift_rt.model import LiFT
from lift_rt.pipeline import LiftPipeline
from lift_rt.upsamplers import UPSAMPLERS, build_upsampler

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())  # quiet unless the application configures logging

__all__ = [
    "BACKBONES", "BackboneSpec", "BackendUnavailable", "Engine", "FeatureStore", "LiFT", "LiftPipeline", "UPSAMPLERS",
    "ViTFeatures", "WeightsNotFoundError", "build_backbone", "build_pipeline", "build_upsampler", "get_spec",
    "load_lift", "save_lift",
]
