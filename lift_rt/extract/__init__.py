"""Dense LiFT features for a whole image collection, stored as safetensors shards (``python -m lift_rt.extract``).

- ``inputs``: the image list, the shard layout, decoding in DataLoader workers.
- ``shards``: shard files and records on disk, the writer thread.
- ``pca``: the optional channel PCA.
- ``run``: one run (resume check, PCA fit, decode -> compute -> write, index merge), one or many processes.
- ``store``: :class:`FeatureStore`, the reader (also ``lift_rt.FeatureStore``).
"""

from lift_rt.extract.store import FeatureStore

__all__ = ["FeatureStore"]
