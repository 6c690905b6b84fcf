"""Multi-seed ablations: which runs to train, where their results are kept, and their statistics.

An ablation is every (config, test input size, seed) combination, each trained for the same number
of steps and validated with the same protocol. ``tools/ablation.py`` trains the runs through the
quick start's :func:`~higherpose.studies.quickstart.pipeline`; this module plans them, records each
finished run in ``results.json`` (written atomically after every run, so an interrupted ablation
continues where it stopped and a finished one re-prints without training) and summarises them:
mean ± sample standard deviation over seeds per (config, size), and the paired difference of each
config against the first one on the same seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from higherpose.config import cfg as default_cfg
from higherpose.config import update_config
from higherpose.utils.atomic import atomic_write, write_json_atomic

# The AP columns of the summary; "Ap .5" is HigherHRNet's spelling of the metric's name. Runs evaluated
# as CrowdPose (crowd_pose, DATASET.CROWD_INDEX_EVAL) get a table of their own: their AP (M) is the
# medium crowd index, not COCO's medium size.
METRICS = ("AP", "Ap .5", "AP .75", "AP (M)", "AP (L)")
CROWD_METRICS = ("AP", "Ap .5", "AP .75", "AP (E)", "AP (M)", "AP (H)")
RESULTS_NAME = "results.json"


class AblationError(RuntimeError):
    """An ablation cannot run as asked; the message names the setting."""


@dataclass(frozen=True)
class Run:
    """One training + validation of an ablation."""

    config: str
    size: int
    seed: int

    @property
    def label(self) -> str:
        """The config's name in tables: its file name without ``.yaml``."""
        return Path(self.config).stem

    @property
    def key(self) -> str:
        return f"{self.label}@{self.size}/seed{self.seed}"

    @property
    def folder(self) -> str:
        """Output sub-folder of the run (its checkpoint lets an interrupted run resume)."""
        return f"{self.label}_{self.size}_seed{self.seed}"


def split_configs(values: Sequence[str]) -> tuple[list[str], list[str]]:
    """``--configs`` values as ``(YAML files, KEY VALUE overrides)``: the files are the leading values
    ending in ``.yaml`` / ``.yml``, the overrides everything from the first value that does not (an
    option taking several values swallows the ``KEY VALUE`` list written after it)."""
    values = list(values)
    n = next((i for i, v in enumerate(values) if not v.lower().endswith((".yaml", ".yml"))), len(values))
    return values[:n], values[n:]


def plan(configs: Sequence[str], sizes: Sequence[int], seeds: Sequence[int]) -> list[Run]:
    """Every run, seed by seed: an ablation stopped early still has complete pairs of configs."""
    labels = [Path(c).stem for c in configs]
    if len(set(labels)) != len(labels):
        raise AblationError(f"--configs {' '.join(configs)}: two configs share a file name, the runs would collide")
    return [Run(c, size, seed) for seed in seeds for size in sizes for c in configs]


def load_config(cfg_file: str, opts: Sequence[str] = ()) -> Any:
    cfg = default_cfg.clone()
    update_config(cfg, argparse.Namespace(cfg=cfg_file, opts=list(opts)))
    return cfg


def synthetic_data(cfg: Any, smoke: bool, repo: Path) -> tuple[Path, str] | None:
    """Where a run of ``cfg`` finds its generated data and the generator preset, or None (the config's own
    data set). A synthetic config's ``DATASET.ROOT`` (relative to ``repo``), with ``_smoke`` appended for
    a smoke run; any other config in a smoke run: the plain smoke set."""
    if cfg.DATASET.SYNTHETIC:
        root = Path(cfg.DATASET.ROOT) if Path(cfg.DATASET.ROOT).is_absolute() else repo / cfg.DATASET.ROOT
        return (root.with_name(root.name + "_smoke") if smoke else root), cfg.DATASET.SYNTHETIC_SCENE
    return (repo / "data/synthetic_smoke", "plain") if smoke else None


