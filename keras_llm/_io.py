"""JSON files of run directories: written atomically, so a crash never leaves half a file."""

import json
import os


def write_json(path, value):
    """Writes `value` as indented JSON to `path` via a temporary file and `os.replace`."""
    path = os.fspath(path)
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)
    os.replace(temporary, path)


def read_json(path):
    """Returns the JSON value stored at `path`."""
    with open(os.fspath(path), encoding="utf-8") as f:
        return json.load(f)
