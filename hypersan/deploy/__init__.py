"""Deployment: a pruned network as a file others can run.

Modules: `quantize` (INT8 weights), `export` (safetensors + JSON, `.pt2`, ONNX, atomically written), `runtimes`
(load an exported file in eager, `torch.export` or ONNX Runtime).

Imports: the package root and `nn` (the pruned network it writes). It knows nothing of the engine.
"""
