"""The errors of the Label Studio backend, all :class:`~blip2plugins.errors.Blip2Error` subclasses."""

from __future__ import annotations

from blip2plugins.errors import Blip2Error


class LabelStudioError(Blip2Error):
    """Base class of the backend's own errors."""


class LabelConfigError(LabelStudioError):
    """A project's labeling config cannot be read, or has nothing this backend can fill."""


class RequestError(LabelStudioError):
    """A request body is not what the protocol says; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class SettingsError(LabelStudioError):
    """A setting of the backend (option, environment variable, training config file) is wrong."""
