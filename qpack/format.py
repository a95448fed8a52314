"""The ``.qpk`` container: preamble, header, aligned checksummed sections.

Layout of version 4, the one written (docs/FORMAT.md, section 4)::

    offset 0   8 bytes   magic  b"\\x89QPK\\r\\n\\x1a\\n"
    offset 8   uint32    format version (4; versions 1-3 are read too)
    offset 12  uint32    header length H in bytes, as stored
    offset 16  uint32    CRC32 of the H stored header bytes
    offset 20  uint32    flags: bit 0 = the header is zlib-compressed; else 0
    offset 24  uint64    header offset P: the header is the file's last H bytes
    offset 32  32 bytes  zero (reserved)
    offset 64  ...       data start D: sections at D + off, each ``off`` a multiple of its
                         codec's alignment, zero padding between them
    offset P   H bytes   header: UTF-8 JSON, zlib-compressed when flag bit 0 is set

The header comes last so that a file can be written front to back as its tensors are
encoded (``SectionWriter``): nothing waits for the whole model. Versions 1-3 put the
header at offset 24 and the data at D = align64(24 + H).

This module knows sections only as (offset, length, crc32) byte ranges. What a section
holds is described in the header by the tensor encodings (qpack/tensor_spec.py).
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import secrets
import socket
import stat
import struct
import time
import zlib
from collections.abc import Iterable

import numpy as np

from qpack.errors import FormatError

MAGIC = b"\x89QPK\r\n\x1a\n"
FORMAT_VERSION = 4
SUPPORTED_VERSIONS = (1, 2, 3, 4)
# the preamble every version starts with; version 4 adds HEADER_OFFSET right after it
PREAMBLE = struct.Struct("<8sIIII")
HEADER_OFFSET = struct.Struct("<Q")
ALIGN = 64
# version 4: the data region starts here (preamble, header offset, reserved zeros)
DATA_START = 64
FLAG_ZLIB_HEADER = 1
MAX_HEADER_BYTES = 64 << 20  # a header larger than this (stored or inflated) is refused
# Raw sections at least this long are 64-byte aligned although their dtype needs less:
# large arrays used in place (raw weight matrices) then start on a cache line.
RAW_ALIGN64_FROM = 4096


def align_up(n: int, a: int = ALIGN) -> int:
    """Smallest multiple of ``a`` that is >= n."""
    return (n + a - 1) // a * a


def crc32(data) -> int:
    """CRC-32 (zlib polynomial) of a bytes-like object or uint8 array, as an unsigned int."""
    return zlib.crc32(memoryview(data).cast("B") if not isinstance(data, np.ndarray)
                      else np.ascontiguousarray(data).view(np.uint8)) & 0xFFFFFFFF


def _dump_header(header: dict) -> bytes:
    return json.dumps(header, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def section_alignment(desc: dict, version: int = FORMAT_VERSION) -> int:
    """The alignment a reader requires of a section's offset (docs/FORMAT.md, 4.1).

    Version 1: 64 for every section. Versions 2 and 3: 64 for ``packed`` codes (the
    kernels use them in place), the dtype's size for ``raw`` arrays (so a memory map gives
    aligned views), 1 for ``huffman`` and ``varint`` streams (decoded into memory anyway).
    """
    if version == 1 or desc["codec"] == "packed":
        return ALIGN
    if desc["codec"] == "raw":
        return 2 if desc["dtype"] == "bfloat16" else np.dtype(desc["dtype"]).itemsize
    return 1


def place_section(end: int, desc: dict, blob: np.ndarray) -> int:
    """Put one section after the data region's current ``end``: fill its descriptor's
    ``offset`` (the next multiple of its alignment), ``length`` and ``crc32`` in place;
    return the new end."""
    align = section_alignment(desc)
    if desc["codec"] == "raw" and blob.nbytes >= RAW_ALIGN64_FROM:
        align = ALIGN
    desc["offset"] = align_up(end, align)
    desc["length"] = int(blob.nbytes)
    desc["crc32"] = crc32(blob)
    return desc["offset"] + desc["length"]


def layout_sections(blobs: Iterable[tuple[dict, np.ndarray]]) -> int:
    """Assign ``offset``, ``length`` and ``crc32`` to each section descriptor in place.

    ``blobs`` yields (descriptor, uint8 array) pairs in file order (``place_section``).
    Returns the size of the data region (sections plus padding between them).
    """
    end = 0
    for desc, blob in blobs:
        end = place_section(end, desc, blob)
    return end


def encode_header(header: dict) -> bytes:
    """The header as stored in a version-2 or -3 file: compact UTF-8 JSON, zlib level 9.

    Raises ValueError when the JSON exceeds MAX_HEADER_BYTES.
    """
    head = _dump_header(header)
    if len(head) > MAX_HEADER_BYTES:
        raise ValueError(f"header of {len(head)} bytes exceeds the {MAX_HEADER_BYTES} byte cap")
    return zlib.compress(head, 9)


def inflate_header(stored: bytes, where: str) -> bytes:
    """Decompress a zlib header without ever holding more than MAX_HEADER_BYTES."""
    inflater = zlib.decompressobj()
    try:
        head = inflater.decompress(stored, MAX_HEADER_BYTES + 1)
    except zlib.error as exc:
        raise FormatError(f"{where}: compressed header is damaged ({exc})") from None
    if len(head) > MAX_HEADER_BYTES or inflater.unconsumed_tail:
        raise FormatError(f"{where}: header inflates beyond the {MAX_HEADER_BYTES} byte cap")
    if not inflater.eof or inflater.unused_data:
        raise FormatError(f"{where}: compressed header is truncated or has trailing bytes")
    return head


def file_size(header: dict, data_size: int) -> int:
    """Exact size of the file ``write_file`` produces for this header and data region."""
    return DATA_START + data_size + len(encode_header(header))


def check_output_path(path: str | os.PathLike) -> str:
    """Check, before any work, that a file can be written at ``path``; return it as a str.

    Raises ValueError naming ``path`` when it is a directory, when its folder does not
    exist, or when the folder is not writable by this process.
    """
    path = os.fspath(path)
    if not isinstance(path, str):
        raise ValueError(f"output path must be a str or os.PathLike, got {path!r}")
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"cannot write {path!r}: it is a directory")
    if not os.path.isdir(directory):
        raise ValueError(f"cannot write {path!r}: directory {directory!r} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {path!r}: directory {directory!r} is not writable")
    return path


TEMP_PREFIX = ".qpack-"
TEMP_SUFFIX = ".tmp"


def _temp_name(directory: str) -> str:
    """A fresh temporary file name in ``directory``: .qpack-<host>-<pid>-<random>.tmp, so
    that a later save can tell whose it was (see ``remove_stale_temp_files``)."""
    host = socket.gethostname().replace("-", "_") or "host"
    return os.path.join(directory, f"{TEMP_PREFIX}{host}-{os.getpid()}-"
                                   f"{secrets.token_hex(6)}{TEMP_SUFFIX}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but belongs to someone else, or cannot tell: keep its file
    return True


def remove_stale_temp_files(directory: str, min_age_seconds: float = 60.0) -> list[str]:
    """Delete temporary files that an interrupted save (kill -9, power loss) left behind.

    Only files named by ``_temp_name`` on this host whose process no longer runs, and
    that have not been written for ``min_age_seconds``, are removed. Returns their paths.
    Errors (a file removed meanwhile, no permission) are ignored: this is housekeeping.
    """
    host = socket.gethostname().replace("-", "_") or "host"
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        if not (name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)):
            continue
        parts = name[len(TEMP_PREFIX):-len(TEMP_SUFFIX)].split("-")
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        path = os.path.join(directory, name)
        try:
            if _pid_alive(int(parts[1])) or now - os.stat(path).st_mtime < min_age_seconds:
                continue
            os.unlink(path)
            removed.append(path)
        except OSError:
            continue
    return removed


def _new_file_mode(path: str) -> int:
    """Permission bits for the file replacing ``path``: the old file's if there is one,
    else what ``open()`` would give a new file under the current umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        pass
    return 0o666 & ~_umask()


