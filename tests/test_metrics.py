"""Held-out metrics (exact match, BLEU-4, CIDEr-D, VQA accuracy) and the training curve plot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from blip2plugins.errors import Blip2Error
from blip2plugins.training.metrics import EvalError, caption_metrics, normalize, tokenize, vqa_accuracy
from blip2plugins.training.plot import plot_curves

REFS = [
    ["a red circle and a blue square", "one red circle next to a blue square"],
    ["two green triangles on the left", "a pair of green triangles"],
    ["a yellow square above a red triangle", "one yellow square and one red triangle"],
]
RIGHT = ["A red circle and a blue square.", "two green triangles on the left", "a yellow square above a red triangle"]
WRONG = ["three blue circles", "a yellow circle", "nothing at all here"]


def library_scores(predictions: list[str], references: list[list[str]]) -> tuple[float, float]:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    res = {i: [" ".join(tokenize(p))] for i, p in enumerate(predictions)}
    gts = {i: [" ".join(tokenize(r)) for r in rs] for i, rs in enumerate(references)}
    return Bleu(4).compute_score(gts, res, verbose=0)[0][3], Cider().compute_score(gts, res)[0]


def test_normalize_matches_the_demo_recipe() -> None:
    assert normalize("  A Red  Circle.\n") == "a red circle"
    assert normalize("yes ..") == "yes"
    assert tokenize("A red-circle, and 2 squares.") == ["a", "red", "circle", "and", "2", "squares"]


def test_exact_match_ignores_case_final_period_and_spacing() -> None:
    got = caption_metrics(["A Red Circle.", "a  blue square", "a green circle"],
                          [["a red circle"], ["one blue square", "a blue square."], ["a red circle"]])
    assert got["exact_match"] == pytest.approx(2 / 3)


def test_bleu4_is_max_for_identical_captions_and_lower_for_wrong_ones() -> None:
    perfect = caption_metrics([rs[0] for rs in REFS], REFS)
    wrong = caption_metrics(WRONG, REFS)
    assert perfect["bleu4"] == pytest.approx(1.0)
    assert perfect["exact_match"] == 1.0
    assert wrong["bleu4"] < 0.5 * perfect["bleu4"]
    assert wrong["exact_match"] == 0.0


def test_cider_prefers_the_right_captions_and_matches_the_library() -> None:
    right, wrong = caption_metrics(RIGHT, REFS), caption_metrics(WRONG, REFS)
    assert right["cider"] > wrong["cider"] >= 0.0
    for predictions, got in ((RIGHT, right), (WRONG, wrong)):
        bleu4, cider = library_scores(predictions, REFS)
        assert got["bleu4"] == pytest.approx(bleu4)
        assert got["cider"] == pytest.approx(cider)


def test_tokenisation_ignores_case_and_punctuation() -> None:
    plain = caption_metrics([p.lower().rstrip(".") for p in RIGHT], REFS)
    shouted = caption_metrics([p.upper() + "!" for p in RIGHT], REFS)
    assert plain["bleu4"] == pytest.approx(shouted["bleu4"])
    assert plain["cider"] == pytest.approx(shouted["cider"])


def test_vqa_accuracy_accepts_strings_and_lists_of_answers() -> None:
    assert vqa_accuracy(["Red.", "2", "no"], ["red", ["two", "2"], ["yes"]]) == pytest.approx(2 / 3)
    assert vqa_accuracy(["Blue"], [("blue", "navy")]) == 1.0


@pytest.mark.parametrize("call", [
    lambda: caption_metrics([], []),
    lambda: vqa_accuracy([], []),
])
def test_empty_inputs_are_refused(call) -> None:
    with pytest.raises(EvalError, match="empty"):
        call()


def test_mismatched_lengths_name_both() -> None:
    with pytest.raises(EvalError, match="3 vs 2"):
        caption_metrics(RIGHT, REFS[:2])
    with pytest.raises(ValueError, match="1 vs 2"):
        vqa_accuracy(["red"], ["red", "blue"])


def test_bad_items_are_named() -> None:
    with pytest.raises(Blip2Error, match=r"references\[1\]"):
        caption_metrics(["a", "b"], [["a"], []])
    with pytest.raises(Blip2Error, match=r"predictions\[0\]"):
        vqa_accuracy([None], ["red"])  # type: ignore[list-item]


def test_missing_libraries_say_how_to_install(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "pycocoevalcap.bleu.bleu", None)
    with pytest.raises(ImportError, match=r"pip install 'blip2plugins\[train\]'"):
        caption_metrics(RIGHT, REFS)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install 'blip2plugins\[train\]'"):
        plot_curves({"losses": [(1, 1.0)]}, tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_heavy_libraries_load_only_when_used() -> None:
    code = ("import sys, blip2plugins.training.metrics, blip2plugins.training.plot; "
            "print(sorted(m for m in ('matplotlib', 'pycocoevalcap') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


LOSSES = [(s, 3.0 / s) for s in range(10, 210, 10)]


@pytest.mark.parametrize("evals", [None, [{"step": 100, "cider": 0.8, "vqa_accuracy": 0.5},
                                          {"step": 200, "cider": 1.4, "vqa_accuracy": 0.7}]])
def test_plot_curves_writes_a_png_and_no_temp_file(tmp_path: Path, evals) -> None:
    report = {"losses": LOSSES, **({"evals": evals} if evals else {})}
    out = plot_curves(report, tmp_path / "plots" / "run.png")
    assert out == tmp_path / "plots" / "run.png"
    assert out.stat().st_size > 0
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 0 and img.height > 0
    assert [p.name for p in out.parent.iterdir()] == ["run.png"]


def test_plot_with_evals_differs_from_plain_loss(tmp_path: Path) -> None:
    plain = plot_curves({"losses": LOSSES}, tmp_path / "a.png").read_bytes()
    with_evals = plot_curves({"losses": LOSSES, "evals": [{"step": 50, "cider": 1.0}]}, tmp_path / "b.png").read_bytes()
    assert plain != with_evals


@pytest.mark.parametrize("report, where", [
    ({}, r"report\['losses'\]"),
    ({"losses": [(1, "high")]}, r"report\['losses'\]"),
    ({"losses": [(1, 1.0)], "evals": [{"cider": 1.0}]}, r"report\['evals'\]\[0\]"),
    ({"losses": [(1, 1.0)], "evals": [{"step": 1, "cider": "good"}]}, r"report\['evals'\]\[0\]\['cider'\]"),
])
def test_bad_reports_are_refused_and_keep_the_old_plot(tmp_path: Path, report, where) -> None:
    out = plot_curves({"losses": LOSSES}, tmp_path / "run.png")
    before = out.read_bytes()
    with pytest.raises(EvalError, match=where):
        plot_curves(report, out)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["run.png"]
