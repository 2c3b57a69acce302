"""AVA label maps: the 80 action classes, the 60 evaluated ones, and a pbtxt reader/writer.

Action ids are 1-based (1..80) everywhere in files and in this module. Model outputs are 0-based columns:
column ``c`` is action id ``c + 1`` (see :func:`action_id_of_column`, the one place that converts).

Both pbtxt dialects are read: the v2.2 form ``label { name: "..." label_id: N label_type: T }`` and the
v2.1 form ``item { name: "..." id: N }``. Unlike the official evaluator's line scanner, indentation does
not matter, and a file that yields no labels is an error rather than a silent empty map.
"""
from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Mapping

from .errors import InputFormatError

PACKAGED_LABEL_MAPS = {
    "v2.2": "ava_action_list_v2.2.pbtxt",
    "v2.2-eval": "ava_action_list_v2.2_for_activitynet_2019.pbtxt",
    "v2.1-eval": "ava_action_list_v2.1_for_activitynet_2018.pbtxt",
}

_FIELD = re.compile(r'^\s*(name|id|label_id|label_type)\s*:\s*(.*?)\s*$')


def packaged_label_map_path(name: str) -> Path:
    """Path of a label map shipped with the package: ``v2.2`` (80 classes), ``v2.2-eval`` or ``v2.1-eval``
    (the 60 evaluated classes of the ActivityNet 2019 / 2018 challenges). A path to a file is returned as is."""
    if name in PACKAGED_LABEL_MAPS:
        return Path(str(resources.files("ava_pipeline") / "data" / "labelmaps" / PACKAGED_LABEL_MAPS[name]))
    path = Path(name)
    if not path.is_file():
        raise InputFormatError(
            f"label map {name!r} is neither a file nor one of the packaged maps {sorted(PACKAGED_LABEL_MAPS)}")
    return path


def read_label_map(path: str | Path) -> dict[int, str]:
    """Read a pbtxt label map; returns ``{action_id: name}`` in file order. ``path`` may be a packaged name."""
    path = packaged_label_map_path(str(path))
    labels: dict[int, str] = {}
    name = None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFormatError(f"{path}: cannot read label map ({exc})") from exc
    for number, line in enumerate(lines, 1):
        match = _FIELD.match(line)
        if not match:
            continue
        key, value = match.groups()
        if key == "name":
            quoted = re.match(r'^"(.*)"$', value)
            if not quoted:
                raise InputFormatError(f"{path}:{number}: name must be a quoted string, got {value!r}")
            name = quoted.group(1)
        elif key in ("id", "label_id"):
            if name is None:
                raise InputFormatError(f"{path}:{number}: {key} before any name")
            try:
                action_id = int(value)
            except ValueError:
                raise InputFormatError(f"{path}:{number}: {key} must be an integer, got {value!r}") from None
            if action_id in labels:
                raise InputFormatError(f"{path}:{number}: duplicate id {action_id}")
            labels[action_id] = name
            name = None
    if not labels:
        raise InputFormatError(f"{path}: no labels found; expected 'label {{ name: ... label_id: ... }}' entries")
    return labels


def write_label_map(labels: Mapping[int, str], path: str | Path) -> None:
    """Write ``{action_id: name}`` as a v2.2-style pbtxt (``label { name label_id }``)."""
    text = "".join(f'label {{\n  name: "{name}"\n  label_id: {action_id}\n}}\n' for action_id, name in labels.items())
    Path(path).write_text(text, encoding="utf-8")


def action_id_of_column(column: int) -> int:
    """AVA action id (1-based) of model output column ``column`` (0-based)."""
    return column + 1


AVA_ACTIONS: dict[int, str] = read_label_map("v2.2")
"""All 80 AVA actions, ``{action_id: name}``."""

EVALUATED_ACTION_IDS: frozenset[int] = frozenset(read_label_map("v2.2-eval"))
"""The 60 action ids scored by the official AVA v2.1/v2.2 evaluation."""
