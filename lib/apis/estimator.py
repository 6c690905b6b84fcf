"""``PoseEstimator``: a trained model, its test protocol and its grouping as one object called on images.

    from higherpose import PoseEstimator

    estimator = PoseEstimator.from_config("experiments/coco/higher_hrnet/w32_512_adam_lr1e-3.yaml",
                                          "models/pose_higher_hrnet_w32_512.pth")
    for person in estimator("image.jpg"):          # or a BGR array, or a list of either
        print(person.score, person.keypoints)      # (K, 3): x, y, score in image pixels

Everything but the images comes from the config, as in ``tools/valid.py``: the test input size,
``TEST.SCALE_FACTOR`` (multi-scale), ``TEST.FLIP_TEST``, ``TEST.ADJUST`` / ``TEST.REFINE``, and
``TEST.IMAGES_PER_GPU`` images per forward (same-size images only). On the CPU a list of images is
split over ``TEST.CPU_IMAGE_THREADS`` threads, each predicting its own images with a share of torch's
threads: two images side by side on one core each keep the cores busier than one image whose small
operations are split across both (a single image runs on all of torch's threads). ``tools/valid.py``, ``demo.py`` and
``export_onnx.py`` predict through it.
"""

from __future__ import annotations

import argparse
import itertools
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Union

import cv2
import numpy as np
import torch
from torch import nn

from higherpose.core.group import HeatmapParser
from higherpose.core.inference import predict_images
from higherpose.dataset.specs import spec_from_cfg

Image = Union[np.ndarray, str, os.PathLike]  # noqa: UP007 (a runtime alias; X | Y needs Python 3.10 objects)

_AUTO_IMAGE_THREADS = 4  # TEST.CPU_IMAGE_THREADS = 0: at most this many images in flight (memory)


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


class PoseEstimator:
    """Multi-person poses for images; see the module docstring.

    Args:
        cfg: the merged config (its ``TEST.*``, ``DATASET.*`` and ``MODEL.*``).
        model: the network in eval mode on its device, or any callable ``(B, 3, H, W) tensor -> list of
            stage outputs`` (e.g. :class:`~higherpose.apis.onnx_export.OnnxPoseNet`).
    """

    def __init__(self, cfg: Any, model: nn.Module | Callable[[torch.Tensor], Any]):
        self.cfg, self.model = cfg, model
        self.parser = HeatmapParser(cfg)
        spec = spec_from_cfg(cfg)
        self.keypoint_names: tuple[str, ...] = tuple(spec.joint_names)[: self.parser.params.num_joints]

    @property
    def image_threads(self) -> int:
        """Images :meth:`predict_rgb` runs side by side: ``TEST.CPU_IMAGE_THREADS`` for a network with
        its parameters on the CPU (0: ``min(torch.get_num_threads(), 4)``); 1 on a GPU and for
        callables without parameters (:class:`~higherpose.apis.onnx_export.OnnxPoseNet`: ONNX Runtime
        has its own threads)."""
        parameter = next(self.model.parameters(), None) if isinstance(self.model, nn.Module) else None
        if parameter is None or parameter.device.type != "cpu":
            return 1
        return int(self.cfg.TEST.CPU_IMAGE_THREADS) or min(torch.get_num_threads(), _AUTO_IMAGE_THREADS)

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

    def predict_rgb(self, images_rgb: Sequence[np.ndarray]) -> list[tuple[list[np.ndarray], list[float]]]:
        """Per RGB uint8 image (H, W, 3): ``(poses, scores)`` with ``poses[p]`` (K, 3 + L) = (x, y,
        heat value, tags...) in image pixels, as :func:`~higherpose.core.inference.predict_image`."""
        return list(self.predict_stream(images_rgb))

    def predict_stream(self, images_rgb: Iterable[np.ndarray]) -> Iterator[tuple[list[np.ndarray], list[float]]]:
        """:meth:`predict_rgb` for an iterable of any length, one result at a time in its order. Images
        are taken from it as threads become free (at most two forwards a thread waiting), so a data set
        streams through without being held in memory.

        With several image threads torch's thread setting is lowered until the generator is exhausted
        or closed (see ``TEST.CPU_IMAGE_THREADS``)."""
        batch = max(1, int(self.cfg.TEST.IMAGES_PER_GPU))
        jobs = _chunks(iter(images_rgb), batch)

        def predict(job: list[np.ndarray]) -> list[tuple[list[np.ndarray], list[float]]]:
            with torch.inference_mode():  # per thread: grad mode is thread-local
                return predict_images(self.cfg, self.model, job, self.parser, batch)

        threads = self.image_threads
        first = list(itertools.islice(jobs, 2))
        jobs = itertools.chain(first, jobs)
        if threads == 1 or len(first) < 2:  # one forward: all of torch's threads on it
            for job in jobs:
                yield from predict(job)
            return
        with _torch_threads(max(1, torch.get_num_threads() // threads)), ThreadPoolExecutor(threads) as pool:
            waiting: deque[Future] = deque()
            for job in jobs:
                waiting.append(pool.submit(predict, job))
                if len(waiting) >= 2 * threads:
                    yield from waiting.popleft().result()
            while waiting:
                yield from waiting.popleft().result()

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


def _chunks(items: Iterator[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` for threads started inside the block (a thread takes the
    setting when it first runs an operation), restored after. Process-wide while it lasts."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
