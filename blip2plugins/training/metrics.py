"""Held-out metrics: caption exact match, BLEU-4 and CIDEr-D, and VQA exact-match accuracy.

BLEU-4 and CIDEr-D come from ``pycocoevalcap``, the reference COCO caption evaluation code, so the
numbers compare with published COCO results; its wheel is ~100 MB (Java jars for METEOR/SPICE, not
used here) but it sits in the optional ``train`` extra, and no lighter maintained package has CIDEr-D.
Captions are tokenised without the Java PTB tokenizer: lower-cased, split on non-word characters,
punctuation dropped.

    caption_metrics(["a red circle"], [["a red circle", "one red circle"]])
    # {"exact_match": 1.0, "bleu4": ..., "cider": ...}
"""

from __future__ import annotations

import re
from typing import Sequence

from ..errors import EvalError

#: How to install what the training metrics and plots need.
INSTALL_HINT = "pip install 'blip2plugins[train]'"
_WORD = re.compile(r"\w+")


def normalize(text: str) -> str:
    """``text`` lower-cased, whitespace collapsed, final periods dropped: what exact match compares."""
    return " ".join(text.lower().split()).rstrip(".").rstrip()


def tokenize(text: str) -> list[str]:
    """The tokens BLEU and CIDEr see: lower-cased words, punctuation dropped."""
    return _WORD.findall(text.lower())


def _accepted(name: str, values: Sequence[str | Sequence[str]]) -> list[list[str]]:
    """Each item as a non-empty list of strings (a bare string is one accepted value)."""
    out = []
    for i, value in enumerate(values):
        items = [value] if isinstance(value, str) else list(value)
        if not items or not all(isinstance(v, str) for v in items):
            raise EvalError(f"{name}[{i}]: needs one or more strings, got {value!r}")
        out.append(items)
    return out


def _check(predictions: Sequence[str], name: str, targets: Sequence[object]) -> None:
    if not predictions:
        raise EvalError("predictions: empty, nothing to score")
    if len(predictions) != len(targets):
        raise EvalError(f"predictions and {name} differ in length: {len(predictions)} vs {len(targets)}")
    for i, p in enumerate(predictions):
        if not isinstance(p, str):
            raise EvalError(f"predictions[{i}]: needs a string, got {type(p).__name__}")


def _exact_match(predictions: Sequence[str], accepted: list[list[str]]) -> float:
    hits = sum(normalize(p) in {normalize(a) for a in ok} for p, ok in zip(predictions, accepted))
    return hits / len(predictions)


def caption_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """``exact_match``, corpus ``bleu4`` and ``cider`` (CIDEr-D) of one caption per image.

    ``references[i]`` lists the accepted captions of image ``i``. CIDEr weighs n-grams by their
    rarity among these references, so score a whole held-out set: on a single image it is 0.
    """
    _check(predictions, "references", references)
    refs = _accepted("references", references)
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
    except ImportError as e:
        raise ImportError(f"caption metrics need pycocoevalcap: {INSTALL_HINT}") from e
    res = {i: [" ".join(tokenize(p))] for i, p in enumerate(predictions)}
    gts = {i: [" ".join(tokenize(r)) for r in rs] for i, rs in enumerate(refs)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {"exact_match": _exact_match(predictions, refs), "bleu4": float(bleu[3]), "cider": float(cider)}


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[str | Sequence[str]]) -> float:
    """The fraction of predictions equal, after :func:`normalize`, to one of their accepted answers.

    Plain exact match, not the VQAv2 ``min(1, humans / 3)`` soft score.
    """
    _check(predictions, "answers", answers)
    return _exact_match(predictions, _accepted("answers", answers))
