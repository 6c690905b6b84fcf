"""Output folders and loggers for the tools (HigherHRNet ``utils.utils.create_logger`` / ``setup_logger``).

Layout as HigherHRNet: ``OUTPUT_DIR/<DATASET.DATASET>/<MODEL.NAME>/<cfg basename>`` for checkpoints,
logs and results, ``LOG_DIR/<dataset>/<model>/<cfg basename>_<time>`` for TensorBoard. Rank-aware:
every rank writes its own ``<phase>_<time>_rank<r>.log``, only rank 0 also logs to the console and
creates the TensorBoard folder (HigherHRNet let every rank print and polled for folders).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from higherpose.config import ConfigError

_FORMAT = "%(asctime)-15s %(message)s"
_OURS = "_higherpose_handler"  # marks handlers we added, so a second call replaces them


def _current_rank() -> int:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    return int(os.environ.get("RANK", 0))


def setup_logger(final_output_dir: str | os.PathLike, rank: int, phase: str) -> tuple[logging.Logger, str]:
    """Root logger at INFO writing to ``final_output_dir/<phase>_<time>_rank<rank>.log`` (and to the
    console on rank 0). Calling it again replaces the handlers of the previous call. Returns
    ``(logger, time_str)``."""
    time_str = time.strftime("%Y-%m-%d-%H-%M")
    log_file = Path(final_output_dir) / f"{phase}_{time_str}_rank{rank}.log"
    logger = logging.getLogger()
    for handler in [h for h in logger.handlers if getattr(h, _OURS, False)]:
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.INFO)
    handlers: list[logging.Handler] = [logging.FileHandler(log_file)]
    if rank == 0:
        handlers.append(logging.StreamHandler(sys.stdout))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(_FORMAT))
        setattr(handler, _OURS, True)
        logger.addHandler(handler)
    return logger, time_str


def ensure_writable_dir(path: str | os.PathLike, key: str) -> None:
    """Create the folder ``path`` (and its parents) and check that this process may write in it.

    Raises :class:`~higherpose.config.ConfigError` in one line naming the config ``key`` it comes from
    and the folder, before any work starts (instead of a PermissionError once the first file is written).
    """
    path = os.fspath(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:  # permission denied, a regular file in the way, a read-only file system
        raise ConfigError(f"{key}: cannot create the folder {path}: {err.strerror or err}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: the folder {path} is not writable by this user; choose another {key}")


def output_dir_for(cfg: Any, cfg_name: str) -> Path:
    """``OUTPUT_DIR/<DATASET.DATASET>/<MODEL.NAME>/<cfg basename without extension>``."""
    dataset = cfg.DATASET.DATASET.replace(":", "_")
    name = os.path.basename(cfg_name).split(".")[0]
    return Path(cfg.OUTPUT_DIR) / dataset / cfg.MODEL.NAME / name


def create_logger(
    cfg: Any, cfg_name: str, phase: str = "train", rank: int | None = None
) -> tuple[logging.Logger, str, str]:
    """Create the output folder and the logger. Returns ``(logger, final_output_dir, tb_log_dir)``.

    An output or TensorBoard folder that cannot be created or written raises
    :class:`~higherpose.config.ConfigError` naming ``OUTPUT_DIR`` / ``LOG_DIR`` and the folder.

    ``rank`` defaults to the torch.distributed rank (or the ``RANK`` environment variable, else 0).
    """
    rank = _current_rank() if rank is None else rank
    final_output_dir = output_dir_for(cfg, cfg_name)
    ensure_writable_dir(final_output_dir, "OUTPUT_DIR")  # makedirs is safe when several ranks race
    dataset = cfg.DATASET.DATASET.replace(":", "_")
    name = os.path.basename(cfg_name).split(".")[0]
    tb_parent = Path(cfg.LOG_DIR) / dataset / cfg.MODEL.NAME
    if rank == 0:
        # Checked before the log file is opened, so a bad LOG_DIR fails before anything is written.
        ensure_writable_dir(tb_parent, "LOG_DIR")
    logger, time_str = setup_logger(final_output_dir, rank, phase)
    tb_log_dir = tb_parent / f"{name}_{time_str}"
    if rank == 0:
        tb_log_dir.mkdir(parents=True, exist_ok=True)
    return logger, str(final_output_dir), str(tb_log_dir)
