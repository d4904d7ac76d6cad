"""The one reader of artifact JSON files: each bad file is one line naming it, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from qvgen_export.utils.json_files import JsonFileError, read_json_object


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "missing"),
        (b"\xff\xfe{}", "not valid JSON (not UTF-8 text)"),
        (b'{"a": 1', "not valid JSON (Expecting ',' delimiter"),
        (b"", "not valid JSON (Expecting value"),
        (b"[1, 2]", "not a manifest (a JSON list, expected an object)"),
        (b'"text"', "not a manifest (a JSON str, expected an object)"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON (nested too deeply)"),
    ],
    ids=["missing", "not-utf8", "truncated", "empty", "list", "string", "deep"],
)
def test_bad_json_files_are_one_line_naming_the_file(tmp_path: Path, content: bytes | None, reason: str) -> None:
    p = tmp_path / "manifest.json"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(JsonFileError) as info:
        read_json_object(p, "a manifest")
    msg = str(info.value)
    assert msg.startswith(f"{p}: {reason}")
    assert "\n" not in msg
    assert info.value.path == p and isinstance(info.value, ValueError)


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(JsonFileError, match="cannot be read"):
        read_json_object(tmp_path)


def test_object_is_returned(tmp_path: Path) -> None:
    p = tmp_path / "x.json"
    p.write_text('{"b": [1, {"c": null}]}')
    assert read_json_object(p) == {"b": [1, {"c": None}]}
