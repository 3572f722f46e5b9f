"""torch-isda: Implicit Semantic Data Augmentation for PyTorch."""

__version__ = "0.1.0"
