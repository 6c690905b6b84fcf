"""The test protocol: every setting the test-time path reads, taken from the config once.

:class:`TestProtocol` is built by :meth:`TestProtocol.from_config` (``valid.py``, validation during
training, :class:`~higherpose.apis.estimator.PoseEstimator`, the demo) and passed down to
:mod:`higherpose.core.inference`, :mod:`higherpose.core.udp` and :mod:`higherpose.core.group`, so no
per-image or per-stage function looks anything up in the config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from higherpose.core.group import Params
from higherpose.core.layout import OutputLayout
from higherpose.dataset.build import output_sizes


def eval_input_size(cfg: Any) -> int:
    """Short side of the scale-1 test input: ``TEST.INPUT_SIZE``, or ``DATASET.INPUT_SIZE`` when 0."""
    return int(cfg.TEST.INPUT_SIZE) or int(cfg.DATASET.INPUT_SIZE)


def eval_amp_dtype(cfg: Any) -> torch.dtype | None:
    """The autocast dtype of the test forward: ``FP16.DTYPE`` when ``TEST.FP16``, else None (fp32).

    ``FP16.ENABLED`` alone does not reach the test: HigherHRNet evaluates in fp32, and float16 heatmap
    peaks and tag values lose the precision that grouping and refinement read."""
    if not cfg.TEST.FP16:
        return None
    return torch.bfloat16 if cfg.FP16.DTYPE == "bfloat16" else torch.float16


@dataclass(frozen=True)
class TestProtocol:
    """How images are tested (HigherHRNet's ``TEST.*`` and the dataset facts the test needs).

    Attributes:
        input_size: short side of the scale-1 network input (:func:`eval_input_size`).
        scales: ``TEST.SCALE_FACTOR``, in the config's order.
        flip: ``TEST.FLIP_TEST``: the mirrored image too, flip-averaged heatmaps, both tag maps.
        project2image: ``TEST.PROJECT2IMAGE``: maps resized to the scale-1 input before grouping.
        udp: ``DATASET.USE_UDP``: unbiased resampling of the maps and Taylor sub-pixel offsets.
        output_stride: network input pixels per pixel of the last (largest) output, for UDP:
            ``DATASET.INPUT_SIZE`` over the last ``DATASET.OUTPUT_SIZE``, whatever the test size.
        adjust: ``TEST.ADJUST`` (sub-pixel shift of the grouped joints).
        refine: ``TEST.REFINE`` (fill missing joints near the person's mean tag).
        amp_dtype: the forward's autocast dtype (``TEST.FP16``), None for fp32.
        images_per_forward: ``TEST.IMAGES_PER_GPU`` (same-size images only).
        cpu_image_threads: ``TEST.CPU_IMAGE_THREADS`` (0: automatic).
        layout: what each output channel holds (:class:`OutputLayout`).
        grouping: the grouping settings (:class:`~higherpose.core.group.Params`).
        nms_kernel, nms_padding: ``TEST.NMS_KERNEL`` / ``TEST.NMS_PADDING``.
    """

    __test__ = False  # a name pytest would otherwise try to collect

    input_size: int
    scales: tuple[float, ...]
    flip: bool
    project2image: bool
    udp: bool
    output_stride: float
    adjust: bool
    refine: bool
    amp_dtype: torch.dtype | None
    images_per_forward: int
    cpu_image_threads: int
    layout: OutputLayout
    grouping: Params
    nms_kernel: int
    nms_padding: int

    @classmethod
    def from_config(cls, cfg: Any) -> TestProtocol:
        """Read ``TEST.*``, ``DATASET.INPUT_SIZE`` / ``OUTPUT_SIZE`` / ``USE_UDP`` and the output layout."""
        layout = OutputLayout.from_config(cfg)
        return cls(
            input_size=eval_input_size(cfg),
            scales=tuple(float(s) for s in cfg.TEST.SCALE_FACTOR),
            flip=bool(cfg.TEST.FLIP_TEST),
            project2image=bool(cfg.TEST.PROJECT2IMAGE),
            udp=bool(cfg.DATASET.USE_UDP),
            output_stride=float(cfg.DATASET.INPUT_SIZE) / output_sizes(cfg)[-1],
            adjust=bool(cfg.TEST.ADJUST),
            refine=bool(cfg.TEST.REFINE),
            amp_dtype=eval_amp_dtype(cfg),
            images_per_forward=max(1, int(cfg.TEST.IMAGES_PER_GPU)),
            cpu_image_threads=int(cfg.TEST.CPU_IMAGE_THREADS),
            layout=layout,
            grouping=Params.from_cfg(cfg, layout),
            nms_kernel=int(cfg.TEST.NMS_KERNEL),
            nms_padding=int(cfg.TEST.NMS_PADDING),
        )

    @classmethod
    def of(cls, protocol_or_cfg: TestProtocol | Any) -> TestProtocol:
        """``protocol_or_cfg`` itself when it is a protocol, else the protocol of that config (for the
        HigherHRNet-named functions, which take ``cfg`` first)."""
        return protocol_or_cfg if isinstance(protocol_or_cfg, cls) else cls.from_config(protocol_or_cfg)
