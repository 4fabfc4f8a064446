"""Compression: zstd above a threshold, raw below, a flag byte, and a cap on inflation."""

from __future__ import annotations

import contextlib
import os
import threading

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from buttress.cache._compression import RAW, ZSTD, Compression
from buttress.errors import SerializationError

TEXT = b"the quick brown fox jumps over the lazy dog. " * 100  # compresses well


def test_data_below_the_threshold_is_stored_raw() -> None:
    compression = Compression(threshold=1024)
    data = TEXT[:1023]
    stored = compression.compress(data)
    assert bytes([RAW]) + data == stored
    assert data == compression.decompress(stored)


def test_data_at_or_above_the_threshold_is_compressed_and_smaller() -> None:
    compression = Compression(threshold=1024)
    for data in (TEXT[:1024], TEXT):
        stored = compression.compress(data)
        assert ZSTD == stored[0]
        assert len(stored) < len(data)
        assert data == zstandard.ZstdDecompressor().decompress(stored[1:])
        assert data == compression.decompress(stored)


def test_incompressible_data_stays_raw() -> None:
    data = os.urandom(4096)
    stored = Compression(threshold=16).compress(data)
    assert bytes([RAW]) + data == stored


def test_threshold_none_never_compresses_but_still_reads_compressed_values() -> None:
    off = Compression(threshold=None)
    assert bytes([RAW]) + TEXT == off.compress(TEXT)
    assert TEXT == off.decompress(Compression(threshold=1).compress(TEXT))


def test_any_settings_read_what_any_settings_wrote() -> None:
    writers = [Compression(threshold=t, level=lv) for t in (None, 0, 100) for lv in (-5, 1, 19)]
    reader = Compression(threshold=None, level=1)
    for writer in writers:
        for data in (b"", b"x", TEXT, os.urandom(300)):
            assert data == reader.decompress(writer.compress(data))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000), st.sampled_from([None, 0, 1, 64, 1024]))
def test_decompress_inverts_compress(data: bytes, threshold: int | None) -> None:
    compression = Compression(threshold=threshold)
    assert data == compression.decompress(compression.compress(data))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_decompress_of_any_bytes_returns_or_raises_serialization_error(data: bytes) -> None:
    with contextlib.suppress(SerializationError):
        Compression().decompress(data)


def test_a_frame_declaring_more_than_max_size_is_refused() -> None:
    compression = Compression(threshold=1, max_size=4096)
    bomb = bytes([ZSTD]) + zstandard.ZstdCompressor().compress(bytes(4097))
    with pytest.raises(SerializationError, match="too large") as caught:
        compression.decompress(bomb)
    assert caught.value.detail is not None
    assert "4097" in caught.value.detail
    exact = bytes([ZSTD]) + zstandard.ZstdCompressor().compress(bytes(4096))
    assert bytes(4096) == compression.decompress(exact)


def test_a_frame_without_its_size_is_capped_while_it_inflates() -> None:
    compression = Compression(threshold=1, max_size=4096)
    unsized = zstandard.ZstdCompressor(write_content_size=False)
    bomb = bytes([ZSTD]) + unsized.compress(bytes(1 << 20))
    with pytest.raises(SerializationError, match="could not be decompressed"):
        compression.decompress(bomb)
    small = bytes([ZSTD]) + unsized.compress(TEXT[:4000])
    assert TEXT[:4000] == compression.decompress(small)


def test_the_default_cap_stops_a_large_bomb() -> None:
    compression = Compression()
    assert 64 * 1024 * 1024 == compression.max_size
    bomb = bytes([ZSTD]) + zstandard.ZstdCompressor().compress(bytes(compression.max_size + 1))
    assert len(bomb) < 10_000
    with pytest.raises(SerializationError, match="too large"):
        compression.decompress(bomb)


def test_data_larger_than_max_size_is_stored_raw_so_it_stays_readable() -> None:
    compression = Compression(threshold=1, max_size=1000)
    data = TEXT[:2000]
    stored = compression.compress(data)
    assert RAW == stored[0]
    assert data == compression.decompress(stored)


@pytest.mark.parametrize("flag", [2, 7, 255])
def test_an_unknown_flag_is_a_serialization_error(flag: int) -> None:
    with pytest.raises(SerializationError, match="could not be decoded") as caught:
        Compression().decompress(bytes([flag]) + TEXT)
    assert caught.value.detail is not None
    assert str(flag) in caught.value.detail


def test_an_empty_value_is_a_serialization_error() -> None:
    with pytest.raises(SerializationError, match="empty"):
        Compression().decompress(b"")


def test_a_corrupt_frame_is_a_serialization_error() -> None:
    compression = Compression(threshold=1)
    stored = compression.compress(TEXT)
    assert ZSTD == stored[0]
    refused = 0
    for i in range(1, len(stored)):  # every byte of the frame, the checksum included
        for bit in range(8):
            corrupt = bytearray(stored)
            corrupt[i] ^= 1 << bit
            try:
                # A few header bits are unused: flipping one changes nothing.
                assert TEXT == compression.decompress(bytes(corrupt)), (i, bit)
            except SerializationError:
                refused += 1
    assert refused >= 8 * (len(stored) - 1) - 4  # wrong data never comes back
    for broken in (stored[:-1], stored + b"\x00", bytes([ZSTD]), bytes([ZSTD]) + b"garbage"):
        with pytest.raises(SerializationError):
            compression.decompress(broken)


def test_each_thread_gets_its_own_zstd_objects() -> None:
    compression = Compression(threshold=1)
    barrier = threading.Barrier(8)
    seen: list[tuple[object, object]] = []
    failures: list[BaseException] = []

    def work(n: int) -> None:
        try:
            barrier.wait()
            for i in range(200):
                data = TEXT[: 200 + n * 100 + i]
                assert data == compression.decompress(compression.compress(data))
            codecs = compression._codecs
            seen.append((codecs.compressor, codecs.decompressor))  # kept alive: ids stay unique
        except BaseException as exc:  # reported below, on the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [] == failures
    assert 8 == len({id(c) for c, _ in seen}) == len({id(d) for _, d in seen})
    assert all(c is not None and d is not None for c, d in seen)


@pytest.mark.parametrize(
    "options",
    [
        {"threshold": -1},
        {"threshold": 1.5},
        {"threshold": True},
        {"level": 23},
        {"level": -(1 << 17) - 1},
        {"level": "3"},
        {"max_size": 0},
        {"max_size": None},
    ],
)
def test_options_are_checked(options: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="Compression: "):
        Compression(**options)  # type: ignore[arg-type]


def test_settings_are_readable() -> None:
    compression = Compression(threshold=None, level=7, max_size=10)
    assert (None, 7, 10) == (compression.threshold, compression.level, compression.max_size)
    assert "Compression(threshold=None, level=7, max_size=10)" == repr(compression)
