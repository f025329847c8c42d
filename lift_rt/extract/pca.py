"""Channel PCA for stored features: fitted once on a sample, then every feature map is projected to K channels."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save_file

from lift_rt.files import atomic_path

MAX_FIT_VECTORS = 200_000  # feature vectors (cells) the fit keeps, drawn evenly with a fixed seed

@dataclass(frozen=True)
class ChannelPCA:
    """``mean`` (C) and orthonormal ``components`` (K x C), float32; ``relative_error`` measured on the fit sample.

    ``relative_error`` is ``||x - reconstruct(project(x))|| / ||x||`` over every fitted cell's
    feature vector x (Frobenius norms), the error a reader should expect on images like the sample.
    """

    mean: torch.Tensor
    components: torch.Tensor
    relative_error: float

    @property
    def k(self) -> int:
        return self.components.shape[0]

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """``... x C x h x w`` -> ``... x K x h x w`` float32."""
        centred = features.float() - self.mean.to(features.device)[:, None, None]
        return torch.einsum("kc,...chw->...khw", self.components.to(features.device), centred)

    def reconstruct(self, projected: torch.Tensor) -> torch.Tensor:
        """``... x K x h x w`` -> ``... x C x h x w`` float32 (the features, up to ``relative_error``)."""
        restored = torch.einsum("kc,...khw->...chw", self.components.to(projected.device), projected.float())
        return restored + self.mean.to(projected.device)[:, None, None]

    def save(self, path: str | os.PathLike) -> None:
        """Atomically (temp file, then rename) as safetensors, the error in its metadata."""
        with atomic_path(path) as tmp:
            save_file({"mean": self.mean.contiguous(), "components": self.components.contiguous()}, tmp,
                      metadata={"relative_error": repr(self.relative_error)})

    @classmethod
    def load(cls, path: str | os.PathLike) -> ChannelPCA:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            error = float(f.metadata()["relative_error"])
        tensors = load_file(str(path))
        return cls(tensors["mean"], tensors["components"], error)

def fit_pca(feature_maps: list[torch.Tensor], k: int) -> ChannelPCA:
    """Top-``k`` principal directions of the channels of ``C x h x w`` maps (every cell one sample, at most
    :data:`MAX_FIT_VECTORS` of them), by an eigendecomposition of the covariance in float64."""
    vectors = torch.cat([m.float().flatten(1).T for m in feature_maps])  # N x C
    channels = vectors.shape[1]
    if not 1 <= k <= channels:
        raise ValueError(f"--pca {k}: must lie in 1..{channels} (the feature width)")
    if vectors.shape[0] > MAX_FIT_VECTORS:
        keep = torch.randperm(vectors.shape[0], generator=torch.Generator().manual_seed(0))[:MAX_FIT_VECTORS]
        vectors = vectors[keep.sort().values]
    data = vectors.double()
    mean = data.mean(0)
    centred = data - mean
    _, eigenvectors = torch.linalg.eigh(centred.T @ centred / data.shape[0])
    components = eigenvectors[:, -k:].flip(1).T.contiguous()  # largest first
    restored = (centred @ components.T) @ components + mean
    error = float((data - restored).norm() / data.norm().clamp_min(1e-30))
    return ChannelPCA(mean.float(), components.float(), error)
