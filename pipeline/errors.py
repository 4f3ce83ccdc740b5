"""Exceptions a user can act on, each mapped to a CLI exit code."""

from __future__ import annotations


class PodembedError(Exception):
    """Base class: a failure with a message meant for the user."""

    exit_code = 1


class ConfigError(PodembedError):
    """The configuration or the command line is wrong (exit 2)."""

    exit_code = 2


class SourceError(PodembedError):
    """The source cannot be read at all (exit 2): missing file, wrong schema, bad field map."""

    exit_code = 2


class TargetError(PodembedError):
    """The sink, checkpoint store or server failed (exit 1)."""

    exit_code = 1


class ModelError(PodembedError):
    """The model cannot be loaded or does not match the configuration (exit 2)."""

    exit_code = 2
