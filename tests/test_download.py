import io
import tarfile
import zipfile

import pytest

from onepass.data.download import (
    ChecksumError,
    UnsafeArchiveError,
    download,
    safe_extract,
    sha256sum,
)


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "source.bin"
    path.write_bytes(b"one pass " * 1000)
    return path


def test_download_file_url_verifies_checksum(source, tmp_path):
    destination = tmp_path / "out" / "copy.bin"
    result = download(source.as_uri(), destination, sha256=sha256sum(source), progress=False)
    assert result == destination
    assert destination.read_bytes() == source.read_bytes()
    assert [p.name for p in destination.parent.iterdir()] == ["copy.bin"]


def test_checksum_mismatch_raises_and_removes_file(source, tmp_path):
    destination = tmp_path / "copy.bin"
    with pytest.raises(ChecksumError) as info:
        download(source.as_uri(), destination, sha256="0" * 64, progress=False)
    assert isinstance(info.value, ValueError)
    assert info.value.expected == "0" * 64
    assert info.value.actual == sha256sum(source)
    assert not destination.exists()
    assert list(tmp_path.iterdir()) == [source]


def _tar_with(path, *members):
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_safe_extract_normal_tar(tmp_path):
    archive = _tar_with(tmp_path / "ok.tar.gz", ("data/a.txt", b"a"), ("b.txt", b"b"))
    target = safe_extract(archive, tmp_path / "out")
    assert (target / "data" / "a.txt").read_bytes() == b"a"
    assert (target / "b.txt").read_bytes() == b"b"


@pytest.mark.parametrize("name", ["../evil", "data/../../evil", "/tmp/evil"])
def test_safe_extract_refuses_escaping_tar_member(tmp_path, name):
    archive = _tar_with(tmp_path / "bad.tgz", ("fine.txt", b"x"), (name, b"evil"))
    with pytest.raises(UnsafeArchiveError, match="evil"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "evil").exists()
    assert not (tmp_path / "out" / "fine.txt").exists()


def test_safe_extract_refuses_symlink_outside(tmp_path):
    archive = tmp_path / "link.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("escape")
        info.type = tarfile.SYMTYPE
        info.linkname = "../../etc"
        tar.addfile(info)
    with pytest.raises(UnsafeArchiveError, match="escape"):
        safe_extract(archive, tmp_path / "out")


def test_safe_extract_zip(tmp_path):
    good = tmp_path / "ok.zip"
    with zipfile.ZipFile(good, "w") as archive:
        archive.writestr("dir/a.txt", "a")
    assert (safe_extract(good, tmp_path / "out") / "dir" / "a.txt").read_text() == "a"

    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("../evil.txt", "evil")
    with pytest.raises(UnsafeArchiveError, match=r"\.\./evil\.txt"):
        safe_extract(bad, tmp_path / "out2")
    assert not (tmp_path / "evil.txt").exists()
