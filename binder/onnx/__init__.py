"""binder models as ONNX graphs run by onnxruntime (``binder export``, ``binder.load(dir, runtime="onnx")``).

:mod:`binder.onnx.export` writes every encoder of a model (and the anchor's image and text
towers) as one ONNX graph each, with the preprocessing config and the SHA-256 of every file in
``binder-onnx.json``; with ``quantize="int8"``, their matrix products get dynamic int8
quantization (onnxruntime's ``quantize_dynamic``: int8 weights, activations quantized per batch).
:mod:`binder.onnx.runtime` loads such a folder as a model with binder's API (``embed``,
``compose``, indexes, the search page) whose encoders run in onnxruntime while preprocessing
stays binder's own (PyTorch/numpy); the folder is registered as the ``onnx`` model format.
"""
