"""``PoseEstimator``: a trained model, its test protocol and its grouping as one object called on images.

    from higherpose import PoseEstimator

    estimator = PoseEstimator.from_config("experiments/coco/higher_hrnet/w32_512_adam_lr1e-3.yaml",
                                          "models/pose_higher_hrnet_w32_512.pth")
    for person in estimator("image.jpg"):          # or a BGR array, or a list of either
        print(person.score, person.keypoints)      # (K, 3): x, y, score in image pixels

Everything but the images comes from the config, as in ``tools/valid.py``: the test input size,
``TEST.SCALE_FACTOR`` (multi-scale), ``TEST.FLIP_TEST``, ``TEST.ADJUST`` / ``TEST.REFINE``, and
``TEST.IMAGES_PER_GPU`` images per forward (same-size images only). On the CPU a list of images is
split over ``TEST.CPU_IMAGE_THREADS`` threads (:class:`~higherpose.core.predictor.Predictor`, which
``tools/valid.py`` runs too). ``demo.py`` and ``export_onnx.py`` predict through it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Union

import cv2
import numpy as np
import torch
from torch import nn

from higherpose.core.predictor import Predictor
from higherpose.dataset.specs import spec_from_cfg

Image = Union[np.ndarray, str, os.PathLike]  # noqa: UP007 (a runtime alias; X | Y needs Python 3.10 objects)


@dataclass(frozen=True)
class Person:
    """One detected person: ``keypoints`` (K, 3) = (x, y, score) in image pixels, the person ``score``
    (mean of its joints' heatmap values, as HigherHRNet) and the dataset's joint ``names`` (K,)."""

    keypoints: np.ndarray
    score: float
    names: tuple[str, ...]

    def as_dict(self) -> dict[str, tuple[float, float, float]]:
        """``{joint name: (x, y, score)}``."""
        return {name: (float(x), float(y), float(s)) for name, (x, y, s) in zip(self.names, self.keypoints)}


def load_image(image: Image) -> np.ndarray:
    """An RGB uint8 (H, W, 3) copy of ``image``: a BGR array as OpenCV reads it, or an image file."""
    if isinstance(image, (str, os.PathLike)):
        bgr = cv2.imread(os.fspath(image), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"{os.fspath(image)}: cannot read the image (missing or not an image file)")
        image = bgr
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        raise ValueError(f"an image must be a BGR uint8 array (H, W, 3) or a path, not {type(image).__name__} {shape}")
    return np.ascontiguousarray(image[..., ::-1])


class PoseEstimator(Predictor):
    """Multi-person poses for images; see the module docstring.

    Args:
        cfg: the merged config (its ``TEST.*``, ``DATASET.*`` and ``MODEL.*``).
        model: the network in eval mode on its device, or any callable ``(B, 3, H, W) tensor -> list of
            stage outputs`` (e.g. :class:`~higherpose.apis.onnx_export.OnnxPoseNet`).
    """

    def __init__(self, cfg: Any, model: nn.Module | Callable[[torch.Tensor], Any]):
        super().__init__(cfg, model)
        spec = spec_from_cfg(cfg)
        self.keypoint_names: tuple[str, ...] = tuple(spec.joint_names)[: self.parser.params.num_joints]

    @classmethod
    def from_config(
        cls,
        config: str | os.PathLike | Any,
        weights: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        opts: Sequence[str] = (),
        random_weights: bool = False,
    ) -> PoseEstimator:
        """Build the network of ``config`` (a YAML path or a config object; ``opts``: ``KEY VALUE``
        overrides) and load ``weights`` (default ``TEST.MODEL_FILE``) strictly, on ``device``
        (default ``DEVICE``: CUDA when available). ``random_weights``: no weights (smoke runs only)."""
        from higherpose.apis.eval_model import load_eval_model
        from higherpose.config import cfg as default_cfg
        from higherpose.config import update_config

        extra = [str(o) for o in opts]
        if weights is not None:
            extra += ["TEST.MODEL_FILE", os.fspath(weights)]
        if isinstance(config, (str, os.PathLike)):
            cfg = default_cfg.clone()
            update_config(cfg, argparse.Namespace(cfg=os.fspath(config), opts=extra))
        else:
            cfg = config.clone()
            cfg.defrost()
            cfg.merge_from_list(extra)
            cfg.freeze()
        model, _, _ = load_eval_model(cfg, random_weights=random_weights, device=device, optimize=True)
        return cls(cfg, model)

    def __call__(self, images: Image | Sequence[Image]) -> list[Person] | list[list[Person]]:
        """The persons of one image (a BGR array or a path), or a list of them per image of a list."""
        single = isinstance(images, (np.ndarray, str, os.PathLike))
        batch = [images] if single else list(images)
        found = [
            [
                Person(np.array(pose[:, :3], dtype=np.float64), float(score), self.keypoint_names)
                for pose, score in zip(*r)
            ]
            for r in self.predict_rgb([load_image(image) for image in batch])
        ]
        return found[0] if single else found
