"""The image / folder / video loop of ``tools/demo.py``: predict, draw, write, collect COCO results.

:func:`collect` tells what ``--input`` is, :class:`Demo` predicts and draws one picture through a
:class:`~higherpose.apis.estimator.PoseEstimator`, :func:`run_images` and :func:`run_video` write the
drawings (atomically) with a progress line on stderr.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from higherpose.apis.estimator import PoseEstimator, load_image
from higherpose.core.evaluation import poses_to_coco_results
from higherpose.dataset.specs import spec_from_cfg
from higherpose.utils.meters import format_clock
from higherpose.utils.vis import draw_poses, imwrite_atomic

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}


class Progress:
    """``label: done/total, images/s, ETA`` on stderr: rewritten in place on a terminal, a line every
    ``every_s`` seconds (and at the end) otherwise."""

    def __init__(self, total: int, label: str, every_s: float = 5.0):
        self.total, self.label, self.every_s = total, label, every_s
        self.done, self.start, self.last = 0, time.perf_counter(), 0.0
        self.tty = sys.stderr.isatty()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self.tty:
            print("\r" + self.line(now), end="", file=sys.stderr, flush=True)
        elif now - self.last >= self.every_s or self.done == self.total:
            self.last = now
            print(self.line(now), file=sys.stderr, flush=True)

    def line(self, now: float) -> str:
        rate = self.done / max(now - self.start, 1e-9)
        total = str(self.total) if self.total > 0 else "?"
        eta = format_clock((self.total - self.done) / rate) if self.total > 0 and rate > 0 else "?"
        return f"{self.label}: {self.done}/{total}  {rate:.2f} images/s  ETA {eta}"

    def close(self) -> None:
        if self.tty and self.done:
            print(file=sys.stderr)


class Demo:
    """Runs the model on BGR pictures, draws them and collects the COCO results.

    Args:
        estimator: the network with its test protocol and grouping.
        min_score: people scoring below this are neither drawn nor kept.
        threshold: joints with a confidence above this are drawn.
        joint_scores: write each drawn joint's confidence next to it.
    """

    def __init__(
        self, estimator: PoseEstimator, min_score: float = 0.0, threshold: float = 0.1, joint_scores: bool = False
    ):
        self.estimator = estimator
        self.min_score, self.threshold, self.joint_scores = min_score, threshold, joint_scores
        self.spec = spec_from_cfg(estimator.cfg)
        self.results: list[dict] = []
        self.people = 0

    def __call__(self, image_bgr: np.ndarray, image_id: int) -> np.ndarray:
        """Predict, keep and draw the people of one BGR uint8 image (H, W, 3); returns the drawing."""
        ((poses, scores),) = self.estimator.predict_rgb([load_image(image_bgr)])
        keep = [i for i, s in enumerate(scores) if s >= self.min_score]
        poses, scores = [poses[i] for i in keep], [float(scores[i]) for i in keep]
        self.people += len(poses)
        self.results.extend(poses_to_coco_results(image_id, poses, scores))
        return draw_poses(
            image_bgr, poses, self.spec, scores, threshold=self.threshold, show_joint_scores=self.joint_scores
        )


def image_id_for(path: Path, index: int) -> int:
    """COCO file names are the image id ('000000000139.jpg' -> 139); other names get their index."""
    return int(path.stem) if path.stem.isdigit() else index


def run_images(demo: Demo, paths: list[Path], out_dir: Path) -> tuple[int, list[Path]]:
    """Draw every readable image into ``out_dir``; returns (images done, unreadable paths)."""
    bad: list[Path] = []
    done = 0
    progress = Progress(len(paths), "demo") if len(paths) > 1 else None
    for index, path in enumerate(paths):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            newline = "\n" if progress and progress.tty and progress.done else ""
            print(f"{newline}skipped unreadable image: {path}", file=sys.stderr)
            bad.append(path)
        else:
            drawn = demo(image, image_id_for(path, index))
            ext = path.suffix.lower() if path.suffix.lower() in IMAGE_EXTS else ".jpg"
            imwrite_atomic(out_dir / (path.stem + ext), drawn)
            done += 1
        if progress:
            progress.update()
    if progress:
        progress.close()
    return done, bad


def run_video(demo: Demo, path: Path, out_dir: Path, save_frames: bool, limit: int = 0) -> int:
    """Draw every frame into ``<stem>_pose.mp4`` (written to a temporary name, renamed at the end);
    returns the number of frames."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise OSError(f"cannot open video {path} (unsupported codec or not a video)")
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps = fps if fps and np.isfinite(fps) and fps > 0 else 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    total = min(total, limit) if limit and total > 0 else (limit or total)
    final = out_dir / f"{path.stem}_pose.mp4"
    tmp = out_dir / f".{path.stem}_pose.tmp.mp4"  # VideoWriter picks the container by the extension
    frames_dir = out_dir / f"{path.stem}_frames"
    writer = None
    progress = Progress(total, "demo video")
    index = 0
    try:
        while not limit or index < limit:
            ok, frame = cap.read()
            if not ok:
                break
            drawn = demo(frame, index)
            if writer is None:
                h, w = drawn.shape[:2]
                writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
                if not writer.isOpened():
                    raise OSError(f"cannot write video {tmp} (OpenCV has no mp4v encoder?)")
            writer.write(drawn)
            if save_frames:
                imwrite_atomic(frames_dir / f"{index:06d}.jpg", drawn)
            index += 1
            progress.update()
    finally:
        cap.release()
        progress.close()
        if writer is not None:
            writer.release()
    if index == 0:
        raise OSError(f"no frame could be read from {path}")
    os.replace(tmp, final)
    return index


def collect(path: Path) -> tuple[str, list[Path]]:
    """('image' | 'folder' | 'video', paths) for ``--input``."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise FileNotFoundError(f"--input {path}: no images ({', '.join(sorted(IMAGE_EXTS))}) in this folder")
        return "folder", files
    if not path.exists():
        raise FileNotFoundError(f"--input {path}: no such file or folder")
    ext = path.suffix.lower()
    if ext in VIDEO_EXTS:
        return "video", [path]
    if ext in IMAGE_EXTS:
        return "image", [path]
    raise ValueError(
        f"--input {path}: unknown extension {ext!r} (images: {sorted(IMAGE_EXTS)}; videos: {sorted(VIDEO_EXTS)})"
    )
