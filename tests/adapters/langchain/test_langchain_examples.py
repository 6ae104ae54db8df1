"""The LangChain walkthroughs in examples/ run offline on the demo model and say the right things."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from blip2plugins_langchain._host import close_shared_hosts

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def run(name: str, capsys: pytest.CaptureFixture[str]) -> str:
    close_shared_hosts()  # a fresh host, with no image cached by other tests, as when a user runs it
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    return capsys.readouterr().out


def test_chat_walkthrough(capsys):
    out = run("langchain_chat.py", capsys)
    assert "blip2: yellow" in out and "blip2: two" in out and "images encoded for these two turns: 1" in out
    assert "streamed caption: a| blue| square| and| a| yellow| triangle|" in out
    assert "stop at ' and': a blue square" in out


def test_agent_walkthrough(capsys):
    out = run("langchain_agent.py", capsys)
    assert "tool caption_image: a green triangle" in out and "tool ask_image: blue" in out
    assert "tool caption_image: no-such-file.png: file not found" in out
    assert "tool caption_latest_image: a yellow circle and a green square and a red triangle" in out
    assert "tool ask_latest_image: three" in out
    assert "1. " + str(EXAMPLES / "images" / "green-triangle_on-gray.png") + " (similarity" in out
    assert "Best match: 'a green triangle'" in out
