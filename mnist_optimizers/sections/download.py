"""The `download` and `datasets` sections of params.yaml: their settings and validation, read
by stages/download.py and checked with every other section by stages/check_params.py.

A data set is four IDX files under MNIST's file names (Fashion-MNIST and KMNIST use the same
ones), the mirrors that serve them and each file's SHA-256: of the file as served (the .gz
archive, as Fashion-MNIST and KMNIST publish theirs) or of its decompressed content (as the
MNIST entry gives it: the same whichever mirror recompressed it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mnist_optimizers.errors import ParamsError, shown
from mnist_optimizers.params import check_keys, finite_number
from mnist_optimizers.paths import MNIST_FILES


@dataclass(frozen=True)
class DownloadConfig:
    timeout_seconds: float  # for one read: a source silent that long is skipped
    deadline_seconds: float = 600.0  # for one whole file: a source that slow is skipped


@dataclass(frozen=True)
class Dataset:
    name: str
    mirrors: tuple[str, ...]
    sha256: dict[str, str]  # file name -> SHA-256 of the file as served or of its content

    @property
    def mirror_env(self) -> str:
        """The environment variable that names a mirror tried first: MNIST_MIRROR."""
        return f"{self.name.upper()}_MIRROR"


def validate_download(section: Any) -> DownloadConfig:
    """Check the `download` section: a timeout for one read and a deadline for one file."""
    check_keys(section, ("timeout_seconds", "deadline_seconds"), "download")
    seconds = {}
    for key, default in (("timeout_seconds", 30), ("deadline_seconds", 600)):
        seconds[key] = finite_number(section.get(key, default), f"download.{key}")
        if seconds[key] <= 0:
            raise ParamsError(f"download.{key}: expected > 0, got {shown(seconds[key])}")
    return DownloadConfig(**seconds)


def validate_dataset(name: Any, entry: Any) -> Dataset:
    """Check one entry of `datasets`: mirror URLs and one SHA-256 per IDX file."""
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", name):
        raise ParamsError(
            f"datasets: {shown(name)} is not a valid name: use 1 to 64 lower-case letters, "
            "digits or '_', starting with a letter (it names the mirror variable, MNIST_MIRROR)"
        )
    where = f"datasets.{name}"
    check_keys(entry, ("mirrors", "sha256"), where, ("sha256",))
    mirrors = entry.get("mirrors") or []
    if not isinstance(mirrors, list) or not all(isinstance(m, str) and m for m in mirrors):
        raise ParamsError(f"{where}.mirrors: expected a list of base URLs, got {shown(mirrors)}")
    sha256 = entry["sha256"]
    check_keys(sha256, MNIST_FILES, f"{where}.sha256", MNIST_FILES)
    for file, digest in sha256.items():
        if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
            raise ParamsError(
                f"{where}.sha256.{file}: expected 64 lowercase hex digits, got {shown(digest)}"
            )
    return Dataset(name, tuple(mirrors), dict(sha256))


def validate_datasets(section: Any) -> dict[str, Dataset]:
    """Check the `datasets` catalog (at least one entry)."""
    if not isinstance(section, dict) or not section:
        raise ParamsError("datasets: expected at least one entry, e.g. `mnist: {mirrors: [...], "
                          "sha256: {...}}`")  # fmt: skip
    return {name: validate_dataset(name, entry) for name, entry in section.items()}
