"""Sharded ``.qpk``: a folder of ``model-0000k-of-0000n.qpk`` files and an index.

``compress(..., out=folder, max_shard_size=...)`` writes one. Each shard is an ordinary
``.qpk`` file (it loads on its own) holding whole tensors in the model's order; a new
shard starts when the next tensor would take the current one's sections past
``max_shard_size`` (a tensor larger than that gets a shard of its own). The index,
``model.qpk.index.json``, follows Hugging Face's layout::

    {"metadata": {"total_size": <bytes of all shards>, "format": "qpk", ...},
     "weight_map": {"<tensor>": "model-00001-of-00004.qpk", ...}}

While a run is in progress each finished shard is already a complete file, named
``.partial-0000k.qpk`` (the total is not known yet); at the end they are renamed and the
index is written last, atomically, so a folder with an index is always a whole model.
An interrupted run can be resumed (``resume=True``): finished partial shards written by
the same run (same inputs and settings: the ``qpack_run`` fingerprint in their metadata)
are kept and their tensors are not encoded again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping

from qpack import format
from qpack.errors import FormatError

INDEX_NAME = "model.qpk.index.json"
_PARTIAL = re.compile(r"^\.partial-(\d{5})\.qpk$")
_FINAL = re.compile(r"^model-(\d{5})-of-(\d{5})\.qpk$")
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}
# the smallest shard size accepted: below it every tensor would be a shard of its own
MIN_SHARD_SIZE = 4096


def parse_size(value) -> int:
    """Bytes from an int or a string such as "5GB", "500MB", "1.5GiB" (decimal KB/MB/GB/TB
    as Hugging Face counts them, binary KiB/MiB/GiB/TiB). ValueError for anything else or
    for less than 4096 bytes."""
    if isinstance(value, bool):
        raise ValueError(f"max_shard_size must be bytes or a size such as '5GB', got {value!r}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", value, re.IGNORECASE)
        if m is None:
            raise ValueError(f"max_shard_size must be bytes or a size such as '5GB', got "
                             f"{value!r}")
        size = int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])
    else:
        raise ValueError(f"max_shard_size must be bytes or a size such as '5GB', got {value!r}")
    if size < MIN_SHARD_SIZE:
        raise ValueError(f"max_shard_size must be at least {MIN_SHARD_SIZE} bytes, got {value!r}")
    return size


def shard_name(k: int, n: int) -> str:
    """The file name of shard k (1-based) of n."""
    return f"model-{k:05d}-of-{n:05d}.qpk"


def check_output_folder(path) -> str:
    """The folder a sharded model goes to: it may exist (and is then written into) or be
    new in an existing writable folder. ValueError naming the path otherwise."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"cannot write shards into {path!r}: it is a file, not a folder")
    parent = os.path.dirname(os.path.abspath(path))
    probe = path if os.path.isdir(path) else parent
    if not os.path.isdir(probe):
        raise ValueError(f"cannot write shards into {path!r}: folder {parent!r} does not exist")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write shards into {path!r}: {probe!r} is not writable")
    return path


