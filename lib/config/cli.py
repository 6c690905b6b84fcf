"""The command-line arguments every script shares: ``--cfg`` and the trailing ``KEY VALUE`` overrides."""

from __future__ import annotations

import argparse


def add_cfg_argument(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--cfg``: the experiment YAML (HigherHRNet's flag)."""
    parser.add_argument("--cfg", required=True, type=str, help="experiment configure file (YAML)")
    return parser


def add_overrides_argument(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The config overrides ``KEY VALUE ...``; added last, since they take the rest of the command line."""
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=None, help="config overrides: KEY VALUE ...")
    return parser
