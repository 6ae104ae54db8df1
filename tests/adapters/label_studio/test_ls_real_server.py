"""The real Label Studio 1.23 and the real backend on loopback, driven through Label Studio's API.

Slow tier: installs Label Studio into its own cached environment on first use (about a minute), builds
a migrated data folder once (about 30 s), then every run starts from a copy of it.
"""

from __future__ import annotations

import pytest

import ls_flow

pytestmark = pytest.mark.slow


def test_captioning_project_end_to_end(tmp_path) -> None:
    report = ls_flow.run(tmp_path, "vocabulary")

    # Predictions for every task, right on ordinary scenes, under the version Label Studio holds.
    assert report["first_predicted"] == report["labeled"] + report["held_out"]
    assert report["first_exact_ordinary"] >= 0.95, report
    assert report["first_exact_count"] >= 0.95, report  # the TextArea with question="how many shapes?"
    assert report["base_version"] == "demo"

    # The team's captions reached the backend through Label Studio's webhook; Start training trained on them.
    assert report["labels_recorded_by_webhook"] == report["labeled"] >= 32
    run = report["run"]
    assert run["status"] == "promoted" and run["labels"] == report["labeled"] == run["records"], run
    assert report["new_version"] == "demo+project-1@v0001" == report["ls_model_version"]
    assert report["new_version"] in report["ls_versions"]
    assert report["second_predicted_held_out"] == report["held_out"], "Label Studio re-predicts with the new version"
    assert report["second_predicted_labeled"] == 0, "only the selected (held-out) tasks are re-predicted"
    assert report["held_out_exact_plain"] >= 0.9, report

    # Interactive pre-annotation continues the annotator's draft.
    text = report["interactive"]["data"]["result"][0]["value"]["text"][0]
    assert text.startswith(report["interactive_draft"] + " "), report["interactive"]

    # Label Studio says the backend refused a project with nothing to fill, and why (in the URL it shows).
    assert "422" in report["setup_refusal"] and "TextAreas-bound-to-an-Image" in report["setup_refusal"]
    assert "setup refused" in report["backend_log"] and "TextArea" in report["backend_log"]
    for secret in report["secrets"]:
        assert secret not in report["backend_log"]

    # Held-out tasks in the team's words, trained with scenarios.VOCABULARY_CONFIG.
    assert report["held_out_exact_special"] >= 0.75, report
