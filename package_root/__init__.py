"""VeloxSeg engine: CPU inference for the VeloxSeg 3D segmentation network.

Subpackages: ``model`` (PyTorch architecture), ``export`` (PyTorch to ONNX), ``runtime``
(torch-free inference), ``cli`` (the ``veloxseg`` command) and ``train``.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
