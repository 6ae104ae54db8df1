"""Exceptions raised by blip2plugins: one base class, one subclass per kind of bad input."""

from __future__ import annotations


class Blip2Error(Exception):
    """Base class of every error blip2plugins raises on purpose (bad input, bad plugin, bad model)."""


class ImageError(Blip2Error):
    """An image source could not be turned into an RGB image.

    ``source`` is a short, printable description of the input (never the raw bytes) and
    ``reason`` says what is wrong with it, e.g. ``"not an image"`` or ``"too large"``.
    """

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class OptionError(Blip2Error, ValueError):
    """A generation or task option is unknown or out of range."""


class ModelLoadError(Blip2Error):
    """A checkpoint could not be loaded, or was refused by a guard (e.g. processor/model mismatch)."""


class PluginError(Blip2Error):
    """A plugin could not be loaded or implements a hook that no spec declares."""


class DataError(Blip2Error):
    """A training dataset could not be read, or (with ``strict``) holds a bad record."""


class StoreError(Blip2Error):
    """An adapter store operation failed: unknown version, corrupt metadata, or a refused promotion."""


class EvalError(Blip2Error, ValueError):
    """Predictions, references or a training report that cannot be scored or plotted."""


class IndexFileError(Blip2Error):
    """An image index cannot be used: missing, corrupt or truncated file, empty, or built by another model."""
