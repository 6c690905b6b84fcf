"""HigherPose: bottom-up multi-person pose estimation (HigherHRNet + structure-aware head).

``from higherpose import PoseEstimator`` is the inference API (:mod:`higherpose.apis.estimator`); it
is imported on first use, so ``import higherpose.config`` stays light.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Person", "PoseEstimator", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("PoseEstimator", "Person"):
        from higherpose.apis import estimator

        return getattr(estimator, name)
    raise AttributeError(f"module 'higherpose' has no attribute {name!r}")
