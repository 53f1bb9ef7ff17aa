"""Arrays in ``.npy`` / ``.npz`` files, read batch of rows by batch of rows in bounded memory.

``.npy`` files and uncompressed ``.npz`` members are memory-mapped. Memory-mapped pages count in
the process's resident memory once read, so each batch's pages are handed back to the kernel
(``madvise(MADV_DONTNEED)``; they stay in the page cache) before the next batch is read: a file
many times larger than memory streams through in about one batch of memory. Compressed ``.npz``
members are decompressed batch by batch into one reused buffer.
"""

import mmap
import os
import struct
import zipfile

import numpy as np

from ..core import dtypes as _dtypes

_ZIP_LOCAL_HEADER = 30  # bytes of a zip local file header before the name and extra field


class FileFormatError(ValueError):
    """A file that is not what ``fastxent eval`` can read, with what was wrong."""


def _parse_header(fp, where):
    """(shape, fortran_order, dtype) of the ``.npy`` header at the file position of ``fp``."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fp)
        read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
        if read is None:
            raise ValueError(f".npy format version {version} is not supported")
        return read(fp, max_header_size=1 << 20)
    except ValueError as exc:
        raise FileFormatError(f"{where} is not a valid .npy array ({exc})") from None


def _as_dtype(dtype, override, where):
    if override is not None:
        want = np.dtype(override)
        if want.itemsize != dtype.itemsize:
            raise FileFormatError(f"{where} holds {dtype} values ({dtype.itemsize} bytes), which "
                                  f"cannot be read as {want}")
        if not dtype.isnative:  # the file's byte order is kept: its own dtype only
            if _dtypes.name(dtype) != _dtypes.name(want):
                raise FileFormatError(f"{where} holds {dtype.str} values (the other byte order), "
                                      f"which can be read as {_dtypes.name(dtype)} only")
            return dtype
        return want
    if dtype.kind == "V" and dtype.itemsize == 2:
        raise FileFormatError(f"{where} holds raw 2-byte values (how NumPy saves bfloat16): "
                              "pass --dtype bfloat16 to read them as such")
    return dtype


class ArraySource:
    """One array of a file: ``shape``, ``dtype``, and :meth:`batches` of rows along axis 0."""

    def __init__(self, spec, default_key=None, dtype=None):
        path, key = spec, ""
        if not os.path.exists(spec) and ":" in spec:  # FILE.npz:NAME
            path, _, key = spec.rpartition(":")
        self.path = path
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such file: {path}")
        if os.path.isdir(path):
            raise FileFormatError(f"{path} is a directory, not a .npy or .npz file")
        self._member = None
        if zipfile.is_zipfile(path):
            self.shape, fortran, raw = self._open_npz(path, key, default_key)
        elif key:
            raise FileFormatError(f"{path} is not an .npz file, so it has no array {key!r}")
        else:
            self.where = path
            with open(path, "rb") as f:
                self.shape, fortran, raw = _parse_header(f, path)
                self._offset = f.tell()
            self._stored = True
        if fortran and len(self.shape) > 1:
            raise FileFormatError(f"{self.where} is stored in Fortran order: rows must be "
                                  "contiguous (save it with np.save(np.ascontiguousarray(a)))")
        self.dtype = _as_dtype(raw, dtype, self.where)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        if self._stored:
            have = os.path.getsize(path) - self._offset
            if have < self.nbytes:
                raise FileFormatError(f"{self.where} is truncated: its header announces shape "
                                      f"{self.shape} of {self.dtype} ({self.nbytes:,} bytes) but "
                                      f"the file holds {have:,} bytes of data")

    def _open_npz(self, path, key, default_key):
        with zipfile.ZipFile(path) as z:
            names = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
            if not key:
                if default_key in names:
                    key = default_key
                elif len(names) == 1:
                    key = names[0]
                else:
                    raise FileFormatError(f"{path} holds arrays {names}: name one as "
                                          f"{path}:NAME")
            if key not in names:
                raise FileFormatError(f"{path} has no array {key!r} (it holds {names})")
            info = z.getinfo(key + ".npy")
        self.where = f"{path}:{key}"
        self._member = info
        self._stored = info.compress_type == zipfile.ZIP_STORED
        if self._stored:
            with open(path, "rb") as f:
                f.seek(info.header_offset)
                local = f.read(_ZIP_LOCAL_HEADER)
                if len(local) < _ZIP_LOCAL_HEADER or local[:4] != b"PK\x03\x04":
                    raise FileFormatError(f"{self.where}: damaged zip entry")
                name_len, extra_len = struct.unpack("<HH", local[26:30])
                f.seek(info.header_offset + _ZIP_LOCAL_HEADER + name_len + extra_len)
                header = _parse_header(f, self.where)
                self._offset = f.tell()
        else:
            with zipfile.ZipFile(path) as z, z.open(info) as f:
                header = _parse_header(f, self.where)
        return header

    @property
    def size(self):
        """Number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))

    def batches(self, rows, width):
        """Yield ``(lo, a)`` in order, ``a`` holding rows ``lo:lo + rows`` of the array seen as
        2-D ``(size // width, width)``. Each ``a`` is valid until the next one is asked for (its
        memory is then reused, or handed back to the kernel)."""
        total = self.size // width if width else 0
        rows = max(1, int(rows))
        if self._stored:
            yield from self._mapped(rows, width, total)
        else:
            yield from self._streamed(rows, width, total)

    def _mapped(self, rows, width, total):
        if self.nbytes == 0:
            yield 0, np.empty((total, width), self.dtype)
            return
        row_bytes = width * self.dtype.itemsize
        with open(self.path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            if hasattr(mmap, "MADV_SEQUENTIAL"):
                mm.madvise(mmap.MADV_SEQUENTIAL)
            whole = np.frombuffer(mm, self.dtype, count=self.size,
                                  offset=self._offset).reshape(total, width)
            for lo in range(0, total, rows):
                yield lo, whole[lo:lo + rows]
                _release(mm, self._offset + lo * row_bytes, rows * row_bytes)
            del whole
        finally:
            try:
                mm.close()
            except BufferError:  # a caller still holds a batch: the map goes with it
                pass

    def _streamed(self, rows, width, total):
        row_bytes = width * self.dtype.itemsize
        buf = np.empty((max(min(rows, total), 1), width), self.dtype)
        raw = memoryview(buf.reshape(-1).view(np.uint8))
        with zipfile.ZipFile(self.path) as z, z.open(self._member) as f:
            _parse_header(f, self.where)
            for lo in range(0, total, rows):
                n = min(rows, total - lo)
                got = 0
                while got < n * row_bytes:
                    k = f.readinto(raw[got:n * row_bytes])
                    if not k:
                        raise FileFormatError(f"{self.where} is truncated: it ends in row "
                                              f"{lo + got // row_bytes} of {total}")
                    got += k
                yield lo, buf[:n]


def _release(mm, start, length):
    """Hand the pages of ``[start, start + length)`` back (they stay in the page cache)."""
    if not hasattr(mm, "madvise"):
        return
    page = mmap.PAGESIZE
    lo = start // page * page
    hi = min(len(mm), start + length) // page * page  # whole pages only: the next batch starts
    if hi > lo:
        mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
