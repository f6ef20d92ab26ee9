"""The one error loading the settings raises."""

from __future__ import annotations


class ConfigError(Exception):
    """The configuration cannot be used; the message names the option and the problem."""