def size_opts(cfg: Any, cfg_file: str, size: int) -> list[str]:
    """Overrides that test at short side ``size`` and train at the config's own training/test input
    ratio (heatmaps at 1/4 and 1/2 of the training input, as the shipped configs)."""
    test = cfg.TEST.INPUT_SIZE or cfg.DATASET.INPUT_SIZE
    train, rest = divmod(size * cfg.DATASET.INPUT_SIZE, test)
    if rest or train % 32:
        exact = size * cfg.DATASET.INPUT_SIZE / test
        raise AblationError(f"--sizes {size}: {cfg_file} would train at {exact:g}, not a multiple of 32")
    return [
        *("DATASET.INPUT_SIZE", str(train), "DATASET.OUTPUT_SIZE", f"[{train // 4}, {train // 2}]"),
        *("TEST.INPUT_SIZE", str(size)),
    ]


def steps_opts(cfg: Any, cfg_file: str, steps: int | None) -> list[str]:
    """Overrides that train ``steps`` optimiser steps with the config's own schedule shape: the
    epochs (and so the learning-rate steps) stay, each epoch is capped at steps / END_EPOCH."""
    if steps is None:
        return []
    epochs = cfg.TRAIN.END_EPOCH - cfg.TRAIN.BEGIN_EPOCH
    if steps <= 0 or steps % epochs:
        lower, upper = max(epochs, steps // epochs * epochs), (steps // epochs + 1) * epochs
        raise AblationError(
            f"--steps {steps}: {cfg_file} trains {epochs} epochs (TRAIN.END_EPOCH); steps must be a "
            f"positive multiple of it, e.g. {lower} or {upper}"
        )
    return ["TRAIN.ITERS_PER_EPOCH", str(steps // epochs)]


def run_opts(run: Run, steps: int | None, extra: Sequence[str]) -> list[str]:
    """Every override of ``run``: size, schedule, seed, then the user's ``extra`` pairs."""
    cfg = load_config(run.config, extra)
    return [*size_opts(cfg, run.config, run.size), *steps_opts(cfg, run.config, steps), "TRAIN.SEED", str(run.seed)]


class Results:
    """``results.json`` of an ablation folder: its settings and one record per finished run."""

    def __init__(self, path: Path, settings: dict[str, Any], runs: dict[str, dict[str, Any]] | None = None):
        self.path, self.settings, self.runs = path, settings, runs or {}

    @classmethod
    def open(cls, folder: Path, settings: dict[str, Any]) -> Results:
        """The folder's results, or an empty record; :class:`AblationError` when the folder holds an
        ablation with other settings (its runs' checkpoints would be resumed under the wrong ones).

        ``settings["configs"]`` may differ from the folder's: a run's record depends only on its own
        config, the steps and the overrides, so configs can be added to a study, or a subset of its
        configs trained first, without retraining what is there. The stored list is the union."""
        path = folder / RESULTS_NAME
        if not path.exists():
            return cls(path, settings)
        try:
            stored = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise AblationError(f"{path}: not valid JSON ({err})") from err
        old = stored.get("settings", {})
        changed = {k: (old.get(k), v) for k, v in settings.items() if k != "configs" and old.get(k) != v}
        if changed:
            said = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in changed.items())
            raise AblationError(
                f"{path} holds an ablation with other settings ({said}); use another --output or the same settings"
            )
        configs = list(dict.fromkeys([*old.get("configs", []), *settings.get("configs", [])]))
        return cls(path, {**settings, "configs": configs}, stored.get("runs", {}))

    def add(self, run: Run, record: dict[str, Any]) -> None:
        self.runs[run.key] = {"config": run.config, "size": run.size, "seed": run.seed, **record}
        write_json_atomic({"settings": self.settings, "runs": self.runs}, self.path, indent=1)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); the deviation is nan for fewer than two values."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def _by_seed(runs: Iterable[dict[str, Any]], label: str, size: int, metric: str) -> dict[int, float]:
    return {r["seed"]: r["metrics"][metric] for r in runs if Path(r["config"]).stem == label and r["size"] == size}


def paired_differences(runs: Iterable[dict[str, Any]], base: str, other: str, size: int, metric: str = "AP") -> list:
    """``other - base`` of ``metric`` at ``size`` for every seed both configs finished, by seed."""
    runs = list(runs)
    a, b = _by_seed(runs, base, size, metric), _by_seed(runs, other, size, metric)
    return [b[s] - a[s] for s in sorted(a.keys() & b.keys())]


def _pm(values: Sequence[float], signed: bool = False) -> str:
    if not signed and any(v < 0 for v in values):  # COCOeval's -1: no ground truth in the metric's area range
        return "–"
    mean, std = mean_std(values)
    shown = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    return shown if math.isnan(std) else f"{shown} ± {std:.3f}"


def _is_crowd(runs: Sequence[dict[str, Any]], label: str) -> bool:
    return any("AP (E)" in r["metrics"] for r in runs if Path(r["config"]).stem == label)


def summary_table(runs: Iterable[dict[str, Any]], labels: Sequence[str], sizes: Sequence[int]) -> str:
    """Markdown: mean ± std over seeds of :data:`METRICS` per (config, size) with each seed's AP (configs
    evaluated as CrowdPose: a second table of :data:`CROWD_METRICS`), then the paired AP difference of
    every config against the first."""
    runs = list(runs)
    lines: list[str] = []
    for columns, crowd in ((METRICS, False), (CROWD_METRICS, True)):
        family = [label for label in labels if _is_crowd(runs, label) == crowd]
        if not family:
            continue
        head = ["config", "size", "seeds", *columns, "AP per seed"]
        lines += ([""] if lines else []) + ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for size in sizes:
            for label in family:
                per_metric = {m: _by_seed(runs, label, size, m) for m in columns}
                seeds = sorted(per_metric["AP"])
                if not seeds:
                    continue
                cells = [_pm([per_metric[m][s] for s in seeds]) for m in columns]
                each = ", ".join(f"{per_metric['AP'][s]:.3f}" for s in seeds)
                lines.append(f"| {label} | {size} | {len(seeds)} | " + " | ".join(cells) + f" | {each} |")
    if len(labels) > 1:
        lines += ["", "| size | paired AP difference (same seed) | seeds | per seed |", "|---|---|---|---|"]
        for size in sizes:
            for other in labels[1:]:
                diffs = paired_differences(runs, labels[0], other, size)
                if diffs:
                    each = ", ".join(f"{d:+.3f}" for d in diffs)
                    lines.append(
                        f"| {size} | {other} − {labels[0]}: {_pm(diffs, signed=True)} | {len(diffs)} | {each} |"
                    )
    return "\n".join(lines)


def plot(runs: Iterable[dict[str, Any]], labels: Sequence[str], sizes: Sequence[int], path: Path) -> None:
    """PNG: AP against test input size, one line per config, error bars of one standard deviation."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    runs = list(runs)
    fig, ax = plt.subplots(figsize=(7.5, 4))
    # Up to 20 configs keep a colour each (the default cycle repeats after 10); markers tell neighbours apart.
    colours = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20").colors
    markers = "osD^vP*Xhp"
    for i, label in enumerate(labels):
        xs, means, stds = [], [], []
        for size in sorted(sizes):
            values = list(_by_seed(runs, label, size, "AP").values())
            if values:
                mean, std = mean_std(values)
                xs.append(size * (1 + 0.015 * (i - (len(labels) - 1) / 2)))  # bars side by side
                means.append(mean)
                stds.append(0.0 if math.isnan(std) else std)
        if xs:
            style = {"color": colours[i % len(colours)], "marker": markers[i % len(markers)]}
            ax.errorbar(xs, means, yerr=stds, capsize=4, label=label, **style)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(sizes), [str(s) for s in sorted(sizes)])
    ax.minorticks_off()
    ax.set_xlabel("test input size (short side, px)")
    ax.set_ylabel("AP (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", frameon=False)  # beside the bars
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120), binary=True)
    plt.close(fig)
