"""provenance.archive.TarReader, the package's one tar reader: it lists what tarfile lists (names, sizes,
digests) for archives that tarfile writes in every format, and refuses damaged or hostile ones with a
clear error as their headers are read."""

from __future__ import annotations

import hashlib
import io
import random
import tarfile
from collections.abc import Callable

import pytest

from provenance.archive import DEFAULT_LIMITS, ArchiveError, Limits, TarReader

Row = tuple[str, int, bool, str]  # name, size, is a folder, sha256 of the data ("" for a folder)


def _make(fmt: int, members: list[tuple[str, bytes | None]], pax_global: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, pax_headers=pax_global or {}) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _tarfile_rows(blob: bytes) -> list[Row]:
    rows: list[Row] = []
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tar:
        for m in tar:
            if m.isdir():
                rows.append((m.name.rstrip("/"), 0, True, ""))
            else:
                f = tar.extractfile(m)
                assert f is not None
                rows.append((m.name, m.size, False, hashlib.sha256(f.read()).hexdigest()))
    return rows


def _pieces(blob: bytes, sizes: Callable[[], int]) -> Callable[[], bytes]:
    """A read() over blob handing out pieces of the sizes given (to cross every buffer boundary)."""
    pos = 0

    def read() -> bytes:
        nonlocal pos
        n = sizes()
        out = blob[pos:pos + n]
        pos += len(out)
        return out

    return read


def _rows(reader: TarReader, how: str = "sha256") -> list[Row]:
    rows: list[Row] = []
    for m in reader:
        if m.is_dir:
            rows.append((m.name, 0, True, ""))
        elif how == "read":
            rows.append((m.name, m.size, False, hashlib.sha256(reader.read()).hexdigest()))
        elif how == "chunks":
            h = hashlib.sha256()
            for c in reader.chunks():
                h.update(c)
            rows.append((m.name, m.size, False, h.hexdigest()))
        else:
            rows.append((m.name, m.size, False, reader.sha256()))
    assert reader.ended
    return rows


_BIG = random.Random(7).randbytes((1 << 20) + 4093)  # over the 1 MiB read size, an odd size
MEMBERS: list[tuple[str, bytes | None]] = [
    ("bundle", None),
    ("bundle/run.json", b'{"schema": "x"}\n'),
    ("bundle/empty", b""),
    ("bundle/exactly-512", b"a" * 512),
    ("bundle/big.bin", _BIG),
    ("bundle/" + "long-folder-name/" * 8 + "f.txt", b"a name over 100 bytes"),  # ustar: in prefix + name
    ("bundle/" + "long-" * 30 + "name.txt", b"a last part over 100 bytes"),  # GNU long name or pax path
    ("bundle/" + "/".join(["deep"] * 40) + "/f", b"a path over 155 bytes"),
    ("bundle/sub", None),
    ("bundle/sub/ünïcödé-名前.txt", "ünïcödé data".encode()),
]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT],
                         ids=["ustar", "gnu", "pax"])
@pytest.mark.parametrize("how", ["sha256", "read", "chunks", "skip"])
def test_lists_what_tarfile_lists(fmt: int, how: str) -> None:
    members = MEMBERS
    if fmt == tarfile.USTAR_FORMAT:  # ustar holds neither a last part of over 100 bytes nor non-ASCII
        members = [m for m in MEMBERS if max(map(len, m[0].split("/"))) <= 100 and len(m[0]) <= 255
                   and m[0].isascii()]
    blob = _make(fmt, members)
    expected = _tarfile_rows(blob)
    assert len(expected) == len(members)
    if how == "skip":  # data never read: skipped, including across chunks
        got = [(m.name, m.size, m.is_dir) for m in TarReader.from_file(io.BytesIO(blob), "t.tar")]
        assert got == [r[:3] for r in expected]
        return
    assert _rows(TarReader.from_file(io.BytesIO(blob), "t.tar"), how) == expected


def test_any_piece_size_gives_the_same_listing() -> None:
    blob = _make(tarfile.PAX_FORMAT, MEMBERS, pax_global={"comment": "a global pax header"})
    expected = _tarfile_rows(blob)
    rng = random.Random(1)
    for sizes in (lambda: 1, lambda: 511, lambda: 513, lambda: rng.randint(1, 5000), lambda: 1 << 20):
        assert _rows(TarReader(_pieces(blob, sizes), "t.tar"), "read") == expected
        assert _rows(TarReader(_pieces(blob, sizes), "t.tar"), "chunks") == expected


