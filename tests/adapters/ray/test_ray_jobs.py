"""``blip2 ray`` on a real local Ray cluster of two simulated nodes: the same captions as ``blip2 caption``,
resumable, both nodes working, bad inputs as rows, and a job that survives an actor killed mid-run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ray_helpers import ROOT, blip2_ray, rows, summary

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _blip2_caption(*images: str) -> dict[str, dict[str, Any]]:
    done = subprocess.run([sys.executable, "-m", "blip2plugins.cli", "caption", *images, "--json"], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, check=True)
    records = [json.loads(line) for line in done.stdout.splitlines()]
    return {record["image"]: record for record in records}


def test_captions_equal_blip2_caption_both_nodes_work_and_a_rerun_adds_no_row(ray_cluster: Any, photos: Any,
                                                                                 tmp_path: Path) -> None:
    folder, paths = photos
    out = tmp_path / "out"
    args = ("caption", str(folder), "--out", str(out), "--workers", "2", "--batch-size", "2", "--json")
    first = summary(blip2_ray(*args, address=ray_cluster.address))
    assert (first["rows"], first["errors"], first["resumed"]) == (len(paths), 0, 0)
    got = {row["image"]: row for row in rows(out)}
    assert sorted(got) == paths
    expected = _blip2_caption(str(folder))
    for path in paths:
        assert got[path]["caption"] == expected[path]["caption"]
        assert got[path]["score"] == pytest.approx(expected[path]["score"], abs=1e-5)
        assert got[path]["model_version"] == expected[path]["model_version"]
        assert got[path]["error"] is None and got[path]["seconds"] > 0
    assert len({row["node"] for row in got.values()}) == 2  # one actor per one-CPU node, both fed

    again = summary(blip2_ray(*args, address=ray_cluster.address))
    assert (again["rows"], again["shards"], again["resumed"]) == (0, 0, len(paths))
    assert len(rows(out)) == len(paths)


def test_a_bad_image_an_unreadable_shard_and_a_missing_file_are_rows_with_errors(ray_cluster: Any, photos: Any,
                                                                                  tmp_path: Path) -> None:
    _, paths = photos
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(paths[0], source / "good.png")
    (source / "broken.png").write_bytes(b"not an image at all")
    (source / "garbage.parquet").write_bytes(b"PAR1 not really a parquet file PAR1")
    shutil.copy(paths[2], tmp_path / "elsewhere.png")
    (source / "listed.jsonl").write_text(json.dumps({"image": "../elsewhere.png"}) + "\n" + json.dumps({"image": "gone.png"}) + "\n")
    pq.write_table(pa.table({"image": [Path(paths[1]).read_bytes(), b"\x89PNG\r\n\x1a\n truncated"]}),
                   source / "bytes.parquet")
    out = tmp_path / "out"
    done = summary(blip2_ray("caption", str(source), "--out", str(out), "--json", address=ray_cluster.address))
    got = {row["image"]: row for row in rows(out)}
    good, listed = str(source / "good.png"), str(source / "listed.jsonl")
    elsewhere = str(source / "../elsewhere.png")  # relative to the JSONL's folder
    assert sorted(got) == sorted([good, elsewhere, str(source / "broken.png"), str(source / "garbage.parquet"),
                                  str(source / "gone.png"), str(source / "bytes.parquet#0"),
                                  str(source / "bytes.parquet#1")])
    assert done["rows"] == 7 and done["errors"] == 4
    assert "not an image" in got[str(source / "broken.png")]["error"]
    assert got[str(source / "garbage.parquet")]["error"].startswith("unreadable table shard")
    assert "gone.png" in got[str(source / "gone.png")]["error"]
    assert got[str(source / "bytes.parquet#1")]["error"] is not None
    expected = _blip2_caption(good, paths[1], paths[2])
    assert got[good]["caption"] == expected[good]["caption"]
    assert got[str(source / "bytes.parquet#0")]["caption"] == expected[paths[1]]["caption"]
    assert got[elsewhere]["caption"] == expected[paths[2]]["caption"]
    assert listed not in got


def _actors() -> dict[int, float]:
    """PID -> start time (clock ticks since boot) of the live processes of Blip2Predictor actors."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if b"Blip2Predictor" in command and b"MapWorker" in command:
            found[int(pid)] = float(stat.rsplit(")", 1)[1].split()[19])
    return found


