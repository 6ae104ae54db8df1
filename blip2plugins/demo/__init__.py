"""The bundled demo: a synthetic shapes world and a tiny BLIP-2 (OPT) trained on it from scratch.

``world`` draws the scenes, ``recipe`` trains and evaluates the model, ``commands`` adds
``blip2 demo train`` / ``blip2 demo eval``. The trained model ships in :data:`MODEL_DIR`.
"""

from __future__ import annotations

from pathlib import Path

MODEL_DIR = Path(__file__).parent / "model"
