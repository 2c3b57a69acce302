"""``manifest.json`` of a batch output folder: per video its status, outputs, model, decoder and timings.

Layout (schema 1)::

    {"schema": 1, "tool": "ava-pipeline 0.1.0", "updated": "2026-11-23T21:58:00Z",
     "settings": {"<sha256>": {"detector": {...fingerprint...}, "keyframes": null,
                               "output_format": "csv", "min_score": null}},
     "videos": {"season1/ep02": {"source": "/abs/season1/ep02.mp4", "status": "done",
                                 "error": null, "error_type": null, "settings_sha256": "<sha256>",
                                 "output": "season1/ep02.csv", "output_sha256": "...", "render": null,
                                 "keyframes": 120, "persons": 311, "model": "SLOWFAST_32x2_R101_50_50",
                                 "weights_sha256": "...", "decoder": "...", "worker": "host:pid",
                                 "attempts": 1, "started": "...", "finished": "...",
                                 "timings": {"queued": 0.1, "process": 41.2, "decode": ..., "write": 0.3}}}}

``status`` is ``running`` (handed to a worker), ``done`` or ``failed``. The file is rewritten atomically
(temporary file + rename) by the driver only, after every change, so it is always a complete JSON document
that matches the output files next to it.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

from ..checksums import file_sha256, settings_sha256
from ..errors import InputFormatError

MANIFEST_NAME = "manifest.json"
SCHEMA = 1

STATUS_RUNNING, STATUS_DONE, STATUS_FAILED = "running", "done", "failed"


def utc_time(seconds: Optional[float] = None) -> str:
    """ISO 8601 UTC time with second precision, e.g. ``2026-11-23T21:58:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if seconds is None else seconds))


class Manifest:
    """The manifest of one output folder, loaded from disk (or empty) and saved atomically."""

    def __init__(self, out_dir: Path, settings: dict, *, tool: str):
        self.path = Path(out_dir) / MANIFEST_NAME
        self.out_dir = Path(out_dir)
        self.tool = tool
        self.settings = settings
        self.settings_sha256 = settings_sha256(settings)
        self.videos: dict[str, dict] = {}
        self._settings_table: dict[str, dict] = {}
        if self.path.exists():
            self._load()
        self._settings_table[self.settings_sha256] = settings

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputFormatError(f"{self.path}: cannot read the batch manifest ({exc}); move it away to "
                                   "start this output folder afresh") from exc
        videos = data.get("videos") if isinstance(data, dict) else None
        if (not isinstance(videos, dict) or data.get("schema") != SCHEMA
                or not all(isinstance(entry, dict) for entry in videos.values())):
            raise InputFormatError(f"{self.path}: not a schema-{SCHEMA} ava-pipeline manifest; move it away or "
                                   "choose another --out folder")
        self.videos = videos
        self._settings_table = dict(data.get("settings") or {})

    def is_done(self, name: str, output: Path, render: Optional[Path]) -> bool:
        """True when ``name`` finished with the current settings and its outputs are intact on disk."""
        entry = self.videos.get(name)
        if not entry or entry.get("status") != STATUS_DONE or entry.get("settings_sha256") != self.settings_sha256:
            return False
        if entry.get("output") != output.relative_to(self.out_dir).as_posix() or not output.is_file():
            return False
        if render is not None and not render.is_file():
            return False
        return file_sha256(output) == entry.get("output_sha256")

    def mark_running(self, name: str, source: str, attempt: int) -> None:
        entry = self.videos.get(name, {})
        self.videos[name] = {**entry, "source": source, "status": STATUS_RUNNING, "error": None,
                             "error_type": None, "settings_sha256": self.settings_sha256, "attempts": attempt,
                             "started": utc_time(), "finished": None}

    def record(self, name: str, entry: dict) -> None:
        """Replace the entry of ``name`` (the driver fills in status, outputs, fingerprint and timings)."""
        self.videos[name] = {"settings_sha256": self.settings_sha256, **entry}

    def save(self) -> None:
        """Write the manifest atomically; settings no video refers to any more are dropped."""
        from ..writers import atomic_output

        used = {entry.get("settings_sha256") for entry in self.videos.values()} | {self.settings_sha256}
        data = {"schema": SCHEMA, "tool": self.tool, "updated": utc_time(),
                "settings": {sha: s for sha, s in self._settings_table.items() if sha in used},
                "videos": dict(sorted(self.videos.items()))}
        with atomic_output(self.path) as temporary:
            temporary.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
