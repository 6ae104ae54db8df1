"""Language-model families of BLIP-2 checkpoints: prompt templates and LoRA target presets.

The same templates are used at inference and training time, so a fine-tuned model sees the prompts
it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ModelLoadError
from .texts import require_text


@dataclass(frozen=True)
class Family:
    """How to talk to one LM family.

    ``question`` renders a single question; ``turn`` renders one past question/answer pair of a
    chat (turns are joined with a space and the new question follows). LoRA targets are module-name
    patterns inside the language model; ``lora_mlp_targets`` are the opt-in MLP layers.
    """

    name: str
    model_type: str
    decoder_only: bool
    question: str
    turn: str
    lora_targets: tuple[str, ...]
    lora_mlp_targets: tuple[str, ...]

    def render_question(self, question: str) -> str:
        """The prompt for one question, e.g. ``"Question: how many? Answer:"``."""
        return self.question.format(question=require_text(question, "a question").strip())

    def render_chat(self, turns: list[tuple[str, str]], question: str) -> str:
        """Past ``(question, answer)`` turns followed by the new question, as one prompt."""
        past = [self.turn.format(question=q.strip(), answer=a.strip()) for q, a in turns]
        return " ".join([*past, self.render_question(question)])


OPT = Family(
    name="opt", model_type="opt", decoder_only=True,
    question="Question: {question} Answer:", turn="Question: {question} Answer: {answer}.",
    lora_targets=("q_proj", "k_proj", "v_proj", "out_proj"), lora_mlp_targets=("fc1", "fc2"),
)
T5 = Family(
    name="t5", model_type="t5", decoder_only=False,
    question="Question: {question} Short answer:", turn="Question: {question} Answer: {answer}.",
    lora_targets=("q", "k", "v", "o"), lora_mlp_targets=("wi", "wo", "wi_0", "wi_1"),
)
FAMILIES: dict[str, Family] = {f.name: f for f in (OPT, T5)}


def family_of(model_type: str) -> Family:
    """The family of a language model ``model_type`` (``"opt"``, ``"t5"``, ``"mt5"``...)."""
    for family in FAMILIES.values():
        if model_type == family.model_type or model_type.endswith(family.model_type):
            return family
    raise ModelLoadError(f"unsupported language model type {model_type!r}: expected one of {sorted(FAMILIES)}")
