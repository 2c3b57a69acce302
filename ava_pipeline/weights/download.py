"""Cached, verified downloads of zoo checkpoints.

Cache directory: ``$AVA_PIPELINE_HOME`` if set, else ``$XDG_CACHE_HOME/ava-pipeline``, else
``~/.cache/ava-pipeline``. A download is written to ``<file>.part`` and renamed into place only when complete
(and, when the record has one, when its sha256 matches), so an interrupted download never looks finished.
A transfer that ends before the server's announced ``Content-Length`` is an error too: the server closing the
connection early does not raise on its own, and zoo records have no sha256 yet to catch it.
The sha256 is checked again on every cache hit.
"""
from __future__ import annotations

import hashlib
import logging
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from ava_pipeline.checksums import file_sha256
from ava_pipeline.errors import WeightsError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def cache_dir() -> Path:
    """Where downloaded checkpoints are kept (see the module docstring)."""
    if os.environ.get("AVA_PIPELINE_HOME"):
        return Path(os.environ["AVA_PIPELINE_HOME"])
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "ava-pipeline"


def _progress(total: Optional[int], name: str):
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name)


def download(url: str, sha256: Optional[str] = None, *, directory: Optional[Path] = None) -> Path:
    """Path of the cached copy of ``url``, downloading it first if needed; verifies ``sha256`` when given.

    Raises ``WeightsError`` when the download fails (the message says how to pass a manually downloaded file),
    when fewer bytes arrive than the response's ``Content-Length`` announced, or when the file's sha256 differs
    from ``sha256`` (in the last two cases the bad file is not kept).
    """
    directory = Path(directory) if directory is not None else cache_dir()
    target = directory / url.rsplit("/", 1)[-1]
    if target.is_file():
        if sha256 is not None:
            actual = file_sha256(target)
            if actual != sha256:
                raise WeightsError(f"{target}: cached file has sha256 {actual}, expected {sha256}; delete it to "
                                   "download it again")
        return target
    directory.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            length = response.headers.get("Content-Length")
            expected_size = int(length) if length else None
            bar = _progress(expected_size, target.name)
            digest = hashlib.sha256()
            received = 0
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            if bar is not None:
                bar.close()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        partial.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or exc
        raise WeightsError(f"cannot download {url} to {target} ({reason}); download it on a machine with network "
                           "access and pass the file with --weights FILE (or weights=FILE)") from exc
    if expected_size is not None and received != expected_size:
        partial.unlink(missing_ok=True)
        raise WeightsError(f"{url}: download incomplete, received {received} of {expected_size} bytes (the server "
                           f"closed the connection early); nothing was cached in {directory}: try again, or "
                           "download it manually and pass --weights FILE")
    actual = digest.hexdigest()
    if sha256 is not None and actual != sha256:
        partial.unlink(missing_ok=True)
        raise WeightsError(f"{url}: downloaded file has sha256 {actual}, expected {sha256}; the file on the server "
                           "changed or the transfer was corrupted: try again, or download it manually and pass "
                           "--weights FILE")
    os.replace(partial, target)
    log.info("downloaded %s to %s (sha256 %s)", url, target, actual)
    return target

