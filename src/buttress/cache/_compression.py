"""Compression of stored values: zstd for large values, raw for small ones.

Every value gets a one-byte flag in front, so reading never has to guess and a
store can hold both kinds side by side (or change its settings) without a
migration::

    compression = Compression(threshold=1024, level=3)
    blob = compression.compress(serializer.dumps(value))   # b"\\x00..." or b"\\x01..."
    serializer.loads(compression.decompress(blob))

====  ===========================================================
flag  rest of the bytes
====  ===========================================================
0     the value as it is
1     one zstd frame (content size in the header, with a checksum)
====  ===========================================================

A value is compressed when it is at least ``threshold`` bytes long and the
frame comes out smaller; ``threshold=None`` never compresses (and still reads
compressed values). ``decompress`` refuses, with
:class:`~buttress.errors.SerializationError`, a frame that would inflate to more
than ``max_size`` bytes (a decompression bomb planted in a shared cache), a
corrupt frame and an unknown flag.
"""

from __future__ import annotations

import threading
from types import ModuleType
from typing import Any, Final

from buttress.errors import SerializationError

__all__ = ["Compression"]

RAW: Final = 0
"""Flag byte of a value stored as it is."""
ZSTD: Final = 1
"""Flag byte of a value stored as one zstd frame."""

_RAW_FLAG: Final = bytes([RAW])
_ZSTD_FLAG: Final = bytes([ZSTD])
_MIN_LEVEL: Final = -(1 << 17)  # zstd's fastest; negative levels trade ratio for speed
_MAX_LEVEL: Final = 22


def _zstd() -> ModuleType:
    # Imported on use: `import buttress.cache` must work without zstandard.
    import zstandard  # noqa: PLC0415

    return zstandard


def _check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        bound = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise ValueError(f"Compression: {name} must be an integer {bound}, got {value!r}")
    return value


class _Codecs(threading.local):
    """This thread's zstd objects: they are not safe to share between threads,
    and building one costs more than compressing a small value."""

    compressor: Any = None
    decompressor: Any = None


class Compression:
    """zstd above ``threshold`` bytes, raw below, behind a one-byte flag.

    ``level`` is zstd's: 1 is fastest, 3 the default, 19 and up are slow;
    negative levels are faster still. ``max_size`` caps what ``decompress``
    will inflate (64 MiB by default). A value longer than ``max_size`` is
    stored raw, so ``compress`` never writes what ``decompress`` refuses.

    Thread-safe: each thread gets zstd objects of its own.
    """

    __slots__ = ("_codecs", "_level", "_max_size", "_threshold")

    def __init__(
        self,
        threshold: int | None = 1024,
        level: int = 3,
        *,
        max_size: int = 64 * 1024 * 1024,
    ) -> None:
        self._threshold = None if threshold is None else _check_int("threshold", threshold, 0)
        self._level = _check_int("level", level, _MIN_LEVEL, _MAX_LEVEL)
        self._max_size = _check_int("max_size", max_size, 1)
        self._codecs = _Codecs()
        if self._threshold is not None:
            _zstd()  # fail now, not on the first large value, if zstandard is missing

    def __repr__(self) -> str:
        return (
            f"Compression(threshold={self._threshold!r}, level={self._level}, "
            f"max_size={self._max_size})"
        )

    @property
    def threshold(self) -> int | None:
        """Smallest value, in bytes, that is compressed; None if nothing is."""
        return self._threshold

    @property
    def level(self) -> int:
        return self._level

    @property
    def max_size(self) -> int:
        """Largest value, in bytes, that ``decompress`` inflates."""
        return self._max_size

    def compress(self, data: bytes) -> bytes:
        """The flag byte and ``data``, compressed if that makes it smaller."""
        threshold = self._threshold
        size = len(data)
        if threshold is None or size < threshold or size > self._max_size:
            return _RAW_FLAG + data
        packed: bytes = self._compressor().compress(data)
        if len(packed) >= size:  # incompressible (already compressed, random): keep it raw
            return _RAW_FLAG + data
        return _ZSTD_FLAG + packed

    def decompress(self, data: bytes) -> bytes:
        """The bytes given to ``compress``; ``SerializationError`` for anything else."""
        if not data:
            raise SerializationError(
                "a stored value is empty", detail="no compression flag byte", format="compression"
            )
        flag = data[0]
        if flag == RAW:
            return bytes(data[1:])
        if flag == ZSTD:
            return self._inflate(memoryview(data)[1:])
        raise SerializationError(
            "a stored value could not be decoded",
            detail=f"unknown compression flag {flag}; expected {RAW} (raw) or {ZSTD} (zstd)",
            format="compression",
        )

    def _compressor(self) -> Any:
        codecs = self._codecs
        compressor = codecs.compressor
        if compressor is None:
            compressor = codecs.compressor = _zstd().ZstdCompressor(
                level=self._level, write_content_size=True, write_checksum=True
            )
        return compressor

    def _inflate(self, frame: memoryview) -> bytes:
        zstd = _zstd()
        codecs = self._codecs
        decompressor = codecs.decompressor
        if decompressor is None:
            decompressor = codecs.decompressor = zstd.ZstdDecompressor()
        limit = self._max_size
        try:
            size = zstd.frame_content_size(frame)
            if size < 0:  # -1: the header does not say
                # Not written by us; zstd stops once the output would pass the limit.
                data: bytes = decompressor.decompress(
                    frame, max_output_size=limit, allow_extra_data=False
                )
                return data
            if size > limit:
                # Checked here because, with the size in the header, zstd
                # allocates all of it up front and ignores max_output_size.
                raise SerializationError(
                    "a stored value is too large to decompress",
                    detail=f"the zstd frame holds {size} bytes; max_size is {limit}",
                    format="compression",
                )
            data = decompressor.decompress(frame, allow_extra_data=False)
        except zstd.ZstdError as exc:
            raise SerializationError(
                "a stored value could not be decompressed",
                detail=f"zstd: {exc} (corrupt, or larger than max_size={limit})",
                format="compression",
            ) from exc
        return data
