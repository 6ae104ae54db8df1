"""Label Studio backend, end to end on the real Label Studio: label, train, re-predict, and measure.

Runs the slow test's flow (``tests/adapters/label_studio/ls_flow.py``) for a scenario and prints what
was measured: prediction accuracy before training, the run (gate verdict, time), and held-out accuracy
after it, on the special scenes (a square in the team's words; a purple shape) and on plain ones, and
the held-out captions that are not captions of the world's grammar (malformed). The held-out tasks are
drawn by the independent painter (``tests/independent``); the labeled ones by the demo world.
Needs the Label Studio environment (``bash scripts/setup.sh --label-studio-only``, done on first use).

    python benchmarks/label_studio_flow.py [--scenario vocabulary|purple|both]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS / "adapters" / "label_studio"), str(TESTS)]

import ls_flow  # noqa: E402

SHOWN = ("labeled", "held_out", "first_retrieve_s", "first_exact_ordinary", "first_exact_count", "annotate_s",
         "labels_recorded_by_webhook",
         "train_wall_s", "new_version", "second_retrieve_s", "held_out_exact_special", "held_out_exact_plain",
         "held_out_captions")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", choices=["vocabulary", "purple", "both"], default="both")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON")
    args = p.parse_args()
    for scenario in ["vocabulary", "purple"] if args.scenario == "both" else [args.scenario]:
        recipe = ls_flow.RECIPES[scenario]
        print(f"== {scenario} (recipe: {recipe})")
        with tempfile.TemporaryDirectory(prefix=f"blip2-ls-flow-{scenario}-") as folder:
            report = ls_flow.run(Path(folder), scenario)
        report.pop("backend_log")
        report.pop("secrets")
        if args.json:
            print(json.dumps(report, indent=1, default=str))
            continue
        for key in SHOWN:
            value = report[key]
            print(f"{key:28} {value:.2f}" if isinstance(value, float) else f"{key:28} {value}")
        print(f"{'malformed':28} {len(report['malformed'])} {report['malformed']}")
        run = report["run"]
        print(f"{'run':28} {run['status']} ({run['reason']}); held-out metrics {run.get('metrics')}")


if __name__ == "__main__":
    main()