def test_pax_path_and_size_are_applied() -> None:
    """A pax `path` (unicode, longer than any ustar field) and `size` override the ustar fields."""
    name = "run/" + "é" * 120 + ".txt"
    info = tarfile.TarInfo(name)
    info.size = 0  # the ustar field says 0 ...
    info.pax_headers = {"size": "5", "comment": "ignored", "mtime": "1.5"}  # ... the pax header 5
    blob = info.tobuf(tarfile.PAX_FORMAT) + b"hello".ljust(512, b"\0") + bytes(1024)
    expected = _tarfile_rows(blob)
    assert expected == [(name, 5, False, hashlib.sha256(b"hello").hexdigest())]
    assert _rows(TarReader.from_file(io.BytesIO(blob), "t.tar")) == expected


def test_base256_size_is_read() -> None:
    """GNU writes sizes of 8 GiB and more in base-256: read (and then refused here by the per-file limit)."""
    info = tarfile.TarInfo("run/huge.bin")
    info.size = 300 << 30
    header = info.tobuf(tarfile.GNU_FORMAT)
    assert header[124] == 0x80
    with pytest.raises(ArchiveError, match=r"'run/huge.bin' declares 322122547200 bytes, more than the"):
        list(TarReader.from_file(io.BytesIO(header + bytes(1024)), "t.tar"))


# --- damaged and hostile tars ------------------------------------------------------------------


def _small() -> bytes:
    return _make(tarfile.PAX_FORMAT, [("run/a", b"alpha"), ("run/b", b"bravo" * 300), ("run/c", b"c")])


def _refusal(blob: bytes, limits: Limits = DEFAULT_LIMITS) -> str:
    with pytest.raises(ArchiveError) as exc:
        _rows(TarReader.from_file(io.BytesIO(blob), "t.tar", limits))
    msg = str(exc.value)
    assert msg.startswith("t.tar: ") and "\n" not in msg
    return msg


def test_bad_checksum_is_refused() -> None:
    blob = bytearray(_small())
    second = 1024  # run/a's header, 5 bytes of data padded to 512, then run/b's header
    assert blob[second:second + 5] == b"run/b"
    blob[second + 4] = ord("X")  # the name changes; the stored checksum does not
    assert "a header has a bad checksum" in _refusal(bytes(blob))
    # tarfile itself stops there silently, listing only the first member
    with tarfile.open(fileobj=io.BytesIO(bytes(blob)), mode="r:") as tar:
        assert [m.name for m in tar] == ["run/a"]


def test_garbage_is_not_a_tar() -> None:
    assert "bad checksum" in _refusal(random.Random(3).randbytes(4096))


@pytest.mark.parametrize("cut,says", [
    (1024 + 100, "truncated: the archive ends inside a header"),
    (1024 + 512 + 700, "member 'run/b' is truncated"),
    (1024 + 512 + 1536, "truncated: the archive ends without its end-of-archive block"),
])
def test_truncated_tars_are_refused(cut: int, says: str) -> None:
    blob = _small()
    assert says in _refusal(blob[:cut])


def test_truncated_member_is_refused_when_its_data_is_skipped() -> None:
    blob = _small()
    with pytest.raises(ArchiveError, match=r"the archive ends inside member 'run/b'"):
        list(TarReader.from_file(io.BytesIO(blob[:1024 + 512 + 700]), "t.tar"))


def test_member_count_is_enforced_as_headers_are_read() -> None:
    """The fourth header is refused before anything after it is read: here, garbage that is not a tar."""
    blob = _make(tarfile.PAX_FORMAT, [(f"run/f{i}", b"x") for i in range(4)])
    stream = blob[:4 * 1024] + b"\xff" * 10_000  # no end-of-archive block: bytes that would fail the checksum
    assert "more than 3 members; refused" in _refusal(stream, Limits(max_members=3))


