"""Training augmentation with HigherHRNet's semantics: random affine (rotation, scale, translation)
→ random horizontal flip → to tensor → ImageNet normalisation (RGB).

Every transform takes ``(image, masks, joints, rng)``: ``image`` (H, W, 3) uint8 RGB, ``masks`` one
(H, W) array per output resolution, ``joints`` one ``(P, K, 3|4)`` float array per output resolution,
and ``rng`` a ``numpy.random.Generator``. HigherHRNet draws from the global ``np.random`` and
``random``; an explicit generator lets each DataLoader worker and epoch draw its own stream and a
seeded run reproduce (see ``higherpose.dataset.build``).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Compose:
    def __init__(self, transforms: Sequence) -> None:
        self.transforms = list(transforms)

    def __call__(self, image, masks: list, joints: list, rng: np.random.Generator):
        for t in self.transforms:
            image, masks, joints = t(image, masks, joints, rng)
        return image, masks, joints

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(type(t).__name__ for t in self.transforms) + ")"


def get_affine_matrix(center: Sequence[float], scale: float, res: tuple[int, int], rot: float = 0) -> np.ndarray:
    """HigherHRNet's ``_get_affine_matrix``: (3, 3) map from image pixels to a ``res`` (h, w) crop.

    The crop is the square of side ``200·scale`` centred at ``center``, rotated by ``rot`` degrees.
    """
    h = 200 * scale
    t = np.zeros((3, 3))
    t[0, 0] = float(res[1]) / h
    t[1, 1] = float(res[0]) / h
    t[0, 2] = res[1] * (-float(center[0]) / h + 0.5)
    t[1, 2] = res[0] * (-float(center[1]) / h + 0.5)
    t[2, 2] = 1
    if rot != 0:
        rot = -rot  # match the direction of rotation used when cropping
        rot_rad = rot * np.pi / 180
        sn, cs = np.sin(rot_rad), np.cos(rot_rad)
        rot_mat = np.zeros((3, 3))
        rot_mat[0, :2] = [cs, -sn]
        rot_mat[1, :2] = [sn, cs]
        rot_mat[2, 2] = 1
        t_mat = np.eye(3)  # rotate about the crop centre
        t_mat[0, 2] = -res[1] / 2
        t_mat[1, 2] = -res[0] / 2
        t_inv = t_mat.copy()
        t_inv[:2, 2] *= -1
        t = np.dot(t_inv, np.dot(rot_mat, np.dot(t_mat, t)))
    return t


def affine_points(points: np.ndarray, mat: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine map to ``(..., 2)`` points (floats, no rounding)."""
    shape = points.shape
    pts = points.reshape(-1, 2)
    # Homogeneous product as HigherHRNet writes it, so float rounding (and int() truncation) match.
    return np.dot(np.concatenate((pts, np.ones_like(pts[:, :1])), axis=1), mat.T).reshape(shape)


class RandomAffineTransform:
    """Random scale / rotation / translation about the image centre (HigherHRNet's draws and order).

    ``scale = min(H, W)/200`` ('short') or ``max(H, W)/200`` ('long'), times
    ``U[min_scale, max_scale)``; rotation ``U[-max_rotation, max_rotation)``; centre shift
    ``integers(int(-max_translate·scale), int(max_translate·scale))`` in x then y. Masks are warped as
    uint8·255 (bilinear, zero border: padding becomes ignored) and thresholded at 0.5.
    """

    def __init__(
        self,
        input_size: int,
        output_size: Sequence[int],
        max_rotation: float,
        min_scale: float,
        max_scale: float,
        scale_type: str,
        max_translate: float,
        scale_aware_sigma: bool = False,
    ) -> None:
        if scale_type not in ("short", "long"):
            raise ValueError(f"DATASET.SCALE_TYPE = {scale_type!r}: choose 'short' or 'long'")
        self.input_size = int(input_size)
        self.output_size = [int(s) for s in output_size]
        self.max_rotation = max_rotation
        self.min_scale = min_scale
        self.max_scale = max_scale
        self.scale_type = scale_type
        self.max_translate = max_translate
        self.scale_aware_sigma = scale_aware_sigma

    def draw(self, height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, float, float, float]:
        """The random parameters ``(center (2,), scale, aug_scale, rotation_deg)`` for one image."""
        center = np.array((width / 2, height / 2))
        scale = (min(height, width) if self.scale_type == "short" else max(height, width)) / 200
        aug_scale = rng.random() * (self.max_scale - self.min_scale) + self.min_scale
        scale *= aug_scale
        aug_rot = (rng.random() * 2 - 1) * self.max_rotation
        if self.max_translate > 0:
            lo, hi = int(-self.max_translate * scale), int(self.max_translate * scale)
            if hi > lo:
                center[0] += rng.integers(lo, hi)
                center[1] += rng.integers(lo, hi)
        return center, scale, aug_scale, aug_rot

    def __call__(self, image, masks: list, joints: list, rng: np.random.Generator):
        if len(masks) != len(self.output_size) or len(joints) != len(self.output_size):
            raise ValueError(f"expected one mask and joint array per output size {self.output_size}")
        height, width = image.shape[:2]
        center, scale, aug_scale, aug_rot = self.draw(height, width, rng)
        masks, joints = list(masks), list(joints)
        for i, res in enumerate(self.output_size):
            mat = get_affine_matrix(center, scale, (res, res), aug_rot)[:2]
            warped = cv2.warpAffine((np.asarray(masks[i]) * 255).astype(np.uint8), mat, (res, res)) / 255
            masks[i] = (warped > 0.5).astype(np.float32)
            joints[i] = np.array(joints[i], dtype=np.float64)
            joints[i][..., 0:2] = affine_points(joints[i][..., 0:2], mat)
            if self.scale_aware_sigma:
                joints[i][..., 3] = joints[i][..., 3] / aug_scale
        mat = get_affine_matrix(center, scale, (self.input_size, self.input_size), aug_rot)[:2]
        image = cv2.warpAffine(image, mat, (self.input_size, self.input_size))
        return image, masks, joints