def _umask() -> int:
    """The process umask. Linux reports it in /proc; elsewhere os.umask must set it to read
    it, which is briefly visible to other threads."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed over it.

    On any exception the temporary file is removed and ``path`` is left untouched, so an
    interrupted save never leaves a partial file under the target name. A process killed
    outright leaves its temporary file (.qpack-HOST-PID-RANDOM.tmp); the next save into
    the same folder removes it. The new file keeps the mode of the file it replaces, or
    follows the umask. Raises ValueError (before writing anything) if ``path`` is a
    directory or its folder is missing or not writable.
    """
    path = check_output_path(path)
    directory = os.path.dirname(os.path.abspath(path))
    remove_stale_temp_files(directory)
    tmp = _temp_name(directory)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, _new_file_mode(path))
    finally:
        os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def write_bytes_atomic(path: str | os.PathLike, chunks: Iterable) -> int:
    """Write bytes-like chunks to ``path`` atomically (see ``atomic_path``); return the size."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        for chunk in chunks:
            fh.write(memoryview(chunk).cast("B") if not isinstance(chunk, np.ndarray)
                     else memoryview(np.ascontiguousarray(chunk).reshape(-1).view(np.uint8)))
        fh.flush()
        size = fh.tell()
    return size


class SectionWriter:
    """Writes a version-4 ``.qpk`` front to back into an open binary file: each section as
    soon as it is added, the header last (``finish``).

    Only the bytes of the section being written are held, so a model larger than memory
    can be written tensor by tensor. Use through ``stream_file``, which makes it atomic.
    """

    def __init__(self, fh):
        self._fh = fh
        self._end = 0  # bytes of the data region written so far
        self.finished = False
        fh.write(b"\0" * DATA_START)  # preamble and header offset are written by finish

    @property
    def data_size(self) -> int:
        """Bytes of the data region so far (sections and the padding between them)."""
        return self._end

    def add(self, desc: dict, blob: np.ndarray) -> None:
        """Append one section (a uint8 array); fill its descriptor's offset, length and
        crc32 in place (``place_section``)."""
        if self.finished:
            raise ValueError("SectionWriter: a section added after finish()")
        start = self._end
        self._end = place_section(start, desc, blob)
        if desc["offset"] > start:
            self._fh.write(b"\0" * (desc["offset"] - start))
        self._fh.write(memoryview(np.ascontiguousarray(blob).reshape(-1).view(np.uint8)))

    def finish(self, header: dict) -> int:
        """Write the header (it must hold the descriptors ``add`` filled) and then the
        preamble; return the file size. ValueError when the header is over the cap."""
        head = encode_header(header)
        self._fh.write(head)
        self._fh.seek(0)
        self._fh.write(PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(head), crc32(head),
                                     FLAG_ZLIB_HEADER))
        self._fh.write(HEADER_OFFSET.pack(DATA_START + self._end))
        self.finished = True
        return DATA_START + self._end + len(head)


@contextlib.contextmanager
def stream_file(path: str | os.PathLike):
    """Yield a ``SectionWriter`` on a temporary file beside ``path``; when the block ends
    after ``finish``, the file is renamed over ``path`` (``atomic_path``). An exception,
    or a block that ends without ``finish``, leaves ``path`` untouched and no file behind
    (the latter raises ValueError)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        writer = SectionWriter(fh)
        yield writer
        if not writer.finished:
            raise ValueError(f"{path}: the file was closed before its header was written")
        fh.flush()


