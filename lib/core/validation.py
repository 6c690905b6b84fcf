"""The validation loop of ``tools/valid.py`` and of training (``TRAIN.VAL_FREQ``), sharded over ranks.

In a process group every rank predicts every ``world_size``-th test image (rank r: images r, r + W,
...); rank 0 gathers the results, puts them back in the data set's order, writes one results file
and evaluates it, so the file and the AP table equal a one-process run's. Every rank takes part in
the same collectives whatever happens: an error on any rank (an unreadable model, an exception in
grouping, the evaluation failing on rank 0) is raised on every rank instead of leaving the others
waiting in a collective.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from higherpose.core.evaluation import evaluate_keypoints, poses_to_coco_results, write_results_json
from higherpose.core.inference import model_device
from higherpose.core.predictor import Predictor
from higherpose.dataset.build import test_workers
from higherpose.utils import distributed as du
from higherpose.utils.meters import format_clock

_log = logging.getLogger(__name__)


class ValidationError(RuntimeError):
    """Validation failed on some rank; raised on every rank with that rank's error."""


class _Progress:
    """Images done, images/s and ETA of the whole set: a tqdm bar (TTY or TEST.LOG_PROGRESS) or log
    lines every N images (none without a logger). In sharded validation rank 0 counts its own images
    times the ranks (the shares differ by at most one image)."""

    def __init__(self, total: int, logger: logging.Logger | None, use_bar: bool, every: int, ranks: int = 1):
        self.total, self.logger, self.every, self.ranks = total, logger, max(1, every), max(1, ranks)
        self.done, self.start = 0, time.time()
        self.bar = None
        if use_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="valid", unit="img", dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        before, self.done = self.done, min(self.total, self.done + n * self.ranks)
        if self.bar is not None:
            self.bar.update(self.done - before)
        elif self.logger and (before // self.every != self.done // self.every or self.done == self.total):
            self.logger.info(self.line())

    def line(self) -> str:
        elapsed = max(time.time() - self.start, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        ranks = f" on {self.ranks} ranks" if self.ranks > 1 else ""
        return f"valid: {self.done}/{self.total} images{ranks}, {rate:.2f} img/s, ETA {format_clock(eta)}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def unwrap_test_sample(sample: Any) -> tuple[Any, Any]:
    """A test-loader item -> (image or None, anns); tolerates a list-of-one batch."""
    if isinstance(sample, list) and len(sample) == 1 and isinstance(sample[0], (tuple, list)):
        sample = sample[0]
    image, anns = sample[0], sample[1]
    if isinstance(image, list) and len(image) == 1:
        image = image[0]
    if hasattr(image, "numpy") and not isinstance(image, np.ndarray):  # a torch tensor
        image = image.numpy()
        if image.ndim == 4:
            image = image[0]
    return image, anns


def _predict_share(
    cfg: Any, model: Any, output_dir: str, loader: Any, indices: list[int], ids: list, progress: _Progress, spec: Any
) -> tuple[list[tuple[int, list[dict]]], list[int]]:
    """This rank's images: ``([(image index, its result dicts)], unreadable image ids)``."""
    predictor = Predictor(cfg, model)
    save_every = max(1, int(cfg.PRINT_FREQ)) if cfg.DEBUG.DEBUG and du.is_main_process() else 0
    predicted: list[tuple[int, list[dict]]] = []
    skipped: list[int] = []
    order: deque[tuple[int, np.ndarray]] = deque()  # the images handed to the predictor, not yet returned

    def readable() -> Iterator[np.ndarray]:
        for index, sample in zip(indices, loader):
            image, _ = unwrap_test_sample(sample)
            if image is None:
                skipped.append(int(ids[index]))
                progress.update()
                continue
            order.append((index, image))
            yield image

    for poses, scores in predictor.predict_stream(readable()):
        index, image = order.popleft()
        predicted.append((index, poses_to_coco_results(int(ids[index]), poses, scores)))
        if save_every and (len(predicted) - 1) % save_every == 0:
            # HigherHRNet's result_valid_{i}.jpg: the grouped poses drawn on every PRINT_FREQ-th image
            # (of rank 0's share; i is the image's index in the data set)
            from higherpose.utils.vis import save_valid_image

            save_valid_image(image, poses, os.path.join(output_dir, f"result_valid_{index}.jpg"), spec)
        progress.update()
    return predicted, skipped


def _agree(error: str | None) -> None:
    """Raise :class:`ValidationError` on every rank when any rank has an ``error``; every rank calls it."""
    errors = [e for e in du.all_gather_objects(error) if e]
    if errors:
        raise ValidationError("; ".join(errors))


def run_validation(
    cfg: Any, model: Any, output_dir: str, logger: logging.Logger | None = None, subset: int = 0
) -> tuple[OrderedDict, list[dict]]:
    """Predict every test image (``DATASET.TEST``; the first ``subset`` or ``TEST.SUBSET`` only when > 0),
    write ``output_dir/results/keypoints_<split>_results.json`` and evaluate it.

    In a process group each rank predicts its share and rank 0 writes and evaluates (see the module
    docstring); every rank must call this. Unreadable images (None from the dataset) are skipped,
    counted and evaluated as images without detections. Returns ``(metrics, results)`` on rank 0 and
    ``(metrics, [])`` on the others; metrics is empty when the annotation file has no keypoint
    annotations (a test-dev style split). Single-process, errors propagate as raised.
    """
    from higherpose.dataset.build import build_test_dataset, test_loader

    logger = logger or _log
    rank, world = du.get_rank(), du.get_world_size()
    sharded = du.is_dist() and world > 1
    error: str | None = None
    predicted: list[tuple[int, list[dict]]] = []
    skipped: list[int] = []
    was_training = model.training
    # Test images differ in shape: cuDNN's benchmark would time every algorithm anew for each shape, a
    # cost that only pays where shapes repeat (training batches, a video's frames).
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        dataset = build_test_dataset(cfg)
        ids = list(dataset.ids)
        limit = subset or cfg.TEST.SUBSET
        total = min(len(ids), limit) if limit > 0 else len(ids)
        indices = list(range(rank, total, world))
        model.eval()
        use_bar = rank == 0 and (bool(cfg.TEST.LOG_PROGRESS) or sys.stderr.isatty())
        progress = _Progress(total, logger if rank == 0 else None, use_bar, cfg.PRINT_FREQ, ranks=world)
        try:
            loader = test_loader(dataset, indices, test_workers(cfg, model_device(model)))
            predicted, skipped = _predict_share(cfg, model, output_dir, loader, indices, ids, progress, dataset.spec)
        finally:
            progress.close()
    except Exception as err:
        if not sharded:
            raise
        error = f"rank {rank}: {type(err).__name__}: {err}"
    finally:
        model.train(was_training)
        torch.backends.cudnn.benchmark = benchmark
    if sharded:
        _agree(error)
        shares = du.all_gather_objects((predicted, skipped))
        predicted = sorted((item for share, _ in shares for item in share), key=lambda item: item[0])
        skipped = sorted(image_id for _, share in shares for image_id in share)

    metrics: OrderedDict | None = None
    results: list[dict] = []
    if rank == 0:
        try:
            metrics, results = _write_and_evaluate(cfg, dataset, predicted, skipped, total, output_dir, logger)
        except Exception as err:
            if not sharded:
                raise
            error = f"rank 0: {type(err).__name__}: {err}"
    if sharded:
        metrics, error = du.broadcast_object((metrics, error))
        if error:
            raise ValidationError(error)
    return metrics, results


def _write_and_evaluate(
    cfg: Any,
    dataset: Any,
    predicted: list[tuple[int, list[dict]]],
    skipped: list[int],
    total: int,
    output_dir: str,
    logger: logging.Logger,
) -> tuple[OrderedDict, list[dict]]:
    """Rank 0: the results file (in the data set's image order) and its metrics."""
    if skipped:
        logger.warning("valid: skipped %d unreadable images: %s", len(skipped), skipped[:20])
    results = [result for _, image_results in predicted for result in image_results]
    split = cfg.DATASET.TEST
    path = write_results_json(results, os.path.join(output_dir, "results", f"keypoints_{split}_results.json"))
    logger.info("=> wrote %d person results for %d images to %s", len(results), len(predicted), path)
    if not dataset.coco.dataset.get("annotations"):
        # a test-dev style split, or a file without annotations of the keypoint categories in use
        logger.info(
            "=> %s has no annotations of its keypoint categories (test split?): no evaluation", dataset.ann_file
        )
        return OrderedDict(), results
    ids = list(dataset.ids)
    metrics = evaluate_keypoints(
        dataset.ann_file,
        results,
        dataset.name,
        sigmas=dataset.spec.sigmas,
        image_ids=ids[:total] if total < len(ids) else None,
        category_ids=dataset.categories.ids,
        crowd_index=bool(cfg.DATASET.CROWD_INDEX_EVAL),
    )
    return metrics, results
