"""Configuration: yacs defaults (``cfg``), :func:`update_config` and :func:`check_config`."""

from higherpose.config.default import _C as cfg
from higherpose.config.default import ConfigError, check_config, update_config

__all__ = ["cfg", "update_config", "check_config", "ConfigError"]
