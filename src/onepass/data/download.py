"""Fetching files over URLs, checking their SHA-256 or MD5 and unpacking archives safely."""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

_CHUNK = 1 << 16


class ChecksumError(ValueError):
    """A file's SHA-256 digest differs from the expected one."""

    algorithm = "SHA-256"

    def __init__(self, path: str | os.PathLike, expected: str, actual: str):
        self.path = Path(path)
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"{self.algorithm} mismatch for {self.path}: expected {expected}, got {actual}"
        )


class MD5ChecksumError(ChecksumError):
    """A file's MD5 digest differs from the published one (a :class:`ChecksumError`)."""

    algorithm = "MD5"


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the extraction folder."""


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    """The hexadecimal ``hashlib`` digest (``"sha256"``, ``"md5"``) of the file at ``path``."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256sum(path: str | os.PathLike) -> str:
    """Return the hexadecimal SHA-256 digest of the file at ``path``."""
    return file_digest(path, "sha256")


def download(
    url: str,
    destination: str | os.PathLike,
    sha256: str | None = None,
    progress: bool = True,
    *,
    md5: str | None = None,
) -> Path:
    """Fetch ``url`` into the file ``destination`` and return its path.

    The body is streamed into a temporary file beside ``destination`` and
    renamed into place only once complete (and, when ``sha256`` or ``md5`` is
    given, once that digest matches), so an interrupted or corrupt download never leaves a
    file at ``destination``. Parent folders are created. Any URL scheme that
    ``urllib`` opens works, ``file://`` included. ``progress`` shows a tqdm bar.

    Raises :class:`ChecksumError` (a ``ValueError``; :class:`MD5ChecksumError`
    for ``md5``) on a digest mismatch, after deleting the downloaded bytes;
    network errors propagate as
    ``urllib.error.URLError``.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        dir=destination.parent, prefix=f".{destination.name}.", suffix=".part"
    )
    tmp_path = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url) as response:
            total = response.headers.get("Content-Length")
            with tqdm(
                total=int(total) if total else None,
                unit="B",
                unit_scale=True,
                desc=destination.name,
                disable=not progress,
            ) as bar:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
        for expected, algorithm, error in ((sha256, "sha256", ChecksumError),
                                           (md5, "md5", MD5ChecksumError)):
            if expected is not None:
                actual = file_digest(tmp_path, algorithm)
                if actual != expected.lower():
                    raise error(destination, expected, actual)
        os.replace(tmp_path, destination)
    finally:
        tmp_path.unlink(missing_ok=True)
    return destination


def _check_inside(root: Path, member: str, target: Path) -> None:
    """Raise UnsafeArchiveError unless ``target`` resolves inside ``root``."""
    if not target.resolve().is_relative_to(root):
        raise UnsafeArchiveError(
            f"archive member {member!r} would be written outside {root}"
        )


def safe_extract(archive_path: str | os.PathLike, target_dir: str | os.PathLike) -> Path:
    """Unpack a tar (plain, .tgz, .tar.gz, .tar.bz2, .tar.xz) or zip archive.

    Every member is checked before anything is written: a member whose path is
    absolute, climbs out with ``..``, or is a symbolic or hard link pointing
    outside ``target_dir`` raises :class:`UnsafeArchiveError` (a
    ``ValueError``) naming it, and nothing is extracted. Device files and FIFOs
    are refused too. Returns ``target_dir`` (created if needed). The archive
    kind is detected from its content, not its name.
    """
    archive_path = Path(archive_path)
    root = Path(target_dir)
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    if zipfile.is_zipfile(archive_path):
        with zipfile.ZipFile(archive_path) as archive:
            for name in archive.namelist():
                if Path(name).is_absolute():
                    raise UnsafeArchiveError(f"archive member {name!r} has an absolute path")
                _check_inside(root, name, root / name)
            archive.extractall(root)
        return root
    if tarfile.is_tarfile(archive_path):
        with tarfile.open(archive_path) as archive:
            members = archive.getmembers()
            for member in members:
                name = member.name
                if Path(name).is_absolute():
                    raise UnsafeArchiveError(f"archive member {name!r} has an absolute path")
                path = root / name
                _check_inside(root, name, path)
                if member.issym():
                    _check_inside(root, name, path.parent / member.linkname)
                elif member.islnk():
                    _check_inside(root, name, root / member.linkname)
                elif not (member.isfile() or member.isdir()):
                    raise UnsafeArchiveError(
                        f"archive member {name!r} is a device file or FIFO"
                    )
            if hasattr(tarfile, "data_filter"):
                archive.extractall(root, members, filter="data")
            else:
                archive.extractall(root, members)
        return root
    raise ValueError(f"{archive_path} is neither a tar nor a zip archive")


def md5sum(path: str | os.PathLike) -> str:
    """Return the hexadecimal MD5 digest of the file at ``path``."""
    return file_digest(path, "md5")


def download_md5(
    url: str,
    destination: str | os.PathLike,
    md5: str | None,
    progress: bool = True,
) -> Path:
    """Fetch ``url`` into ``destination`` unless a copy with digest ``md5`` is there.

    :func:`download` with ``md5=`` (the digest the datasets publish): the bytes
    land in a hidden sibling file first and are renamed into place only when
    their digest equals ``md5`` (``None`` skips the check, and then an existing
    file is always replaced). On a mismatch the bytes are deleted and
    :class:`MD5ChecksumError` (a :class:`ChecksumError`, hence a ``ValueError``)
    is raised; a previous file at ``destination`` is left untouched.
    """
    destination = Path(destination)
    if md5 is not None and destination.is_file() and md5sum(destination) == md5.lower():
        return destination
    return download(url, destination, progress=progress, md5=md5)


__all__ = [
    "ChecksumError",
    "MD5ChecksumError",
    "UnsafeArchiveError",
    "download",
    "download_md5",
    "md5sum",
    "safe_extract",
    "sha256sum",
]
