"""What a project's labeling config asks of this backend: the TextAreas bound to an Image.

    config = parse_label_config('<View><Image name="image" value="$image"/>'
                                '<TextArea name="caption" toName="image"/></View>')
    config.targets  # (Target(from_name='caption', to_name='image', data_key='image', question=None),)

A ``TextArea`` whose ``toName`` names an ``Image`` gets a caption. One with a ``question`` attribute
(``<TextArea name="colour" toName="image" question="what color is the circle?"/>``) gets the
model's answer to that question instead. Per-region TextAreas (``perRegion="true"``) and TextAreas
bound to other objects are left alone.
"""

from __future__ import annotations

import functools
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .errors import LabelConfigError

#: The attribute of a TextArea that makes it a question about its image.
QUESTION_ATTRIBUTE = "question"
#: The longest labeling config read (real ones are a few kilobytes; parsed configs are cached).
MAX_CONFIG_CHARS = 1024 * 1024
_EXAMPLE = '<Image name="image" value="$image"/> <TextArea name="caption" toName="image"/>'


@dataclass(frozen=True)
class Target:
    """One TextArea this backend fills: ``from_name`` its name, ``to_name`` its Image's name,
    ``data_key`` the task data field holding the image, ``question`` what to ask (None: a caption)."""

    from_name: str
    to_name: str
    data_key: str
    question: str | None = None

    def region(self, text: str) -> dict[str, Any]:
        """A prediction region holding ``text`` for this TextArea, in Label Studio's result shape."""
        return {"from_name": self.from_name, "to_name": self.to_name, "type": "textarea", "value": {"text": [text]}}


@dataclass(frozen=True)
class LabelConfig:
    """The targets of one labeling config, in the order the config lists them."""

    targets: tuple[Target, ...]

    def target(self, from_name: object) -> Target | None:
        return next((t for t in self.targets if t.from_name == from_name), None)

    def texts(self, results: Iterable[Any]) -> dict[str, list[str]]:
        """The texts of each target in an annotation's (or context's) ``result`` list; others are ignored."""
        found: dict[str, list[str]] = {}
        for result in results:
            if not isinstance(result, Mapping) or str(result.get("type", "")).lower() != "textarea":
                continue
            target = self.target(result.get("from_name"))
            value = result.get("value")
            texts = value.get("text") if isinstance(value, Mapping) else None
            if target is None or texts is None:
                continue
            for text in [texts] if isinstance(texts, str) else texts if isinstance(texts, list) else []:
                if isinstance(text, str) and (clean := " ".join(text.split())):
                    found.setdefault(target.from_name, []).append(clean)
        return found


def image_ref(data: object, target: Target) -> str:
    """The image reference of ``target`` in a task's ``data``; :class:`LabelConfigError` if missing."""
    value = data.get(target.data_key) if isinstance(data, Mapping) else None
    if not isinstance(value, str) or not value.strip():
        raise LabelConfigError(f"task data has no image in {target.data_key!r} (the Image {target.to_name!r} "
                               f"reads ${target.data_key})")
    return value.strip()


@functools.lru_cache(maxsize=64)
def parse_label_config(xml: str) -> LabelConfig:
    """The targets of a labeling config; :class:`LabelConfigError` when it cannot be read or has none."""
    if not isinstance(xml, str) or not xml.strip():
        raise LabelConfigError("the labeling config is empty")
    if len(xml) > MAX_CONFIG_CHARS:
        raise LabelConfigError(f"the labeling config is {len(xml):,} characters long, over the limit of "
                               f"{MAX_CONFIG_CHARS:,}")
    if "<!DOCTYPE" in xml.upper() or "<!ENTITY" in xml.upper():
        raise LabelConfigError("the labeling config must not declare a DOCTYPE or entities")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise LabelConfigError(f"the labeling config is not valid XML: {exc}") from None
    elements = list(root.iter())
    images = {el.get("name"): el for el in elements if el.tag.lower() == "image" and el.get("name")}
    targets: list[Target] = []
    skipped: list[str] = []
    for el in elements:
        if el.tag.lower() != "textarea":
            continue
        name = el.get("name") or ""
        bound = [n.strip() for n in (el.get("toName") or "").split(",") if n.strip()]
        image_name = next((n for n in bound if n in images), None)
        if not name:
            skipped.append("a TextArea without a name")
        elif image_name is None:
            skipped.append(f"TextArea {name!r} (toName {','.join(bound) or 'missing'} is not an Image)")
        elif (el.get("perRegion") or "").lower() == "true":
            skipped.append(f"TextArea {name!r} (per region)")
        else:
            value = images[image_name].get("value") or ""
            if not value.startswith("$") or len(value) < 2:
                skipped.append(f"TextArea {name!r} (Image {image_name!r} has value={value!r}, not $field)")
                continue
            question = " ".join((el.get(QUESTION_ATTRIBUTE) or "").split()) or None
            targets.append(Target(name, image_name, value[1:], question))
    if not targets:
        found = f" (found: {'; '.join(skipped)})" if skipped else ""
        raise LabelConfigError(f"this BLIP-2 backend fills TextAreas bound to an Image, and the labeling config "
                               f"has none{found}; add for example: {_EXAMPLE}")
    return LabelConfig(tuple(targets))
