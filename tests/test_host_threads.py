"""Callers' threads tokenize (chat prompts, token counts) while the worker pads batches: one must not break the other."""

from __future__ import annotations

import logging
import threading

from blip2plugins.demo import world
from blip2plugins.host import Host

QUESTIONS = ["how many shapes?", "what color is the circle?", "is there a triangle?", "what color is the square?"]


def test_chat_prompts_rendered_in_other_threads_never_break_a_batch(caplog) -> None:
    image = world.render(world.make_scene({"circle": "red", "square": "blue"}))
    with Host.load("demo", max_batch_size=8, max_wait=0.01) as host:
        alone = [r.text for r in host.ask([image] * len(QUESTIONS), QUESTIONS)]
        conversation = host.chat(image)
        conversation.turns = [("what color is the circle?", "red")] * 3
        stop = threading.Event()

        def render() -> None:  # fit_chat counts tokens with the same tokenizer the worker pads with
            while not stop.is_set():
                conversation.prompt("how many shapes?")

        threads = [threading.Thread(target=render) for _ in range(6)]
        for thread in threads:
            thread.start()
        try:
            with caplog.at_level(logging.WARNING, logger="blip2plugins"):
                for _ in range(25):
                    assert [r.text for r in host.ask([image] * len(QUESTIONS) * 4, QUESTIONS * 4)] == alone * 4
        finally:
            stop.set()
            for thread in threads:
                thread.join()
    assert not [r.message for r in caplog.records if "batch of" in r.message]
