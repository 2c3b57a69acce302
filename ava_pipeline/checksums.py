"""sha256 of files and of settings: the one hashing helper of the package (manifests, weights, box files)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Union


def file_sha256(path: Union[str, Path]) -> str:
    """Hex sha256 of the file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def text_sha256(text: str) -> str:
    """Hex sha256 of ``text`` encoded as UTF-8."""
    return hashlib.sha256(text.encode()).hexdigest()


def settings_sha256(settings: dict) -> str:
    """sha256 of the canonical JSON of ``settings`` (sorted keys)."""
    return text_sha256(json.dumps(settings, sort_keys=True, default=str))
