"""User JSON files fail with one line naming the file and the problem; caches just miss."""

from __future__ import annotations

import pytest

from genzip import jsonfile
from genzip.errors import GenzipError


def test_read_json_errors_name_file_and_place(tmp_path):
    path = tmp_path / "p.json"
    with pytest.raises(GenzipError, match="plan file .*p.json does not exist"):
        jsonfile.read_json(str(path), "plan file", "fix")
    path.write_text('{"a": 1,\n "b": }')
    with pytest.raises(GenzipError, match=r"is not valid JSON \(line 2, column 7") as e:
        jsonfile.read_json(str(path), "plan file", "fix")
    assert "\n" not in str(e.value)
    path.write_bytes(b"\xff\xfe{")
    with pytest.raises(GenzipError, match="not UTF-8"):
        jsonfile.read_json(str(path), "plan file", "fix")
    path.write_text('{"a": [1, 2]}')
    assert jsonfile.read_json(str(path), "plan file", "fix") == {"a": [1, 2]}


def test_read_cache_misses_on_corrupt_or_stale(tmp_path):
    path = tmp_path / "c.json"
    assert jsonfile.read_cache(str(path), {"model": "m"}) is None
    path.write_text("{broken")
    assert jsonfile.read_cache(str(path), {"model": "m"}) is None
    path.write_text('{"model": "old", "x": 1}')
    assert jsonfile.read_cache(str(path), {"model": "m"}) is None
    path.write_text('{"model": "m", "x": 1}')
    assert jsonfile.read_cache(str(path), {"model": "m"}) == {"model": "m", "x": 1}


def test_cache_root_order(monkeypatch, tmp_path):
    monkeypatch.setenv("GENZIP_CACHE_DIR", str(tmp_path))
    assert jsonfile.cache_root("/explicit") == "/explicit"
    assert jsonfile.cache_root() == str(tmp_path)
    monkeypatch.delenv("GENZIP_CACHE_DIR")
    assert jsonfile.cache_root().endswith("/.cache/genzip")


def test_write_atomic_replaces_whole_or_leaves_the_old_file(tmp_path):
    path = tmp_path / "sub" / "out.bin"
    jsonfile.write_atomic(str(path), lambda f: f.write(b"first"), binary=True)
    assert path.read_bytes() == b"first"  # the folder was created

    def half_then_fail(f):
        f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        jsonfile.write_atomic(str(path), half_then_fail)
    assert path.read_bytes() == b"first" and sorted(p.name for p in path.parent.iterdir()) == ["out.bin"]
    jsonfile.write_atomic(str(path), lambda f: f.write("é"))
    assert path.read_text(encoding="utf-8") == "é"