def write_file(path: str | os.PathLike, header: dict,
               blobs: list[tuple[dict, np.ndarray]]) -> int:
    """Write a ``.qpk`` file atomically; return its size in bytes.

    ``header`` must hold the section descriptors of ``blobs`` (they are filled again, in
    place, as they are written). Raises ValueError if the directory does not exist or the
    header is over the size cap.
    """
    with stream_file(path) as writer:
        for desc, blob in blobs:
            writer.add(desc, blob)
        return writer.finish(header)


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """object_pairs_hook: a JSON object naming a key twice is refused (no last-one-wins)."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise FormatError(f"duplicate key {key!r} in a JSON object")
        out[key] = value
    return out


def parse_header(head: bytes, where: str) -> dict:
    """Parse header bytes into a dict; FormatError for anything but a clean JSON object.

    Refused: invalid UTF-8 or JSON, NaN/Infinity literals, nesting deep enough to exhaust
    the parser's recursion limit, integers beyond Python's digit limit, duplicate keys in
    any object, and strings that cannot be written back as UTF-8 (lone surrogates such as
    "\\ud800").
    """
    def no_constants(name: str):
        raise FormatError(f"{name} is not valid JSON")

    try:
        header = json.loads(head.decode("utf-8"), object_pairs_hook=_unique_keys,
                            parse_constant=no_constants)
    except FormatError as exc:
        raise FormatError(f"{where}: bad header: {exc}") from None
    except RecursionError:
        raise FormatError(f"{where}: header JSON is nested too deeply") from None
    except ValueError as exc:  # UnicodeDecodeError, JSONDecodeError, int digit limit
        raise FormatError(f"{where}: header is not valid UTF-8 JSON ({exc})") from None
    if not isinstance(header, dict):
        raise FormatError(f"{where}: header must be a JSON object")
    try:
        _dump_header(header)
    except UnicodeEncodeError:
        raise FormatError(f"{where}: header holds a string that is not valid Unicode "
                          "(a lone surrogate escape)") from None
    except (RecursionError, ValueError):
        raise FormatError(f"{where}: header JSON is nested too deeply") from None
    return header


def check_disjoint(ranges: Iterable[tuple[int, int, str]], where: str) -> None:
    """Sections (offset, length, name) must not overlap: each stored byte belongs to one.

    Empty sections overlap nothing. Raises FormatError naming both sections.
    """
    spans = sorted((off, off + length, name) for off, length, name in ranges if length)
    for (_, end, name), (start, _, other) in zip(spans, spans[1:], strict=False):
        if start < end:
            raise FormatError(f"{where}: {other} overlaps {name}")


class MappedFile:
    """A ``.qpk`` file opened read-only and memory-mapped; sections are views into it.

    Opening reads and checks only the preamble and header (O(header)). Each section's CRC32
    is checked the first time the section is read (or all at once by ``verify()``).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size < PREAMBLE.size:
                    raise FormatError(f"{self.path}: {size} bytes is too short for a .qpk file")
                self._mmap = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            raise FormatError(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise FormatError(f"{self.path}: is a directory, not a .qpk file") from None
        except PermissionError as exc:
            raise FormatError(f"{self.path}: cannot read ({exc.strerror})") from None
        self.buffer = np.frombuffer(self._mmap, dtype=np.uint8)
        self.size = size
        magic, version, head_len, head_crc, flags = PREAMBLE.unpack_from(self._mmap, 0)
        if magic != MAGIC:
            raise FormatError(f"{self.path}: not a .qpk file (bad magic {magic!r})")
        if version not in SUPPORTED_VERSIONS:
            raise FormatError(f"{self.path}: unsupported .qpk format version {version} "
                              f"(this qpack reads {SUPPORTED_VERSIONS})")
        if head_len > MAX_HEADER_BYTES:
            raise FormatError(f"{self.path}: header length {head_len} exceeds the cap")
        if version >= 4:
            head_start, data_start = self._trailing_header(size, head_len)
        else:
            head_start = PREAMBLE.size
            data_start = align_up(PREAMBLE.size + head_len)
            if PREAMBLE.size + head_len > size:
                raise FormatError(f"{self.path}: truncated inside the header "
                                  f"(header needs {head_len} bytes, file has {size})")
        head = self._mmap[head_start:head_start + head_len]
        if crc32(head) != head_crc:
            raise FormatError(f"{self.path}: header checksum mismatch (damaged header)")
        if flags & ~(FLAG_ZLIB_HEADER if version >= 2 else 0):
            raise FormatError(f"{self.path}: unknown preamble flags {flags:#x}")
        if flags & FLAG_ZLIB_HEADER:
            head = inflate_header(head, self.path)
        header = parse_header(head, self.path)
        self.version = version
        self.header = header
        self.header_nbytes = head_len
        self.data_start = data_start
        # version 4: the data region ends where the header starts
        self.data_size = (head_start if version >= 4 else size) - data_start
        self._verified: set[tuple[int, int]] = set()

    def _trailing_header(self, size: int, head_len: int) -> tuple[int, int]:
        """(header start, data start) of a version-4 file, whose header is its last
        ``head_len`` bytes at the offset the preamble names; FormatError otherwise."""
        if size < DATA_START:
            raise FormatError(f"{self.path}: {size} bytes is too short for a version-4 "
                              f".qpk file (the data starts at {DATA_START})")
        (head_start,) = HEADER_OFFSET.unpack_from(self._mmap, PREAMBLE.size)
        if any(self._mmap[PREAMBLE.size + HEADER_OFFSET.size:DATA_START]):
            raise FormatError(f"{self.path}: reserved preamble bytes are not zero")
        if head_start < DATA_START or head_start + head_len != size:
            raise FormatError(f"{self.path}: header offset {head_start} and length "
                              f"{head_len} do not end the {size}-byte file (truncated or "
                              "trailing bytes)")
        return head_start, DATA_START

    def section(self, desc: dict, where: str) -> np.ndarray:
        """Read-only uint8 view of a section, its CRC32 checked on first access."""
        start = self.data_start + desc["offset"]
        view = self.buffer[start:start + desc["length"]]
        # keyed by the whole byte range: an empty section may share its offset with the
        # next one, and checking it must not count as checking that one
        key = (desc["offset"], desc["length"])
        if key not in self._verified:
            if crc32(view) != desc["crc32"]:
                raise FormatError(f"{self.path}: {where}: checksum mismatch (damaged section "
                                  f"at byte {start}, {desc['length']} bytes)")
            self._verified.add(key)
        return view