class RandomHorizontalFlip:
    """Flip with probability ``prob``: image ``x → S-1-x``, joints re-indexed by ``flip_index`` and
    ``x → R-1-x`` at each output resolution R (HigherHRNet's convention: flipped targets sit
    ``1 - R/S`` output pixels left of the exact mirror; kept for numerical fidelity).

    With ``input_size`` S given (``DATASET.USE_UDP``), joints go to the exact mirror ``x → R - R/S - x``
    (output x = input x · R/S, and the image's mirror is ``S-1-x``). Masks are mirrored pixel for
    pixel in both cases (half an output pixel from the exact mirror at stride 2; they are coarse).
    """

    def __init__(
        self, flip_index: Sequence[int], output_size: Sequence[int], prob: float = 0.5, input_size: int | None = None
    ) -> None:
        self.flip_index = list(flip_index)
        self.output_size = [int(s) for s in output_size]
        self.prob = prob
        self.input_size = input_size

    def __call__(self, image, masks: list, joints: list, rng: np.random.Generator):
        if rng.random() < self.prob:
            image = np.ascontiguousarray(image[:, ::-1])
            masks, joints = list(masks), list(joints)
            for i, res in enumerate(self.output_size):
                masks[i] = np.ascontiguousarray(masks[i][:, ::-1])
                joints[i] = np.array(joints[i][:, self.flip_index], dtype=np.float64)
                if self.input_size is None:
                    joints[i][:, :, 0] = res - joints[i][:, :, 0] - 1
                else:
                    joints[i][:, :, 0] = (res - res / self.input_size) - joints[i][:, :, 0]
        return image, masks, joints


class ToTensor:
    """(H, W, 3) uint8 → (3, H, W) float32 in [0, 1] (torchvision's ``to_tensor``)."""

    def __call__(self, image, masks: list, joints: list, rng: np.random.Generator):
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255)
        return tensor, masks, joints


class Normalize:
    """Per-channel ``(x - mean) / std`` on a (3, H, W) tensor (RGB order)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image: torch.Tensor, masks: list, joints: list, rng: np.random.Generator):
        return (image - self.mean) / self.std, masks, joints


def build_transforms(cfg, flip_index: Sequence[int]) -> Compose:
    """HigherHRNet's training pipeline from the ``DATASET.*`` keys (flip index from the dataset spec)."""
    ds = cfg.DATASET
    output_size = list(ds.OUTPUT_SIZE) if isinstance(ds.OUTPUT_SIZE, (list, tuple)) else [ds.OUTPUT_SIZE]
    return Compose(
        [
            RandomAffineTransform(
                ds.INPUT_SIZE,
                output_size,
                ds.MAX_ROTATION,
                ds.MIN_SCALE,
                ds.MAX_SCALE,
                ds.SCALE_TYPE,
                ds.MAX_TRANSLATE,
                ds.SCALE_AWARE_SIGMA,
            ),
            RandomHorizontalFlip(flip_index, output_size, ds.FLIP, ds.INPUT_SIZE if ds.USE_UDP else None),
            ToTensor(),
            Normalize(),
        ]
    )
