"""Dataset and DataLoader builders (HigherHRNet's ``build.py``), driven by ``DATASET.*``.

Seeding (why augmentations differ per worker and epoch, and how a run reproduces):

- Each training dataset draws its augmentation from its own ``numpy.random.Generator``.
  :func:`worker_init_fn` reseeds it in every DataLoader worker with ``torch.initial_seed()`` of that
  worker (= the loader's per-epoch base seed + worker id), so workers never share a stream, and a
  new epoch (new workers, new base seed; or the continuing stream of persistent workers) draws anew.
- The base seed comes from the loader's ``generator``. With ``TRAIN.SEED >= 0`` it is a
  ``torch.Generator`` seeded with ``TRAIN.SEED + 1_000_003 * rank`` (and the DistributedSampler uses
  ``seed=TRAIN.SEED``), so the same config, worker count and world size give the same batches.
  With ``TRAIN.SEED < 0`` the global torch RNG decides (random unless the trainer seeds torch).
- With ``WORKERS = 0`` the dataset's generator is seeded from the same base seed in the main process.
- Workers persist across epochs only with ``TRAIN.SEED < 0``. A persistent worker runs
  :func:`worker_init_fn` once, so its stream would continue from epoch 0 and a run resumed at epoch
  ``e`` would draw other augmentations than the uninterrupted one. A seeded run therefore starts new
  workers every epoch, seeded from the generator that ``reseed_epoch`` sets from (TRAIN.SEED, epoch,
  rank): each epoch's draws depend on nothing earlier. The cost is a worker start per epoch (a fork,
  or a pickled dataset under ``spawn``) and a per-worker ignore-mask cache rebuilt every epoch.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import cv2
import numpy as np
import torch
import torch.utils.data

from higherpose.dataset.coco import CocoDataset, CocoKeypoints, CrowdPoseDataset, CrowdPoseKeypoints, CustomDataset
from higherpose.dataset.specs import spec_from_cfg
from higherpose.dataset.target_generators import HeatmapGenerator, JointsGenerator, ScaleAwareHeatmapGenerator
from higherpose.dataset.transforms import build_transforms

logger = logging.getLogger(__name__)

_TRAIN_CLASSES = {"coco_kpt": CocoKeypoints, "crowd_pose_kpt": CrowdPoseKeypoints, "custom_kpt": CocoKeypoints}
_TEST_CLASSES = {"coco": CocoDataset, "crowd_pose": CrowdPoseDataset, "custom": CustomDataset}


def _ensure_data(cfg) -> None:
    """Generate the synthetic set (preset ``DATASET.SYNTHETIC_SCENE``) under ``DATASET.ROOT`` when
    ``DATASET.SYNTHETIC`` and it is missing; a set of another preset there is an error."""
    if cfg.DATASET.SYNTHETIC:
        from higherpose.dataset.synthetic import SCENES, ensure_synthetic

        ensure_synthetic(cfg.DATASET.ROOT, cfg=SCENES[cfg.DATASET.SYNTHETIC_SCENE])


def output_sizes(cfg) -> list[int]:
    """``DATASET.OUTPUT_SIZE`` as a list of ints (a single size is allowed in the YAML)."""
    out = cfg.DATASET.OUTPUT_SIZE
    return [int(s) for s in out] if isinstance(out, (list, tuple)) else [int(out)]


def build_dataset(cfg, is_train: bool):
    """Training set (augmented samples with targets) of ``DATASET.DATASET`` on split ``DATASET.TRAIN``
    (``is_train``) or ``DATASET.TEST`` (no augmentation: HigherHRNet asserts is_train for transforms).
    """
    _ensure_data(cfg)
    ds = cfg.DATASET
    if ds.DATASET not in _TRAIN_CLASSES:
        raise ValueError(f"DATASET.DATASET = {ds.DATASET!r}: choose one of {sorted(_TRAIN_CLASSES)}")
    spec = spec_from_cfg(cfg)
    sizes = output_sizes(cfg)
    transforms = build_transforms(cfg, spec.flip_index) if is_train else None
    if ds.SCALE_AWARE_SIGMA:
        heatmap_generators = [ScaleAwareHeatmapGenerator(r, ds.NUM_JOINTS, ds.SIGMA) for r in sizes]
    else:
        heatmap_generators = [HeatmapGenerator(r, ds.NUM_JOINTS, ds.SIGMA, udp=ds.USE_UDP) for r in sizes]
    joints_generators = [
        JointsGenerator(ds.MAX_NUM_PEOPLE, ds.NUM_JOINTS, r, cfg.MODEL.TAG_PER_JOINT, udp=ds.USE_UDP) for r in sizes
    ]
    return _TRAIN_CLASSES[ds.DATASET](
        ds.ROOT,
        ds.TRAIN if is_train else ds.TEST,
        spec,
        heatmap_generators,
        joints_generators,
        transforms,
        data_format=ds.DATA_FORMAT,
        remove_images_without_annotations=is_train,
        with_center=ds.WITH_CENTER,
        scale_aware_sigma=ds.SCALE_AWARE_SIGMA,
        base_size=ds.BASE_SIZE,
        base_sigma=ds.BASE_SIGMA,
        int_sigma=ds.INT_SIGMA,
        category_ids=tuple(ds.CATEGORY_IDS),
    )


def build_test_dataset(cfg) -> CocoDataset:
    """Test set of ``DATASET.DATASET_TEST`` on split ``DATASET.TEST``."""
    _ensure_data(cfg)
    ds = cfg.DATASET
    if ds.DATASET_TEST not in _TEST_CLASSES:
        raise ValueError(f"DATASET.DATASET_TEST = {ds.DATASET_TEST!r}: choose one of {sorted(_TEST_CLASSES)}")
    dataset_class = _TEST_CLASSES[ds.DATASET_TEST]
    return dataset_class(ds.ROOT, ds.TEST, ds.DATA_FORMAT, spec_from_cfg(cfg), tuple(ds.CATEGORY_IDS))


def annotation_file(cfg, is_train: bool = True) -> str:
    """The annotation json that :func:`build_dataset` (``is_train``: ``DATASET.DATASET`` on
    ``DATASET.TRAIN``) or :func:`build_test_dataset` (``DATASET.DATASET_TEST`` on ``DATASET.TEST``)
    reads, without reading it."""
    ds = cfg.DATASET
    if is_train:
        key, name, classes, split = "DATASET.DATASET", ds.DATASET, _TRAIN_CLASSES, ds.TRAIN
    else:
        key, name, classes, split = "DATASET.DATASET_TEST", ds.DATASET_TEST, _TEST_CLASSES, ds.TEST
    if name not in classes:
        raise ValueError(f"{key} = {name!r}: choose one of {sorted(classes)}")
    return classes[name].annotation_file(ds.ROOT, split)


def worker_init_fn(worker_id: int) -> None:
    """Give each DataLoader worker its own augmentation stream (see the module docstring).

    OpenCV's thread count is not changed here but before the fork (:func:`make_dataloader`): changing it
    in a forked worker waits on pool threads of the parent that the fork did not copy, and the worker
    hangs (with OpenCV 5.1 and a pool of 4 threads it waited forever).
    """
    info = torch.utils.data.get_worker_info()
    seed = torch.initial_seed()  # base_seed + worker_id, drawn anew by the loader every epoch
    np.random.seed(seed % 2**32)  # noqa: NPY002 (legacy global generator, for any code still using it)
    random.seed(seed)
    if info is not None and hasattr(info.dataset, "reseed"):
        info.dataset.reseed(seed)


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", 0))


def make_dataloader(cfg, is_train: bool = True, distributed: bool = False) -> torch.utils.data.DataLoader:
    """Training loader: batches ``(images (B,3,S,S), [heatmaps (B,K,R,R)], [masks (B,R,R)], [joints (B,M,K,2)])``.

    Batch = ``TRAIN.IMAGES_PER_GPU`` per process; DistributedSampler (``drop_last`` for training)
    when ``distributed``; ``WORKERS`` workers (persistent across epochs only with ``TRAIN.SEED < 0``,
    see the module docstring); pinned memory only with CUDA.

    With workers, this process's OpenCV runs on one thread from here on, and each forked worker
    inherits that: otherwise every worker of every rank starts a thread per core (8 GPU ranks x 4
    workers on one host). It is set here, before the fork, because a forked worker that sets it hangs.
    What OpenCV work stays in the process (the resizes of validation during training) then runs on one
    thread too, beside the reading threads on a GPU and the other image threads on the CPU.
    """
    dataset = build_dataset(cfg, is_train)
    seed = int(cfg.TRAIN.SEED)
    rank = _rank() if distributed else 0
    generator = None
    if seed >= 0:
        generator = torch.Generator()
        generator.manual_seed(seed + 1_000_003 * rank)
    if distributed:
        sampler = torch.utils.data.distributed.DistributedSampler(
            dataset, shuffle=is_train, seed=max(seed, 0), drop_last=is_train
        )
        shuffle = False
    else:
        sampler = None
        shuffle = is_train
    workers = int(cfg.WORKERS)
    if workers > 0:
        cv2.setNumThreads(1)
    else:
        base = generator.initial_seed() if generator is not None else torch.initial_seed()
        dataset.reseed(base)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=int(cfg.TRAIN.IMAGES_PER_GPU),
        shuffle=shuffle,
        sampler=sampler,
        num_workers=workers,
        # Pinned pages only help copies to a GPU; on a GPU host a DEVICE 'cpu' run would open a CUDA context.
        pin_memory=bool(cfg.PIN_MEMORY) and cfg.DEVICE != "cpu" and torch.cuda.is_available(),
        worker_init_fn=worker_init_fn,
        generator=generator,
        # A seeded run needs fresh workers per epoch for exact resume (module docstring).
        persistent_workers=workers > 0 and seed < 0,
    )


def _identity_collate(batch: list):
    return batch[0]


def make_test_dataloader(cfg) -> tuple[torch.utils.data.DataLoader, CocoDataset]:
    """Test loader (batch 1, sample returned as is) and its dataset."""
    dataset = build_test_dataset(cfg)
    return test_loader(dataset), dataset


def test_loader(
    dataset: CocoDataset, indices: list[int] | None = None, workers: int = 0
) -> torch.utils.data.DataLoader | ReadAhead:
    """Loader (batch 1, sample returned as is, in order) of ``dataset``'s images at ``indices`` (all when
    None; a rank's share in sharded validation). ``workers`` > 0 (:func:`test_workers`): a
    :class:`ReadAhead` whose threads read and decode the next images while the caller predicts.

    Nothing is pinned: a sample is a numpy image that is resized per test scale on the host before
    its copy to the device (:func:`~higherpose.core.inference.image_maps` pins that batch on a GPU)."""
    if workers:
        return ReadAhead(dataset, list(range(len(dataset))) if indices is None else list(indices), workers)
    images = dataset if indices is None else torch.utils.data.Subset(dataset, indices)
    return torch.utils.data.DataLoader(
        images, batch_size=1, shuffle=False, num_workers=0, pin_memory=False, collate_fn=_identity_collate
    )


class ReadAhead:
    """The samples ``dataset[i]`` for ``i`` in ``indices``, in that order, read by ``workers`` threads at
    most ``2 * workers`` samples ahead of the consumer.

    Threads, not DataLoader processes: reading and decoding (OpenCV, zip members) release the GIL, and
    the process that predicts resizes images with OpenCV, and a child forked after the parent's OpenCV
    thread pool has run can hang in OpenCV (seen with ``cv2.setNumThreads`` in a forked worker)."""

    def __init__(self, dataset: CocoDataset, indices: list[int], workers: int):
        self.dataset, self.indices, self.workers = dataset, indices, max(1, int(workers))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="test-read")
        try:
            pending: deque[Future] = deque()
            order = iter(self.indices)
            for index in itertools.islice(order, 2 * self.workers):
                pending.append(pool.submit(self.dataset.__getitem__, index))
            while pending:
                sample = pending.popleft().result()
                for index in itertools.islice(order, 1):
                    pending.append(pool.submit(self.dataset.__getitem__, index))
                yield sample
        finally:  # a consumer that stops early waits for the reads in progress only
            pool.shutdown(wait=True, cancel_futures=True)


def test_workers(cfg, device: torch.device) -> int:
    """Reading threads for predicting the test set on ``device`` (:func:`test_loader`): ``WORKERS`` on a
    GPU, where reading and decoding the next images overlaps the forwards; 0 on the CPU, whose cores
    the prediction's image threads (``TEST.CPU_IMAGE_THREADS``) already keep busy."""
    return int(cfg.WORKERS) if device.type != "cpu" else 0