def test_an_actor_killed_mid_run_leaves_every_image_exactly_once(ray_cluster: Any, photos: Any, tmp_path: Path) -> None:
    _, paths = photos
    source = tmp_path / "source"
    source.mkdir()
    for copy in range(10):  # 120 images, one per batch, searched with wide beams: a run of many seconds
        for path in paths:
            shutil.copy(path, source / f"{copy}-{Path(path).name}")
    out = tmp_path / "out"
    log = tmp_path / "job.log"
    with open(log, "w") as stderr:
        job = subprocess.Popen(
            [sys.executable, "-m", "blip2plugins.cli", "ray", "caption", str(source), "--out", str(out), "--workers", "2",
             "--batch-size", "1", "--beams", "6", "--json", "--address", ray_cluster.address],
            stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=ROOT, env={**os.environ, "BLIP2_PLUGINS": "ray"})
    try:
        deadline = time.monotonic() + 240
        first_seen: dict[int, float] = {}
        victim = None
        while victim is None:
            assert job.poll() is None, f"the job ended before an actor could be killed: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no actor worked for 5 s"
            for pid in _actors():
                first_seen.setdefault(pid, time.monotonic())
                if time.monotonic() - first_seen[pid] > 5:  # loaded the model and is captioning
                    victim = pid
            time.sleep(0.2)
        os.kill(victim, signal.SIGKILL)
        assert job.poll() is None  # killed mid-run
        stdout, _ = job.communicate(timeout=400)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, log.read_text()[-3000:]
    assert victim not in _actors()
    written = rows(out)
    names = [row["image"] for row in written]
    assert sorted(names) == sorted(str(path) for path in source.iterdir())  # every image exactly once
    assert all(row["error"] is None and row["caption"] for row in written)
    assert json.loads(stdout.strip().splitlines()[-1])["rows"] == 120


def test_a_model_the_workers_cannot_load_fails_the_job_with_its_reason(ray_cluster: Any, photos: Any,
                                                                        tmp_path: Path) -> None:
    folder, _ = photos
    done = blip2_ray("caption", str(folder), "--out", str(tmp_path / "out"), "--model", str(folder),
                     address=ray_cluster.address, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith(
        f"blip2: the caption job failed: could not load model 'photos0' from {folder}: no config.json")
    assert not list((tmp_path / "out").glob("*.parquet"))


def test_an_index_built_from_blip2_ray_embed_searches_like_one_built_from_the_images(ray_cluster: Any, photos: Any,
                                                                                      tmp_path: Path) -> None:
    folder, paths = photos
    embedded = summary(blip2_ray("embed", str(folder), "--out", str(tmp_path / "emb"), "--workers", "2", "--json",
                                 address=ray_cluster.address))
    assert (embedded["rows"], embedded["errors"]) == (len(paths), 0)

    def blip2(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "blip2plugins.cli", *args], capture_output=True, text=True,
                              timeout=300, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    blip2("index", "build", str(tmp_path / "emb"), "--from-embeddings", "--out", str(tmp_path / "ray.idx"))
    blip2("index", "build", str(folder), "--out", str(tmp_path / "host.idx"))
    for query in ("a red circle", "a blue square and a green triangle", "a yellow triangle"):
        from_ray = [json.loads(line) for line in blip2("index", "search", str(tmp_path / "ray.idx"), query, "-k", "5",
                                                       "--json").splitlines()]
        from_host = [json.loads(line) for line in blip2("index", "search", str(tmp_path / "host.idx"), query, "-k",
                                                        "5", "--json").splitlines()]
        assert [hit["source"] for hit in from_ray] == [hit["source"] for hit in from_host]
        assert [hit["score"] for hit in from_ray] == pytest.approx([hit["score"] for hit in from_host], abs=1e-5)
