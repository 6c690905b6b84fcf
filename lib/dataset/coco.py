"""COCO-format keypoint datasets on HigherHRNet's on-disk layouts.

- :class:`CocoDataset` (test set): ``dataset[i] -> (image RGB uint8 (H, W, 3) or None, anns)``.
  :class:`CrowdPoseDataset` and custom sets differ only in the layout / name / keypoint spec.
- :class:`CocoKeypoints` (training set): image → augmented image tensor, per-resolution heatmaps,
  masks and AE joints (HigherHRNet's ``CocoKeypoints``); :class:`CrowdPoseKeypoints` likewise.

Layouts (``ROOT`` = ``DATASET.ROOT``; ``zip`` is ``DATA_FORMAT: zip``)::

    coco / custom:  ROOT/annotations/person_keypoints_{split}.json   (image_info_{split}.json for test splits)
                    ROOT/images/{split}/<file_name>                    (zip: ROOT/images/{split}.zip@<file_name>)
    crowd_pose:     ROOT/json/crowdpose_{split}.json
                    ROOT/images/<file_name>                            (zip: ROOT/images.zip@<file_name>)

CrowdPose json is read with pycocotools (no crowdposetools needed); it has no ``area`` and no
``segmentation``, so only warp padding is masked for it, as in HigherHRNet.

Annotation files are checked when a dataset is built (``higherpose.dataset.annotations``): a file that
is not JSON, an annotation of an unknown image, non-finite keypoints / bbox / area, two annotations
with one id, a keypoint category of another length than the spec's, and a training set without a
labelled person stop with a one-line ``AnnotationError`` naming the file and the annotation or
category. Only the annotations of the keypoint categories in use are kept (``category_ids``; every
category with keypoints by default): several categories that share one skeleton are one class.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Sequence

import cv2
import numpy as np
import pycocotools.mask as mask_utils
import torch
from pycocotools.coco import COCO as _COCO

from higherpose.dataset import zipreader
from higherpose.dataset.annotations import (
    check_annotations,
    check_labelled_persons,
    coco_from_dict,
    drop_repeated_annotations,
    keep_categories,
    num_keypoints,
    read_annotations,
    select_categories,
)
from higherpose.dataset.specs import COCO, CROWDPOSE, KeypointSpec

logger = logging.getLogger(__name__)

COCO_LAYOUT = """expected layout:
  {root}/annotations/person_keypoints_<split>.json   (image_info_<split>.json for test splits)
  {root}/images/<split>/*.jpg                        (DATA_FORMAT zip: {root}/images/<split>.zip)"""
CROWDPOSE_LAYOUT = """expected layout:
  {root}/json/crowdpose_<split>.json
  {root}/images/*.jpg                                (DATA_FORMAT zip: {root}/images.zip)"""


def load_coco(path: str) -> _COCO:
    """pycocotools ``COCO`` of the json ``path``, without its console chatter; a file that is not JSON is an
    :class:`AnnotationError` naming it and the position (``check_annotations`` checks the content)."""
    return coco_from_dict(read_annotations(path))


def segmentation_rle(segmentation, height: int, width: int) -> list[dict]:
    """Polygons / uncompressed RLE / compressed RLE → list of compressed RLEs ([] when absent)."""
    if not segmentation:
        return []
    if isinstance(segmentation, dict):
        if isinstance(segmentation.get("counts"), list):
            return [mask_utils.frPyObjects(segmentation, height, width)]
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
        return [rle]
    polygons = [p for p in segmentation if len(p) >= 6]  # pycocotools rejects degenerate polygons
    return mask_utils.frPyObjects(polygons, height, width) if polygons else []


def ignore_rle(anns: Sequence[dict], height: int, width: int) -> dict | None:
    """Union of the regions HigherHRNet leaves unsupervised: crowd regions and persons without keypoints.

    Returns one compressed RLE, or None when nothing is ignored.
    """
    rles: list[dict] = []
    for ann in anns:
        if ann.get("iscrowd", 0) or num_keypoints(ann) == 0:
            rles.extend(segmentation_rle(ann.get("segmentation"), height, width))
    if not rles:
        return None
    return mask_utils.merge(rles, intersect=False) if len(rles) > 1 else rles[0]


def get_mask(anns: Sequence[dict], height: int, width: int) -> np.ndarray:
    """(H, W) bool, True where the loss is applied (HigherHRNet's ``get_mask``: ``sum of regions < 0.5``)."""
    rle = ignore_rle(anns, height, width)
    if rle is None:
        return np.ones((height, width), dtype=bool)
    return mask_utils.decode(rle) == 0


class CocoDataset(torch.utils.data.Dataset):
    """Test-time dataset: ``dataset[i] -> (image RGB uint8 (H, W, 3) or None if unreadable, anns)``.

    Attributes: ``ids`` (every image id of the json, in its order), ``ann_file``, ``name``,
    ``spec`` (:class:`KeypointSpec`), ``coco`` (pycocotools ``COCO`` of the annotations of the keypoint
    categories in use), ``categories`` (:class:`CategorySelection`: ``category_ids``, or every category
    with keypoints when empty), ``num_unreadable``.
    """

    name = "coco"
    layout = COCO_LAYOUT

    def __init__(
        self,
        root: str,
        split: str,
        data_format: str = "jpg",
        spec: KeypointSpec = COCO,
        category_ids: Sequence[int] = (),
    ) -> None:
        if data_format not in ("jpg", "zip"):
            raise ValueError(f"DATASET.DATA_FORMAT = {data_format!r}: choose 'jpg' or 'zip'")
        self.root = str(root)
        self.split = split
        self.data_format = data_format
        self.spec = spec
        self.num_joints_without_center = spec.num_joints - int(spec.name.endswith("_WITH_CENTER"))
        if not os.path.isdir(self.root):
            raise FileNotFoundError(
                f"{type(self).__name__}: dataset root not found: {self.root}\n" + self.layout.format(root=self.root)
            )
        self.ann_file = self.annotation_file(self.root, self.split)
        if not os.path.isfile(self.ann_file):
            raise FileNotFoundError(
                f"{type(self).__name__}: annotation file not found: {self.ann_file}\n"
                + self.layout.format(root=self.root)
            )
        data = read_annotations(self.ann_file)
        self.categories = select_categories(data, category_ids, self.num_joints_without_center, self.ann_file)
        check_annotations(data, self.num_joints_without_center, self.ann_file, self.categories.ids)
        repeated = drop_repeated_annotations(data, self.ann_file)  # before any is removed: file positions
        keep_categories(data, self.categories)
        if repeated:
            shown = ", ".join(str(i) for i in repeated[:10]) + (" ..." if len(repeated) > 10 else "")
            logger.warning(
                "%s: annotations repeating an earlier one exactly: %d (ids %s; one of each is kept)",
                self.ann_file, len(repeated), shown,
            )  # fmt: skip
        if sum(self.categories.counts.values()) or self.categories.others:  # test-dev splits have none
            logger.info(self.categories.describe(self.ann_file))
        self.coco = coco_from_dict(data)
        self.ids = list(self.coco.imgs.keys())
        self._unreadable = multiprocessing.Value("i", 0)

    # -- layout -------------------------------------------------------------------------------------
    @classmethod
    def annotation_file(cls, root: str, split: str) -> str:
        """Where this layout keeps the annotations of ``split`` under ``root`` (checked before any
        dataset is built, e.g. by ``tools/dist_train.py``)."""
        prefix = "image_info" if "test" in split else "person_keypoints"
        return os.path.join(root, "annotations", f"{prefix}_{split}.json")

    def image_path(self, file_name: str) -> str:
        images = os.path.join(self.root, "images")
        folder = "test2017" if "test" in self.split else self.split  # HigherHRNet: test splits share test2017
        if self.data_format == "zip":
            return os.path.join(images, f"{folder}.zip@{file_name}")
        return os.path.join(images, folder, file_name)

    # -- access -------------------------------------------------------------------------------------
    @property
    def num_unreadable(self) -> int:
        """Images that could not be read so far (shared by DataLoader worker processes)."""
        return int(self._unreadable.value)

    def read_image(self, image_id: int) -> np.ndarray | None:
        """RGB uint8 (H, W, 3), or None (with a warning, counted) when the file is missing or corrupt."""
        path = self.image_path(self.coco.imgs[image_id]["file_name"])
        flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
        image = zipreader.imread(path, flags) if self.data_format == "zip" else cv2.imread(path, flags)
        if image is None:
            with self._unreadable.get_lock():
                self._unreadable.value += 1
            logger.warning("unreadable image skipped (image id %s): %s", image_id, path)
            return None
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def load_anns(self, image_id: int) -> list[dict]:
        return self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[np.ndarray | None, list[dict]]:
        image_id = self.ids[index]
        return self.read_image(image_id), self.load_anns(image_id)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, images={len(self)}, "
            f"joints={self.spec.num_joints}, root={self.root!r})"
        )


class CrowdPoseDataset(CocoDataset):
    name = "crowd_pose"
    layout = CROWDPOSE_LAYOUT

    def __init__(
        self,
        root: str,
        split: str,
        data_format: str = "jpg",
        spec: KeypointSpec = CROWDPOSE,
        category_ids: Sequence[int] = (),
    ) -> None:
        super().__init__(root, split, data_format, spec, category_ids)

    @classmethod
    def annotation_file(cls, root: str, split: str) -> str:
        return os.path.join(root, "json", f"crowdpose_{split}.json")

    def image_path(self, file_name: str) -> str:
        if self.data_format == "zip":
            return os.path.join(self.root, "images.zip@" + file_name)
        return os.path.join(self.root, "images", file_name)


class CustomDataset(CocoDataset):
    """Any COCO-format keypoint set in the COCO layout; joints / flip index / sigmas from the YAML."""

    name = "custom"


class KeypointsMixin:
    """Training sample construction shared by the COCO-layout and CrowdPose-layout training sets.

    ``dataset[i] -> (image (3, S, S) float32, heatmaps [(K, R, R) float32], masks [(R, R) float32],
    joints [(M, K, 2) int64])``, one list entry per output resolution.
    """

    coco: _COCO
    ids: list
    spec: KeypointSpec

    def __init__(
        self,
        root: str,
        split: str,
        spec: KeypointSpec,
        heatmap_generators: Sequence,
        joints_generators: Sequence,
        transforms=None,
        data_format: str = "jpg",
        remove_images_without_annotations: bool = True,
        with_center: bool = False,
        scale_aware_sigma: bool = False,
        base_size: float = 256.0,
        base_sigma: float = 2.0,
        int_sigma: bool = False,
        category_ids: Sequence[int] = (),
    ) -> None:
        # the layout's test dataset (next in the MRO)
        super().__init__(root, split, data_format, spec, category_ids)
        if len(heatmap_generators) != len(joints_generators):
            raise ValueError("one heatmap generator and one joints generator per output resolution")
        self.heatmap_generator = list(heatmap_generators)
        self.joints_generator = list(joints_generators)
        self.num_scales = len(self.heatmap_generator)
        self.transforms = transforms
        self.with_center = with_center
        self.scale_aware_sigma = scale_aware_sigma
        self.base_size = base_size
        self.base_sigma = base_sigma
        self.int_sigma = int_sigma
        self.num_joints = self.spec.num_joints
        if remove_images_without_annotations:
            self.ids = [i for i in self.ids if len(self.coco.getAnnIds(imgIds=i, iscrowd=None)) > 0]
        check_labelled_persons(self.coco.dataset.get("annotations", []), self.ann_file)
        self._rng: np.random.Generator | None = None
        self._mask_cache: dict[int, dict | None] = {}
        self._overflow = multiprocessing.Value("i", 0)

    @property
    def num_overflow_persons(self) -> int:
        """Persons left out of the AE joints because a sample had more than MAX_NUM_PEOPLE (all workers)."""
        return int(self._overflow.value)

    # -- randomness ---------------------------------------------------------------------------------
    def reseed(self, seed: int) -> None:
        """Set the augmentation stream (called per DataLoader worker by ``build.worker_init_fn``)."""
        self._rng = np.random.default_rng(seed)

    @property
    def rng(self) -> np.random.Generator:
        if self._rng is None:
            # Not seeded by a worker: follow torch's seed (TRAIN.SEED when the trainer seeds torch).
            self._rng = np.random.default_rng(torch.initial_seed())
        return self._rng

    # -- targets ------------------------------------------------------------------------------------
    def get_joints(self, anns: Sequence[dict]) -> np.ndarray:
        """``(P, K, 3)`` (x, y, v) — ``(P, K, 4)`` with the person's σ in column 3 if scale-aware."""
        k = self.num_joints
        k0 = k - int(self.with_center)
        joints = np.zeros((len(anns), k, 4 if self.scale_aware_sigma else 3))
        if not anns:
            return joints
        # A person given by box and polygon only has no keypoints: all its joints are unlabelled (v = 0).
        unlabelled = [0.0] * (3 * k0)
        kpts = [a.get("keypoints") or unlabelled for a in anns]
        joints[:, :k0, :3] = np.asarray(kpts, dtype=np.float64).reshape(len(anns), k0, 3)
        if self.with_center:
            # HigherHRNet: sum of all (x, y) (unlabelled ones are 0) / number of labelled joints.
            num_vis = np.count_nonzero(joints[:, :-1, 2], axis=1)
            has = num_vis > 0
            joints[has, -1, :2] = joints[has, :-1, :2].sum(axis=1) / num_vis[has, None]
            joints[has, -1, 2] = 1
        if self.scale_aware_sigma:
            sizes = np.asarray([max(a["bbox"][2], a["bbox"][3]) for a in anns], dtype=np.float64)
            sigma = sizes / self.base_size * self.base_sigma
            if self.int_sigma:
                sigma = np.trunc(np.round(sigma + 0.5))
            if np.any(sigma <= 0):
                bad = [a.get("id") for a, s in zip(anns, sigma) if s <= 0]
                raise ValueError(f"scale-aware sigma needs a positive bbox size; annotation ids {bad}")
            joints[:, :, 3] = sigma[:, None]
        return joints

    def get_mask(self, anns: Sequence[dict], image_id: int) -> np.ndarray:
        """(H, W) bool supervised-pixel mask; the RLE union is cached per image (cheap to keep)."""
        info = self.coco.imgs[image_id]
        h, w = int(info["height"]), int(info["width"])
        if image_id not in self._mask_cache:
            self._mask_cache[image_id] = ignore_rle(anns, h, w)
        rle = self._mask_cache[image_id]
        return np.ones((h, w), dtype=bool) if rle is None else mask_utils.decode(rle) == 0

    def build_sample(self, image: np.ndarray, anns: list[dict], image_id: int):
        mask = self.get_mask(anns, image_id)
        anns = [a for a in anns if a.get("iscrowd", 0) == 0 or num_keypoints(a) > 0]
        joints = self.get_joints(anns)
        masks = [mask.copy() for _ in range(self.num_scales)]
        joints_list = [joints.copy() for _ in range(self.num_scales)]
        if self.transforms is not None:
            image, masks, joints_list = self.transforms(image, masks, joints_list, self.rng)
        heatmaps, tags = [], []
        for s in range(self.num_scales):
            heatmaps.append(self.heatmap_generator[s](joints_list[s]).astype(np.float32, copy=False))
            masks[s] = np.asarray(masks[s], dtype=np.float32)
            tags.append(self.joints_generator[s](joints_list[s]).astype(np.int64, copy=False))
        dropped = getattr(self.joints_generator[0], "last_overflow", 0)
        if dropped:
            with self._overflow.get_lock():
                self._overflow.value += dropped
        return image, heatmaps, masks, tags

    def __getitem__(self, index: int):
        # An unreadable image is counted (num_unreadable) and replaced by the next readable one, so
        # the epoch goes on; only a data set with no readable image at all stops training.
        n = len(self.ids)
        for step in range(n):
            image_id = self.ids[(index + step) % n]
            image = self.read_image(image_id)  # type: ignore[attr-defined]
            if image is not None:
                return self.build_sample(image, self.load_anns(image_id), image_id)  # type: ignore[attr-defined]
        raise RuntimeError(f"{self!r}: no readable image found")


class CocoKeypoints(KeypointsMixin, CocoDataset):
    """Training set in the COCO layout (also used for custom COCO-format sets)."""


class CrowdPoseKeypoints(KeypointsMixin, CrowdPoseDataset):
    """Training set in the CrowdPose layout."""
