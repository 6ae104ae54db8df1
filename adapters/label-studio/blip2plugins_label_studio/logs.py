"""Log lines of the backend that must carry a traceback whatever the formatter (``blip2``'s one-line
formatter drops ``exc_info``): the traceback goes into the message itself."""

from __future__ import annotations

import logging
import traceback


def failure(log: logging.Logger, message: str, *args: object) -> None:
    """Log ``message`` at ERROR with the traceback of the exception being handled, in the message."""
    log.error(message + "\n%s", *args, traceback.format_exc().rstrip())
