"""The documentation: the site builds in strict mode, the README's links resolve and its Python runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_site_builds_in_strict_mode(tmp_path: Path) -> None:
    """A broken link, a missing page or an unresolvable API reference fails the build. The CLI reference
    documents the built-in integrations' commands too."""
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1", "BLIP2_PLUGINS": "label-studio,langchain,ray"})
    assert done.returncode == 0, done.stderr[-3000:]
    reference = (tmp_path / "cli" / "index.html").read_text(encoding="utf-8")
    for command in ("blip2 caption", "blip2 ask", "blip2 index search", "blip2 train", "blip2 serve label-studio",
                    "blip2 ray caption"):
        assert f"Usage: {command} [OPTIONS]" in reference  # generated from the commands themselves
    assert "blip2plugins.host.Host.render_chat" in (tmp_path / "api" / "index.html").read_text(encoding="utf-8")
    home = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "Ten lines of Python" in home and 'href="real-checkpoints/"' in home  # the README, its links made the site's


def test_the_readme_links_to_pages_that_exist() -> None:
    links = re.findall(r"\]\((?!https?:)([^)#]+)", README)
    assert links and all((ROOT / link).is_file() for link in links), [link for link in links if not (ROOT / link).is_file()]
    nav = (ROOT / "mkdocs.yml").read_text()
    assert all(Path(link).name in nav for link in links if link.startswith("docs/"))


def test_the_readme_python_runs() -> None:
    code = re.findall(r"^```python\n(.*?)^```$", README, re.MULTILINE | re.DOTALL)
    assert len(code) == 1
    done = subprocess.run([sys.executable, "-c", code[0]], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "a green triangle" in done.stdout
