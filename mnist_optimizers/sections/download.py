"""The `download` section of params.yaml: its settings and their validation, read by
stages/download.py and checked with every other section by stages/check_params.py."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mnist_optimizers.errors import ParamsError, shown
from mnist_optimizers.params import check_keys, finite_number
from mnist_optimizers.paths import MNIST_FILES


@dataclass(frozen=True)
class DownloadConfig:
    mirrors: tuple[str, ...]
    sha256: dict[str, str]  # file name -> SHA-256 of its decompressed content
    timeout_seconds: float  # for one read: a source silent that long is skipped
    deadline_seconds: float = 600.0  # for one whole file: a source that slow is skipped


def validate_download(section: Any) -> DownloadConfig:
    """Check the `download` section: mirror URLs, one SHA-256 per MNIST file, a timeout
    for one read and a deadline for one file."""
    keys = ("mirrors", "sha256", "timeout_seconds", "deadline_seconds")
    check_keys(section, keys, "download", ("sha256",))
    mirrors = section.get("mirrors") or []
    if not isinstance(mirrors, list) or not all(isinstance(m, str) and m for m in mirrors):
        raise ParamsError(f"download.mirrors: expected a list of base URLs, got {shown(mirrors)}")
    sha256 = section["sha256"]
    check_keys(sha256, MNIST_FILES, "download.sha256", MNIST_FILES)
    for name, digest in sha256.items():
        if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
            raise ParamsError(
                f"download.sha256.{name}: expected 64 lowercase hex digits, got {shown(digest)}"
            )
    seconds = {}
    for key, default in (("timeout_seconds", 30), ("deadline_seconds", 600)):
        seconds[key] = finite_number(section.get(key, default), f"download.{key}")
        if seconds[key] <= 0:
            raise ParamsError(f"download.{key}: expected > 0, got {shown(seconds[key])}")
    return DownloadConfig(tuple(mirrors), dict(sha256), **seconds)
