"""Issue 8, item 10: hostile archives given to ``edgeq verify``.

Each archive is refused with one line naming the problem, before anything is
written: the extraction folder is never created, nothing appears outside it,
and memory and time stay bounded.
"""

from __future__ import annotations

import gzip
import io
import stat
import struct
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgeq.bundles.archive import ExtractLimits, safe_extract
from edgeq.cli import app
from edgeq.errors import BundleError

from tests.bundles import build
from tests.robustness.failsafe import bounded


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.GNU_FORMAT) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    i = tarfile.TarInfo(name)
    i.type = kind
    i.linkname = linkname
    i.mode = 0o644
    return i


def _zip(path: Path, members: list[tuple[str, bytes, int]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data, mode in members:
            zi = zipfile.ZipInfo(name)
            zi.create_system = 3
            zi.external_attr = mode << 16
            zf.writestr(zi, data)
    return path


def _refused(archive: Path, dest: Path, *words: str, limits: ExtractLimits = ExtractLimits()) -> str:
    with pytest.raises(BundleError) as e:
        safe_extract(archive, dest, limits)
    msg = e.value.one_line()
    assert "refused" in msg and "nothing was extracted" in msg
    for w in words:
        assert w in msg, msg
    assert not dest.exists()
    return msg


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder outside the extraction folder: nothing may appear in it."""
    d = tmp_path / "outside"
    d.mkdir()
    return d


def _nothing_outside(outside: Path) -> None:
    assert list(outside.iterdir()) == []


TAR_CASES = {
    "dotdot": ([(_info("../outside/pwned"), b"x")], "escapes"),
    "nested-dotdot": ([(_info("a/../../outside/pwned"), b"x")], "escapes"),
    "absolute": ([(_info("/OUTSIDE/pwned"), b"x")], "absolute"),
    "symlink-out": ([(_info("link", tarfile.SYMTYPE, "/OUTSIDE"), None)], "link member"),
    "hardlink-out": ([(_info("hl", tarfile.LNKTYPE, "../outside/victim"), None)], "link member"),
    "link-then-write-through": (
        [(_info("d", tarfile.SYMTYPE, "/OUTSIDE"), None), (_info("d/pwned"), b"x")],
        "link member",
    ),
    "char-device": ([(_info("null", tarfile.CHRTYPE), None)], "device or FIFO"),
    "block-device": ([(_info("sda", tarfile.BLKTYPE), None)], "device or FIFO"),
    "fifo": ([(_info("pipe", tarfile.FIFOTYPE), None)], "device or FIFO"),
    "duplicate": ([(_info("manifest.json"), b"{}"), (_info("manifest.json"), b"{}")], "duplicate"),
    "case-duplicate": ([(_info("Model.onnx"), b"a"), (_info("model.onnx"), b"b")], "duplicate"),
    "file-then-under-it": ([(_info("golden"), b"a"), (_info("golden/x.npy"), b"b")], "under a file"),
    "backslash": ([(_info("..\\outside\\pwned"), b"x")], "backslash"),
}


@pytest.mark.parametrize("case", sorted(TAR_CASES))
def test_hostile_tar_members_are_refused_before_writing(case, tmp_path, outside):
    members, word = TAR_CASES[case]
    for info, _ in members:  # point absolute names and links at the real outside folder
        info.name = info.name.replace("/OUTSIDE", str(outside))
        info.linkname = info.linkname.replace("/OUTSIDE", str(outside))
    # a harmless first member proves that nothing is written even when the bad one comes later
    arc = _tar(tmp_path / "evil.tar.gz", [(_info("aaa.txt"), b"first")] + members)
    _refused(arc, tmp_path / "x" / "dest", word)
    _nothing_outside(outside)
    assert not (tmp_path / "x").exists()


ZIP_CASES = {
    "dotdot": ([("../outside/pwned", b"x", stat.S_IFREG | 0o644)], "escapes"),
    "absolute": ([("/OUTSIDE/pwned", b"x", stat.S_IFREG | 0o644)], "absolute"),
    "drive-letter": ([("C:/pwned", b"x", stat.S_IFREG | 0o644)], "absolute"),
    "symlink": ([("link", b"/OUTSIDE", stat.S_IFLNK | 0o777)], "link member"),
    "fifo": ([("pipe", b"", stat.S_IFIFO | 0o644)], "device or FIFO"),
    "duplicate": ([("run.py", b"a", stat.S_IFREG | 0o644), ("run.py", b"b", stat.S_IFREG | 0o644)], "duplicate"),
}


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize("case", sorted(ZIP_CASES))
def test_hostile_zip_members_are_refused_before_writing(case, tmp_path, outside):
    members, word = ZIP_CASES[case]
    members = [(n.replace("/OUTSIDE", str(outside)), d.replace(b"/OUTSIDE", str(outside).encode()), m) for n, d, m in members]
    arc = _zip(tmp_path / "evil.zip", [("aaa.txt", b"first", stat.S_IFREG | 0o644)] + members)
    _refused(arc, tmp_path / "dest", word)
    _nothing_outside(outside)


_bounded = bounded  # tests.robustness.failsafe


def test_tar_gz_bomb_is_refused_from_its_header(tmp_path):
    # 256 MiB of zeros compress to ~250 KiB: ratio ~1000, far above the limit of 200
    arc = tmp_path / "bomb.tar.gz"
    zeros = b"\0" * (1 << 20)
    with gzip.GzipFile(arc, "wb", compresslevel=1) as gz:
        info = _info("model.onnx")
        info.size = 256 << 20
        gz.write(info.tobuf(format=tarfile.USTAR_FORMAT))
        for _ in range(256):
            gz.write(zeros)
        gz.write(b"\0" * 1024)
    assert arc.stat().st_size < 2 << 20
    dest = tmp_path / "dest"
    elapsed, peak = _bounded(lambda: _refused(arc, dest, "compression ratio"))
    assert elapsed < 5 and peak < 32 << 20, (elapsed, peak)


def test_zip_bomb_is_refused_from_its_directory(tmp_path):
    arc = tmp_path / "bomb.zip"
    with zipfile.ZipFile(arc, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("model.onnx", "w", force_zip64=True) as w:
            for _ in range(128):
                w.write(b"\0" * (1 << 20))
    assert arc.stat().st_size < 1 << 20
    elapsed, peak = _bounded(lambda: _refused(arc, tmp_path / "dest", "compression ratio"))
    assert elapsed < 5 and peak < 32 << 20, (elapsed, peak)


def test_huge_extended_header_is_refused_without_reading_it(tmp_path):
    # Python's tarfile would read a 64 MiB pax header whole into memory
    arc = tmp_path / "pax.tar.gz"
    with gzip.GzipFile(arc, "wb", compresslevel=1) as gz:
        info = _info("././@PaxHeader", tarfile.XHDTYPE)
        info.size = 64 << 20
        gz.write(info.tobuf(format=tarfile.USTAR_FORMAT))
        for _ in range(64):
            gz.write(b"\0" * (1 << 20))
        gz.write(b"\0" * 1024)
    elapsed, peak = _bounded(lambda: _refused(arc, tmp_path / "dest", "extended header"))
    assert elapsed < 5 and peak < 16 << 20, (elapsed, peak)


def test_member_larger_than_the_limit_is_refused(tmp_path):
    arc = _tar(tmp_path / "big.tar.gz", [(_info("model.onnx"), b"\1" * 5000)])
    _refused(arc, tmp_path / "dest", "model.onnx", "5000 bytes", limits=ExtractLimits(max_member_bytes=4096))


def _many_member_tar(path: Path, blocks: int = 100, per: int = 10_000) -> Path:
    """blocks*per empty regular files m/BB/NNNN; one header block reused with names and checksums patched."""
    tmpl = tarfile.TarInfo("m/00/0000")
    tmpl.mode = 0o644
    base = np.frombuffer(tmpl.tobuf(format=tarfile.USTAR_FORMAT), dtype=np.uint8).copy()
    blk = np.tile(base, (per, 1))
    blk[:, 5:9] = np.array([f"{i:04d}".encode() for i in range(per)], dtype="S4").view(np.uint8).reshape(per, 4)
    with open(path, "wb") as f:
        for b in range(blocks):
            blk[:, 2:4] = np.frombuffer(f"{b:02d}".encode(), dtype=np.uint8)
            blk[:, 148:156] = ord(" ")
            sums = blk.astype(np.int64).sum(1)
            blk[:, 148:154] = np.array([f"{v:06o}".encode() for v in sums], dtype="S6").view(np.uint8).reshape(per, 6)
            blk[:, 154] = 0
            f.write(gzip.compress(blk.tobytes(), compresslevel=1, mtime=0))  # gzip members may be concatenated
        f.write(gzip.compress(b"\0" * 1024, mtime=0))
    return path


@pytest.mark.slow
def test_a_million_tiny_members_are_refused_in_bounded_time_and_memory(tmp_path):
    arc = _many_member_tar(tmp_path / "many.tar.gz")
    with tarfile.open(arc) as tf:  # the archive really holds distinct members past the limit
        names = [tf.next().name for _ in range(3)]
    assert names == ["m/00/0000", "m/00/0001", "m/00/0002"]
    dest = tmp_path / "dest"
    elapsed, peak = _bounded(lambda: _refused(arc, dest, "more than 10000 members"))
    # stops after the 10001st header: a fraction of the 1,000,000, with the member list not kept
    assert elapsed < 10 and peak < 64 << 20, (elapsed, peak)


def test_zip_declaring_a_million_members_is_refused_before_parsing(tmp_path):
    arc = _zip(tmp_path / "many.zip", [("a", b"", stat.S_IFREG | 0o644)])
    raw = bytearray(arc.read_bytes())
    eocd = raw.rfind(b"PK\x05\x06")
    struct.pack_into("<HH", raw, eocd + 8, 0xFFFE, 0xFFFE)  # entries on disk / total
    arc.write_bytes(bytes(raw))
    _refused(arc, tmp_path / "dest", "more than 10000 members")


def test_zip_that_understates_a_member_size_leaves_nothing(tmp_path):
    arc = _zip(tmp_path / "lie.zip", [("a.txt", b"ok", stat.S_IFREG | 0o644), ("b.bin", b"\1" * 100_000, stat.S_IFREG | 0o644)])
    raw = bytearray(arc.read_bytes())
    with zipfile.ZipFile(arc) as zf:
        zi = zf.getinfo("b.bin")
    # declare 10 bytes instead of 100,000 in the local header and the central directory
    struct.pack_into("<I", raw, zi.header_offset + 22, 10)
    cd = raw.rfind(b"PK\x01\x02")
    struct.pack_into("<I", raw, cd + 24, 10)
    arc.write_bytes(bytes(raw))
    dest = tmp_path / "dest"
    with pytest.raises(BundleError, match="refused"):
        safe_extract(arc, dest)
    assert not dest.exists()  # at most 10 bytes were read for it, and what was written is gone


def test_truncated_and_garbage_archives_are_refused(tmp_path):
    good = _tar(tmp_path / "g.tar.gz", [(_info("a.txt"), b"x" * 10000)])
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[:40])
    with pytest.raises(BundleError):
        safe_extract(cut, tmp_path / "d1")
    assert not (tmp_path / "d1").exists()
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"PK not a zip at all" * 10)
    _refused(junk, tmp_path / "d2", "zip")


def test_an_honest_archive_extracts(tmp_path):
    arc = _tar(tmp_path / "ok.tar.gz", [(_info("a/b.txt"), b"hello"), (_info("run.py"), b"print(1)")])
    dest = safe_extract(arc, tmp_path / "dest")
    assert (dest / "a" / "b.txt").read_bytes() == b"hello"
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == ["a/b.txt", "run.py"]


def test_verify_cli_refuses_hostile_archive_in_one_line_and_writes_nothing(runner, tmp_path, outside, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    # a real bundle with one extra member that links out: the good files must not be written either
    b = build(tmp_path / "b")
    members = [(_info(p.relative_to(b).as_posix()), p.read_bytes()) for p in sorted(b.rglob("*")) if p.is_file()]
    members.append((_info("zz", tarfile.SYMTYPE, str(outside)), None))
    arc = _tar(tmp_path / "evil.tar.gz", members)
    r = runner.invoke(app, ["verify", str(arc)])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "link member 'zz'" in lines[0]
    _nothing_outside(outside)
    assert list(scratch.rglob("*")) == []  # the extraction folder was never populated, the temp dir removed
