"""Configuration: yacs defaults (``cfg``), :func:`update_config` and :func:`check_config`."""

from .default import _C as cfg
from .default import ConfigError, check_config, update_config

__all__ = ["cfg", "update_config", "check_config", "ConfigError"]
