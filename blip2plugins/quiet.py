"""Keep the libraries' chatter (progress bars, advisory warnings) off the terminal unless asked for.

``BLIP2_LOG=info`` or ``BLIP2_LOG=debug`` (``blip2 --verbose``) shows it all again. The project's own
warnings and errors are never held back.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator

ENV = "BLIP2_LOG"
LEVELS = {"info": logging.INFO, "debug": logging.DEBUG}

# Warnings libraries give about their own calls, not about anything the user can change.
_LIBRARY_WARNINGS = (
    (FutureWarning, "`is_gradient_checkpointing` is deprecated"),  # peft's PeftModel asks transformers
    (UserWarning, "Already found a `peft_config` attribute in the model"),  # peft, on an adapter swap
)


def log_level() -> int:
    """The level the ``blip2`` command logs at: ``BLIP2_LOG``'s, else warnings and errors only."""
    return LEVELS.get(os.environ.get(ENV, "").strip().lower(), logging.WARNING)


def verbose() -> bool:
    """Whether the user asked to see the libraries' chatter (``BLIP2_LOG=info`` or ``debug``)."""
    return log_level() < logging.WARNING


def _no_bar(factory: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return factory(*args, **{**kwargs, "disable": True})


@contextmanager
def loading() -> Iterator[None]:
    """transformers draws no progress bars (its "Loading weights") within; the hub's download bars stay."""
    from transformers.utils import logging as transformers_logging

    if verbose():
        yield
        return
    previous = transformers_logging.set_tqdm_hook(_no_bar)
    try:
        yield
    finally:
        transformers_logging.set_tqdm_hook(previous)


@contextmanager
def peft() -> Iterator[None]:
    """Around the project's peft calls: no bitsandbytes import, no progress bars, no advisory warnings.

    peft imports bitsandbytes whenever it is installed (at import, and again to add each adapter):
    a second or two and a warning about CPU kernels, for nothing unless a model is quantized, and
    then the quantizing load has imported it already. Within, bitsandbytes is hidden unless loaded.
    """
    if not verbose():
        for category, message in _LIBRARY_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
    hide = "bitsandbytes" not in sys.modules
    if hide:
        sys.modules["bitsandbytes"] = None  # type: ignore[assignment]  # the import system's "not installed"
    try:
        with loading():
            yield
    finally:
        if hide and sys.modules.get("bitsandbytes", False) is None:
            del sys.modules["bitsandbytes"]
            checks = sys.modules.get("peft.import_utils")
            for check in (checks.is_bnb_available, checks.is_bnb_4bit_available) if checks else ():
                check.cache_clear()  # they saw none: a quantized model loaded later needs them
