"""HigherPose: bottom-up multi-person pose estimation (HigherHRNet + structure-aware head)."""

__version__ = "0.1.0"
