"""Predicting a stream of images with a network and a test protocol: images side by side on the CPU,
the forward of the next images beside the grouping of the last ones on a GPU.

:class:`Predictor` holds the network, the :class:`~higherpose.core.protocol.TestProtocol` read once
from the config and the grouping, and predicts images through :func:`~higherpose.core.inference.predict_images`.
On the CPU a stream is split over ``TEST.CPU_IMAGE_THREADS`` threads, each predicting its own images
with a share of torch's threads: two images side by side on one core each keep the cores busier than
one image whose small operations are split across both (a single image runs on all of torch's
threads). On a GPU one thread queues the forwards and the map resampling
(:func:`~higherpose.core.inference.image_maps`) while a second groups the maps of the previous images
(mostly host work: matching, sub-pixel decoding) on a CUDA stream of its own, so the GPU computes the
next forward while the host groups. Validation (:mod:`higherpose.core.validation`) and
:class:`~higherpose.apis.estimator.PoseEstimator` predict through it.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from higherpose.core.group import HeatmapParser
from higherpose.core.inference import (
    ImageMaps,
    group_by_tags,
    image_maps,
    model_device,
    predict_images,
    same_size_chunks,
)
from higherpose.core.protocol import TestProtocol

_AUTO_IMAGE_THREADS = 4  # TEST.CPU_IMAGE_THREADS = 0: at most this many images in flight (memory)


class Predictor:
    """Poses for RGB images with a network and the test protocol of a config.

    Args:
        cfg: the merged config (its ``TEST.*``, ``DATASET.*`` and ``MODEL.*``), read once here.
        model: the network in eval mode on its device, or any callable ``(B, 3, H, W) tensor -> list of
            stage outputs`` (e.g. :class:`~higherpose.apis.onnx_export.OnnxPoseNet`).
    """

    def __init__(self, cfg: Any, model: nn.Module | Callable[[torch.Tensor], Any]):
        self.cfg, self.model = cfg, model
        self.protocol = TestProtocol.from_config(cfg)
        self.parser = HeatmapParser.from_protocol(self.protocol)

    @property
    def image_threads(self) -> int:
        """Images :meth:`predict_rgb` runs side by side: ``TEST.CPU_IMAGE_THREADS`` for a network with
        its parameters on the CPU (0: ``min(torch.get_num_threads(), 4)``); 1 on a GPU and for
        callables without parameters (:class:`~higherpose.apis.onnx_export.OnnxPoseNet`: ONNX Runtime
        has its own threads)."""
        parameter = next(self.model.parameters(), None) if isinstance(self.model, nn.Module) else None
        if parameter is None or parameter.device.type != "cpu":
            return 1
        return self.protocol.cpu_image_threads or min(torch.get_num_threads(), _AUTO_IMAGE_THREADS)

    @property
    def overlaps(self) -> bool:
        """Whether :meth:`predict_stream` groups on a second thread beside the forwards: for a network
        with its parameters on a GPU (any device but the CPU)."""
        parameter = next(self.model.parameters(), None) if isinstance(self.model, nn.Module) else None
        return parameter is not None and parameter.device.type != "cpu"

    def predict_rgb(self, images_rgb: Sequence[np.ndarray]) -> list[tuple[list[np.ndarray], list[float]]]:
        """Per RGB uint8 image (H, W, 3): ``(poses, scores)`` with ``poses[p]`` (K, 3 + L) = (x, y,
        heat value, tags...) in image pixels, as :func:`~higherpose.core.inference.predict_image`."""
        return list(self.predict_stream(images_rgb))

    def predict_stream(
        self, images_rgb: Iterable[np.ndarray], overlap: bool | None = None
    ) -> Iterator[tuple[list[np.ndarray], list[float]]]:
        """:meth:`predict_rgb` for an iterable of any length, one result at a time in its order. Images
        are taken from it as threads become free (at most two forwards a thread waiting), so a data set
        streams through without being held in memory.

        With several image threads torch's thread setting is lowered until the generator is exhausted
        or closed (see ``TEST.CPU_IMAGE_THREADS``). ``overlap`` (default :attr:`overlaps`): the
        forwards on this thread and the grouping on another, one forward ahead; the same results."""
        batch = self.protocol.images_per_forward
        jobs = _chunks(iter(images_rgb), batch)
        if self.overlaps if overlap is None else overlap:
            yield from self._overlapped(jobs, batch)
            return

        def predict(job: list[np.ndarray]) -> list[tuple[list[np.ndarray], list[float]]]:
            with torch.inference_mode():  # per thread: grad mode is thread-local
                return predict_images(self.protocol, self.model, job, self.parser, batch)

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

    def _overlapped(
        self, jobs: Iterator[list[np.ndarray]], batch: int
    ) -> Iterator[tuple[list[np.ndarray], list[float]]]:
        """The results of ``jobs`` (lists of images) in order: the maps of each job computed here, its
        grouping on a second thread while the next job's maps are computed."""
        device = model_device(self.model)
        side = torch.cuda.Stream(device) if device.type == "cuda" else None
        with ThreadPoolExecutor(1) as grouping:
            waiting: deque[tuple[int, list[tuple[list[int], Future]]]] = deque()
            for job in jobs:
                futures = []
                for chunk in same_size_chunks(self.protocol, job, batch):
                    with torch.inference_mode():
                        maps = image_maps(self.protocol, self.model, [job[i] for i in chunk], device)
                    ready = None
                    if side is not None:  # the grouping's kernels wait for these maps only
                        ready = torch.cuda.Event()
                        ready.record()
                    futures.append((chunk, grouping.submit(self._group, maps, side, ready)))
                waiting.append((len(job), futures))
                if len(waiting) > 1:  # one job ahead: its forward runs while the one before is grouped
                    yield from _in_order(*waiting.popleft())
            while waiting:
                yield from _in_order(*waiting.popleft())

    def _group(
        self, maps: ImageMaps, side: torch.cuda.Stream | None, ready: torch.cuda.Event | None
    ) -> list[tuple[list[np.ndarray], list[float]]]:
        """:func:`~higherpose.core.inference.group_by_tags` of ``maps``, on the CUDA stream ``side`` once
        the event ``ready`` (recorded after the maps) has passed, or on the current stream."""
        with torch.inference_mode():
            if side is None:
                return group_by_tags(self.protocol, maps, self.parser)
            with torch.cuda.stream(side):
                side.wait_event(ready)
                # The maps were allocated on the forward's stream: keep their memory until this stream is done.
                maps.det.record_stream(side)
                maps.tags.record_stream(side)
                return group_by_tags(self.protocol, maps, self.parser)


def _in_order(size: int, futures: list[tuple[list[int], Future]]) -> list[tuple[list[np.ndarray], list[float]]]:
    """The results of a job of ``size`` images from the futures of its same-size chunks, in its order."""
    results: list[Any] = [None] * size
    for chunk, future in futures:
        for i, result in zip(chunk, future.result()):
            results[i] = result
    return results


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