def test_member_count_refusal_reads_no_further() -> None:
    blob = _make(tarfile.PAX_FORMAT, [(f"run/f{i}", b"x" * 1000) for i in range(50)])
    consumed = 0

    def read() -> bytes:
        nonlocal consumed
        out = blob[consumed:consumed + 512]
        consumed += len(out)
        return out

    with pytest.raises(ArchiveError, match=r"more than 10 members"):
        list(TarReader(read, "t.tar", Limits(max_members=10)))
    assert consumed == 10 * 1536 + 512  # ten members (1,000 bytes padded to 1,024) and the eleventh header


@pytest.mark.parametrize("name,says", [
    ("run/../../x", "escapes the destination"),
    ("/etc/x", "has an absolute path"),
    ("run/a\\b", "has a backslash or a control character"),
    ("run/a\nb", "has a backslash or a control character"),
    ("run/a\x00b", "has a backslash or a control character"),
    ("run//x", "has an empty or '.' path component"),
])
def test_hostile_names_are_refused(name: str, says: str) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("placeholder")
        info.pax_headers = {"path": name}  # a pax path can carry any byte, NUL and newline included
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    assert says in _refusal(buf.getvalue())


def test_non_utf8_name_is_refused() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT, encoding="latin-1") as tar:
        info = tarfile.TarInfo("run/caf\xe9")  # written as the single byte 0xe9: not UTF-8
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    assert "has a name that is not UTF-8" in _refusal(buf.getvalue())


@pytest.mark.parametrize("kind,says", [
    (tarfile.SYMTYPE, "'run/l' is a symbolic link to '/etc/passwd'"),
    (tarfile.LNKTYPE, "'run/l' is a hard link to '/etc/passwd'"),
    (tarfile.FIFOTYPE, "'run/l' is a FIFO"),
    (tarfile.CHRTYPE, "'run/l' is a character device"),
    (tarfile.CONTTYPE, "'run/l' is a contiguous file"),
])
def test_links_devices_and_fifos_are_refused(kind: bytes, says: str) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("run/l")
        info.type, info.linkname = kind, "/etc/passwd"
        tar.addfile(info)
    assert says in _refusal(buf.getvalue())


def test_duplicates_and_clashes_are_refused() -> None:
    dup = _make(tarfile.PAX_FORMAT, [("run/a", b"1"), ("run/a", b"2")])
    assert "'run/a' appears more than once" in _refusal(dup)
    clash = _make(tarfile.PAX_FORMAT, [("run/a", b"1"), ("run/a/b", b"2")])
    assert "needs 'run/a' to be a folder, but it is a file" in _refusal(clash)
    folder_then_file = _make(tarfile.PAX_FORMAT, [("run/a/b", b"1"), ("run/a", b"2")])
    assert "'run/a' appears more than once" in _refusal(folder_then_file)


def test_oversized_and_endless_extended_headers_are_refused() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("run/p")
        info.pax_headers = {"comment": "x" * (2 << 20)}
        tar.addfile(info)
    assert "extended header is larger than the 1048576-byte limit" in _refusal(buf.getvalue())
    one = tarfile.TarInfo("run/p")
    one.pax_headers = {"comment": "y"}
    pax_block = one.tobuf(tarfile.PAX_FORMAT)[:1024]  # the pax header and its data, without the member
    assert "more than 16 extended headers in a row" in _refusal(pax_block * 40 + bytes(1024))


def test_malformed_pax_record_is_refused() -> None:
    info = tarfile.TarInfo("run/p")
    info.pax_headers = {"comment": "abc"}
    blob = bytearray(info.tobuf(tarfile.PAX_FORMAT) + bytes(1024))
    rec = blob.index(b" comment=abc\n")
    blob[rec - 2:rec] = b"99"  # a record length that runs past the header's data
    # fix the pax header's checksum so that the record itself is what is refused
    blob[148:156] = b" " * 8
    blob[148:156] = b"%06o\0 " % sum(blob[:512])
    assert "a malformed pax extended header" in _refusal(bytes(blob))


def test_a_pax_size_of_thousands_of_digits_is_refused() -> None:
    info = tarfile.TarInfo("run/p")
    info.pax_headers = {"size": "9" * 5000}
    assert "a pax header's size is not a number" in _refusal(info.tobuf(tarfile.PAX_FORMAT) + bytes(1024))
