"""The careful JSON reader every file and HTTP answer goes through."""

from __future__ import annotations

import pytest

from blip2plugins import jsonfile
from blip2plugins.jsonfile import JSONReadError


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("[" * 100_000, "nested more than 64 levels deep"),  # RecursionError in json itself
        ("[" * 65 + "]" * 65, "nested more than 64 levels deep"),
        ('{"a": ' + "1" * 4301 + "}", "a number of 4,301 digits"),
        ("[" + "1" * 200 + ".5]", "a number of 202 characters"),
        ('{"action": "\\ud800"}', "lone surrogate"),
        ('{"\\udfff": 1}', "lone surrogate"),
        (b'{"a": "\xff"}', "line 1: not UTF-8 text"),
        ('{\n"a": 1,\n}', "line 3: not valid JSON"),
    ],
)
def test_refused_with_one_line(data, reason):
    with pytest.raises(JSONReadError) as caught:
        jsonfile.loads(data)
    assert reason in str(caught.value)
    assert "\n" not in str(caught.value)


def test_reads_what_json_dumps_writes():
    text = '\ufeff{"a": [1, 2.5, -3e-7, NaN, Infinity], "b": {"c": null, "d": "\\u00e9\\ud83d\\ude00"}}'
    value = jsonfile.loads(text.encode("utf-8"))
    assert value["a"][:3] == [1, 2.5, -3e-7]
    assert value["b"] == {"c": None, "d": "é😀"}
    assert jsonfile.loads("[" * 64 + "]" * 64) is not None


def test_file_errors_name_the_file(tmp_path):
    path = tmp_path / "version.json"
    path.write_text("[" * 5000)
    with pytest.raises(JSONReadError, match=r"version\.json: nested more than 64"):
        jsonfile.load_file(path)
    path.write_text('{"a": "' + "x" * 100 + '"}')
    with pytest.raises(JSONReadError, match=r"version\.json: larger than 50 bytes"):
        jsonfile.load_file(path, max_bytes=50)
    with pytest.raises(JSONReadError, match=r"test_file_errors_name_the_file0: unreadable \(Is a directory\)"):
        jsonfile.load_file(tmp_path)  # a folder
    with pytest.raises(FileNotFoundError):
        jsonfile.load_file(tmp_path / "missing.json")


def test_surrogates_only_where_asked_for():
    text = '{"source": "caf\\udce9.png"}'  # how surrogateescape writes a file name that is not UTF-8
    with pytest.raises(JSONReadError, match="lone surrogate"):
        jsonfile.loads(text)
    assert jsonfile.loads(text, surrogates=True) == {"source": "caf\udce9.png"}
    with pytest.raises(JSONReadError, match="nested more than 64"):
        jsonfile.loads("[" * 70 + "]" * 70, surrogates=True)
    with pytest.raises(JSONReadError, match="lone surrogate"):  # not what surrogateescape writes
        jsonfile.loads('["\\ud800"]', surrogates=True)
