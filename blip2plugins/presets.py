"""Default plugin: the built-in model presets (the bundled demo model and Salesforce's checkpoints),
and :func:`resolve`, which turns a model name into a preset without importing torch."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .demo import MODEL_DIR
from .errors import ModelLoadError
from .hookspecs import hookimpl
from .types import ModelPreset

DEMO_RETRIEVAL = ModelPreset(
    name="demo-retrieval",
    source=str(MODEL_DIR / "retrieval"),
    kind="retrieval",
    description="The demo model's retrieval head (ITM, ITC), trained on the same synthetic shapes",
)
DEMO = ModelPreset(
    name="demo",
    source=str(MODEL_DIR),
    family="opt",
    description="Bundled tiny BLIP-2 trained on synthetic shapes; it knows nothing else",
    retrieval=DEMO_RETRIEVAL.name,
)
ITM_VIT_G = ModelPreset(
    name="blip2-itm-vit-g",
    source="Salesforce/blip2-itm-vit-g",
    kind="retrieval",
    description="Q-Former with ITM and ITC heads on ViT-g (no language model): matching, similarity, embeddings",
)

_SALESFORCE = (
    ("blip2-opt-2.7b", "opt", "OPT-2.7b language model, pre-trained"),
    ("blip2-opt-6.7b", "opt", "OPT-6.7b language model, pre-trained"),
    ("blip2-opt-2.7b-coco", "opt", "OPT-2.7b, fine-tuned on COCO captions"),
    ("blip2-opt-6.7b-coco", "opt", "OPT-6.7b, fine-tuned on COCO captions"),
    ("blip2-flan-t5-xl", "t5", "Flan-T5-XL language model, pre-trained"),
    ("blip2-flan-t5-xxl", "t5", "Flan-T5-XXL language model, pre-trained"),
    ("blip2-flan-t5-xl-coco", "t5", "Flan-T5-XL, fine-tuned on COCO captions"),
)


@hookimpl
def register_models(register: Callable[[ModelPreset], None]) -> None:
    register(DEMO)
    register(DEMO_RETRIEVAL)
    register(ITM_VIT_G)
    for name, family, description in _SALESFORCE:
        register(ModelPreset(name=name, source=f"Salesforce/{name}", family=family, description=description))


def resolve(model: str) -> ModelPreset:
    """A preset by name or alias, a local checkpoint folder, or a hub id (``org/name``)."""
    from .plugins import model_presets  # plugins loads this module: import it late

    presets = model_presets()
    if model in presets:
        return presets[model]
    path = Path(model).expanduser()
    if path.is_dir():
        return ModelPreset(name=path.name, source=str(path))
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise ModelLoadError(
            f"unknown model {model!r}: not a preset ({', '.join(sorted(presets))}), "
            "a checkpoint folder or a hub id like 'Salesforce/blip2-opt-2.7b'"
        )
    return ModelPreset(name=model, source=model)
