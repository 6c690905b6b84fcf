"""Draw multi-person poses on an image, a folder of images or a video.

    python tools/demo.py --cfg experiments/coco/higher_hrnet/w32_512_adam_lr1e-3.yaml \\
        --input photo.jpg --output output/demo TEST.MODEL_FILE models/pose_higher_hrnet_w32_512.pth

``--input`` is an image, a folder (its images, not recursive) or a video (by extension). Inference is
``higherpose.PoseEstimator`` (resize, ``TEST.SCALE_FACTOR`` multi-scale, ``TEST.FLIP_TEST``, grouping) on
``DEVICE`` ('' = CUDA when available). Writes, under ``--output``:

* images: ``<name>`` drawn with every person's skeleton in its own colour;
* video: ``<stem>_pose.mp4`` (and ``<stem>_frames/<frame>.jpg`` with ``--save-frames``);
* ``<input name>_keypoints.json``: the poses in COCO result format (``image_id`` = the file stem when
  it is a number, as in COCO file names, else the image's index; the frame index for a video).

Unreadable images are reported and skipped; ``--random-weights`` runs an untrained model (a smoke
test of the pipeline; its poses are meaningless).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from higherpose.apis.estimator import PoseEstimator, load_image
from higherpose.apis.eval_model import load_eval_model
from higherpose.config import ConfigError, update_config
from higherpose.config import cfg as default_cfg
from higherpose.config.cli import add_cfg_argument, add_overrides_argument
from higherpose.core.evaluation import poses_to_coco_results, write_results_json
from higherpose.dataset.specs import spec_from_cfg
from higherpose.models import build_model
from higherpose.utils.checkpoint import CheckpointError
from higherpose.utils.launch import keep_freed_memory
from higherpose.utils.vis import draw_poses, imwrite_atomic

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cfg_argument(parser)
    parser.add_argument("--input", required=True, help="an image, a folder of images, or a video")
    parser.add_argument("--output", default="output/demo", help="folder for the drawn pictures and the JSON")
    parser.add_argument("--threshold", type=float, default=0.1, help="draw joints with confidence above this")
    parser.add_argument("--min-score", type=float, default=0.0, help="draw/keep people scoring at least this")
    parser.add_argument("--joint-scores", action="store_true", help="write each joint's confidence next to it")
    parser.add_argument("--save-frames", action="store_true", help="video: also write every drawn frame as JPEG")
    parser.add_argument("--limit", type=int, default=0, help="process at most N images / frames (0 = all)")
    parser.add_argument(
        "--random-weights", action="store_true", help="no TEST.MODEL_FILE: use an untrained model (smoke test)"
    )
    add_overrides_argument(parser)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------------------------------
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
        eta = _fmt_time((self.total - self.done) / rate) if self.total > 0 and rate > 0 else "?"
        return f"{self.label}: {self.done}/{total}  {rate:.2f} images/s  ETA {eta}"

    def close(self) -> None:
        if self.tty and self.done:
            print(file=sys.stderr)


def _fmt_time(seconds: float) -> str:
    m, s = divmod(int(round(max(seconds, 0.0))), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Demo:
    """Runs the model on BGR pictures, draws them and collects the COCO results."""

    def __init__(self, cfg, model: torch.nn.Module, args: argparse.Namespace):
        self.cfg, self.args = cfg, args
        self.estimator = PoseEstimator(cfg, model)
        self.spec = spec_from_cfg(cfg)
        self.results: list[dict] = []
        self.people = 0

    def __call__(self, image_bgr: np.ndarray, image_id: int) -> np.ndarray:
        ((poses, scores),) = self.estimator.predict_rgb([load_image(image_bgr)])
        keep = [i for i, s in enumerate(scores) if s >= self.args.min_score]
        poses, scores = [poses[i] for i in keep], [float(scores[i]) for i in keep]
        self.people += len(poses)
        self.results.extend(poses_to_coco_results(image_id, poses, scores))
        return draw_poses(
            image_bgr, poses, self.spec, scores, threshold=self.args.threshold, show_joint_scores=self.args.joint_scores
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = default_cfg.clone()
    update_config(cfg, args)
    kind, paths = collect(Path(args.input))
    model, _, device = load_eval_model(cfg, random_weights=args.random_weights, build=build_model, optimize=True)
    if device.type == "cpu":
        keep_freed_memory()
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    demo = Demo(cfg, model, args)
    print(f"demo: {cfg.MODEL.NAME} on {device}, {kind} {args.input} -> {out_dir}", file=sys.stderr)

    start = time.perf_counter()
    bad: list[Path] = []
    if kind == "video":
        done = run_video(demo, paths[0], out_dir, args.save_frames, args.limit)
    else:
        done, bad = run_images(demo, paths[: args.limit] if args.limit else paths, out_dir)
    name = Path(args.input).resolve().stem if kind != "folder" else Path(args.input).resolve().name
    json_path = out_dir / f"{name}_keypoints.json"
    write_results_json(demo.results, str(json_path))
    seconds = time.perf_counter() - start
    unit = "frames" if kind == "video" else "images"
    print(
        f"demo: {done} {unit} in {seconds:.1f} s ({done / max(seconds, 1e-9):.2f}/s), {demo.people} people; "
        f"wrote {out_dir} and {json_path.name}",
        file=sys.stderr,
    )
    if bad:
        print(f"demo: skipped {len(bad)} unreadable image(s): {', '.join(p.name for p in bad)}", file=sys.stderr)
    return 0 if done else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError, OSError) as err:
        sys.exit(f"demo.py: {err}")
