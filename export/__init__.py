"""ONNX export and TensorRT engines (imported as lift_rt.export).

- ``onnx_export``: the pipeline (normalise -> ViT facet -> LiFT x k) as one ONNX graph, and its parity check.
- ``cache``: artifacts on disk keyed by everything they depend on; stale or corrupt files are rebuilt.
- ``trt_engine``: TensorRT engine build / load (strongly typed, batch profile, timing cache).
- ``python -m lift_rt.export``: the command line.

The ``onnxruntime`` and ``tensorrt`` Engine backends that run these artifacts are in :mod:`lift_rt.backends`.
"""
