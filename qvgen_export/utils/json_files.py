"""Reading the JSON files of artifacts (manifests, engine records, training states, caches, configs).

Every reader wants the same thing: the JSON object in a file, or one line naming the file and
what is wrong with it (missing, unreadable, not UTF-8, not JSON, not an object). The callers keep
their own error types and add what only they know (required fields, formats); this module owns
the file-level checks so their messages agree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class JsonFileError(ValueError):
    """A JSON file that cannot be used; ``str()`` is one line ``"<path>: <reason>"``."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def read_json_object(path: str | Path, what: str = "a JSON object") -> dict[str, Any]:
    """The object stored in ``path``; :class:`JsonFileError` otherwise.

    ``what`` names the expected document in the message for a non-object (e.g. ``"a manifest"``).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JsonFileError(p, "missing") from None
    except UnicodeDecodeError:
        raise JsonFileError(p, "not valid JSON (not UTF-8 text)") from None
    except OSError as e:
        raise JsonFileError(p, f"cannot be read ({e.strerror or e})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise JsonFileError(p, f"not valid JSON ({e.msg}, line {e.lineno})") from None
    except RecursionError:
        raise JsonFileError(p, "not valid JSON (nested too deeply)") from None
    if not isinstance(doc, dict):
        raise JsonFileError(p, f"not {what} (a JSON {type(doc).__name__}, expected an object)")
    return doc