def run_fingerprint(parts: object) -> str:
    """A short hash identifying a run (inputs, settings, shard size) for resumption."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class ShardedWriter:
    """Writes tensors into shards in ``folder``; see the module docstring.

    ``metadata()`` gives the metadata each shard's header carries (plus ``qpack_run``,
    the fingerprint); ``source_metadata`` the input's own. Use ``resumed()`` first to
    learn which tensors finished shards already hold, ``add`` each further tensor in
    order, then ``finish``; ``abort`` on error (finished shards stay for a resume).
    """

    def __init__(self, folder: str, max_shard_size: int, fingerprint: str,
                 metadata: Callable[[], dict[str, str]],
                 source_metadata: Mapping[str, str] | None):
        self.folder = folder
        self.max_shard_size = max_shard_size
        self.fingerprint = fingerprint
        self._metadata = metadata
        self._source_metadata = source_metadata
        self._done: list[tuple[str, list[str]]] = []  # (partial path, tensor names)
        self._open = None  # (context manager, SectionWriter, {name: spec})

    def resumed(self, names: list[str], resume: bool) -> list[str]:
        """The first tensors of ``names`` that finished partial shards of this same run
        hold (kept when ``resume``; otherwise every partial shard is removed first)."""
        from qpack.model import load

        os.makedirs(self.folder, exist_ok=True)
        partial = sorted(e for e in os.listdir(self.folder) if _PARTIAL.match(e))
        kept: list[str] = []
        for k, entry in enumerate(partial, 1):
            path = os.path.join(self.folder, entry)
            ok = resume and entry == f".partial-{k:05d}.qpk"
            if ok:
                try:
                    shard = load(path)
                    tensors = list(shard)
                    ok = (shard.metadata.get("qpack_run") == self.fingerprint
                          and tensors == names[len(kept):len(kept) + len(tensors)])
                except FormatError:
                    ok = False
            if not ok:
                resume = False  # this shard and every later one are written again
                os.unlink(path)
                continue
            self._done.append((path, tensors))
            kept.extend(tensors)
        return kept

    def add(self, name: str, spec: dict, sections: list) -> None:
        """Write one tensor (its entry and [(descriptor, blob)] in file order)."""
        size = sum(int(blob.nbytes) for _, blob in sections)
        if self._open is not None and self._open[2] and \
                self._open[1].data_size + size > self.max_shard_size:
            self._close_shard()
        if self._open is None:
            path = os.path.join(self.folder, f".partial-{len(self._done) + 1:05d}.qpk")
            cm = format.stream_file(path)
            self._open = (cm, cm.__enter__(), {}, path)
        _, writer, header, _ = self._open
        for desc, blob in sections:
            writer.add(desc, blob)
        header[name] = spec

    def _close_shard(self) -> None:
        from qpack.model import file_header

        cm, writer, tensors, path = self._open
        self._open = None
        meta = {**self._metadata(), "qpack_run": self.fingerprint}
        try:
            writer.finish(file_header(meta, tensors, self._source_metadata))
        except BaseException as exc:
            cm.__exit__(type(exc), exc, exc.__traceback__)
            raise
        cm.__exit__(None, None, None)
        self._done.append((path, list(tensors)))

    def abort(self, exc: BaseException) -> None:
        """Drop the shard being written (finished shards stay, for a resume)."""
        if self._open is not None:
            cm = self._open[0]
            self._open = None
            try:
                cm.__exit__(type(exc), exc, exc.__traceback__)
            except BaseException:
                pass

    def finish(self) -> str:
        """Close the last shard, rename the shards to their final names, remove shards of
        an earlier set that are not part of this one, and write the index (last,
        atomically). Returns the index path."""
        if self._open is not None and self._open[2]:
            self._close_shard()
        n = len(self._done)
        if n == 0:
            raise ValueError("a sharded model needs at least one tensor")
        weight_map: dict[str, str] = {}
        total = 0
        finals = set()
        for k, (path, names) in enumerate(self._done, 1):
            final = shard_name(k, n)
            os.replace(path, os.path.join(self.folder, final))
            finals.add(final)
            total += os.path.getsize(os.path.join(self.folder, final))
            weight_map.update((name, final) for name in names)
        meta = {"total_size": total, "format": "qpk", **self._metadata(),
                "qpack_run": self.fingerprint}
        index = os.path.join(self.folder, INDEX_NAME)
        format.write_bytes_atomic(index, [json.dumps(
            {"metadata": meta, "weight_map": weight_map}, indent=1,
            ensure_ascii=False).encode("utf-8")])
        for entry in os.listdir(self.folder):  # an older, differently sharded result
            if _FINAL.match(entry) and entry not in finals:
                os.unlink(os.path.join(self.folder, entry))
        return index


def index_path(path: str) -> str | None:
    """The shard index that ``path`` names: the index itself, or a folder's
    ``model.qpk.index.json``; None when ``path`` is neither."""
    if path.endswith(".qpk.index.json"):
        return path
    if os.path.isdir(path):
        candidate = os.path.join(path, INDEX_NAME)
        if os.path.isfile(candidate):
            return candidate
        raise FormatError(f"{path}: is a directory without {INDEX_NAME} (not a sharded "
                          ".qpk model, or one whose compression did not finish)")
    return None


def read_shard_index(path: str) -> tuple[list[tuple[str, list[str]]], dict]:
    """([(shard path, tensor names)] in order, index metadata) of a .qpk shard index.
    FormatError for a missing, damaged or inconsistent index."""
    from qpack.checkpoint import read_index

    if not os.path.isfile(path):
        raise FormatError(f"{path}: no such file")
    try:
        shards, index = read_index(path)
    except ValueError as exc:
        raise FormatError(str(exc)) from None
    meta = index.get("metadata", {})
    if not isinstance(meta, dict):
        raise FormatError(f"{path}: the index's 'metadata' must be an object")
    return shards, meta
