"""Wire format v1: round trips (hypothesis) and a reject reason for every bad field."""

from __future__ import annotations

import math
import struct
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ballpass import wire
from ballpass.wire import DType, Kind, Window, WireError, decode, encode

finite32 = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=32)


@st.composite
def windows(draw: st.DrawFn) -> Window:
    channels = draw(st.integers(1, 3))
    n = draw(st.integers(1, 300))
    samples = draw(arrays(np.float32, (channels, n), elements=finite32)).astype(np.float64)
    return Window(
        seq=draw(st.integers(0, 2**64 - 1)),
        t0_ns=draw(st.integers(-(2**63), 2**63 - 1)),
        fs_hz=draw(st.floats(1e-3, 1e7, allow_nan=False)),
        samples=samples,
        kind=draw(st.sampled_from(list(Kind))),
        shaft_hz=draw(st.one_of(st.just(math.nan), st.floats(0, 1e4, width=32))),
        historical=draw(st.booleans()),
        clipped=draw(st.booleans()),
    )


@given(windows())
@settings(max_examples=150)
def test_float32_round_trip_is_exact(w: Window) -> None:
    message = encode(w)
    assert len(message) == wire.HEADER_SIZE + w.n_channels * w.n_samples * 4
    d = decode(message)
    assert (d.seq, d.t0_ns, d.fs_hz, d.kind, d.historical, d.clipped) == (
        w.seq, w.t0_ns, w.fs_hz, w.kind, w.historical, w.clipped)
    np.testing.assert_array_equal(d.samples, w.samples)
    assert math.isnan(d.shaft_hz) if math.isnan(w.shaft_hz) else d.shaft_hz == pytest.approx(
        w.shaft_hz, rel=1e-6)


@given(windows(), st.floats(1e-4, 10.0))
@settings(max_examples=100)
def test_int16_round_trip_within_half_a_count(w: Window, scale: float) -> None:
    clipped = np.clip(w.samples, -32768 * scale, 32767 * scale)
    d = decode(encode(Window(**{**w.__dict__, "samples": clipped}), DType.INT16, scale))
    scale32 = float(np.float32(scale))
    assert np.all(np.abs(d.samples - clipped) <= 0.5 * scale32 + 1e-6 * np.abs(clipped) + 1e-9)


@given(windows())
@settings(max_examples=50)
def test_mark_historical_sets_only_that_flag(w: Window) -> None:
    d = decode(wire.mark_historical(encode(w)))
    assert d.historical and d.clipped == w.clipped and d.seq == w.seq


def test_header_is_48_bytes_with_the_documented_offsets() -> None:
    w = Window(seq=7, t0_ns=1_700_000_000_000_000_000, fs_hz=25600.0,
               samples=np.zeros((2, 3)), shaft_hz=24.5)
    m = encode(w)
    assert m[:2] == b"BP" and m[2] == 1 and m[4] == Kind.ACCELERATION and m[5] == DType.FLOAT32
    assert m[6] == 2 and m[7] == 0
    assert struct.unpack_from("<Q", m, 8)[0] == 7
    assert struct.unpack_from("<q", m, 16)[0] == 1_700_000_000_000_000_000
    assert struct.unpack_from("<d", m, 24)[0] == 25600.0
    assert struct.unpack_from("<I", m, 36)[0] == 3
    assert struct.unpack_from("<f", m, 40)[0] == 24.5
    zeroed = m[:44] + b"\0\0\0\0" + m[48:]
    assert struct.unpack_from("<I", m, 44)[0] == zlib.crc32(zeroed)


def _patch(message: bytes, offset: int, fmt: str, value: object) -> bytes:
    """Change one header field and fix the CRC, so only that field is wrong."""
    out = bytearray(message)
    struct.pack_into(fmt, out, offset, value)
    struct.pack_into("<I", out, 44, 0)
    struct.pack_into("<I", out, 44, zlib.crc32(out))
    return bytes(out)


GOOD = encode(Window(seq=1, t0_ns=0, fs_hz=1000.0, samples=np.ones((1, 8))))


@pytest.mark.parametrize(("message", "reason"), [
    (GOOD[:47], "short"),
    (_patch(GOOD, 0, "2s", b"XX"), "magic"),
    (_patch(GOOD, 2, "B", 2), "version"),
    (_patch(GOOD, 3, "B", 0x80), "flags"),
    (_patch(GOOD, 4, "B", 9), "kind"),
    (_patch(GOOD, 5, "B", 3), "dtype"),
    (_patch(GOOD, 6, "B", 0), "channels"),
    (_patch(GOOD, 6, "B", 4), "channels"),
    (_patch(GOOD, 7, "B", 1), "reserved"),
    (_patch(GOOD, 24, "<d", 0.0), "fs_hz"),
    (_patch(GOOD, 24, "<d", math.inf), "fs_hz"),
    (_patch(GOOD, 24, "<d", math.nan), "fs_hz"),
    (_patch(GOOD, 32, "<f", 2.0), "scale"),
    (_patch(GOOD, 36, "<I", 0), "n_samples"),
    (_patch(GOOD, 36, "<I", wire.MAX_SAMPLES + 1), "n_samples"),
    (_patch(GOOD, 36, "<I", 2**32 - 1), "n_samples"),
    (_patch(GOOD, 36, "<I", 9), "length"),
    (_patch(GOOD, 40, "<f", -1.0), "shaft_hz"),
    (_patch(GOOD + b"\0", 0, "2s", b"BP"), "length"),
    (GOOD[:48] + b"\xff" + GOOD[49:], "crc"),
    (_patch(GOOD[:48] + np.full(8, np.nan, "<f4").tobytes(), 0, "2s", b"BP"), "samples"),
])
def test_every_bad_field_is_rejected_with_its_reason(message: bytes, reason: str) -> None:
    with pytest.raises(WireError) as e:
        decode(message)
    assert e.value.reason == reason
    assert e.value.detail


@given(st.binary(max_size=200))
@settings(max_examples=300)
def test_arbitrary_bytes_never_crash_the_decoder(data: bytes) -> None:
    try:
        decode(data)
    except WireError as e:
        assert e.reason


REASONS = {"short", "magic", "version", "flags", "kind", "dtype", "channels", "reserved",
           "fs_hz", "scale", "n_samples", "shaft_hz", "length", "crc", "samples"}
"""Every reject reason docs/wire-format.md lists."""

SPECIAL_WORDS = [struct.pack("<f", v) for v in (math.nan, -math.nan, math.inf, -math.inf,
                                                -1.0, 0.0, -0.0, 2.0, 1e-45)] + [
    bytes.fromhex("0100807f"),  # a signalling NaN
    struct.pack("<I", 0), struct.pack("<I", 2**32 - 1)]


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    """A valid message (float32 or int16) with a few bytes flipped or set, then maybe cut
    or extended; with its CRC fixed half the time, so the checks past the CRC's (header
    fields, lengths, sample values) are reached, and a mutation can decode."""
    w = draw(windows())
    if draw(st.booleans()):
        scale = float(np.float32(draw(st.floats(1e-4, 10.0))))
        clipped = np.clip(w.samples, -32768 * scale, 32767 * scale)
        out = bytearray(encode(Window(**{**w.__dict__, "samples": clipped}), DType.INT16,
                               scale))
    else:
        out = bytearray(encode(w))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "word"]))
        if op == "word":  # a special value over a 4-byte field or sample
            i = 4 * draw(st.integers(0, len(out) // 4 - 1))
            out[i:i + 4] = draw(st.sampled_from(SPECIAL_WORDS))
            continue
        i = draw(st.integers(0, len(out) - 1))
        if op == "flip":
            out[i] ^= 1 << draw(st.integers(0, 7))
        else:
            out[i] = draw(st.integers(0, 255))
    edit = draw(st.sampled_from(["none", "truncate", "extend"]))
    if edit == "truncate":
        out = out[:draw(st.integers(0, len(out) - 1))]
    elif edit == "extend":
        out += draw(st.binary(min_size=1, max_size=16))
    if len(out) >= wire.HEADER_SIZE and draw(st.booleans()):
        struct.pack_into("<I", out, 44, 0)
        struct.pack_into("<I", out, 44, zlib.crc32(out))
    return bytes(out)


@given(mutated_messages())
@settings(max_examples=500)
def test_a_mutated_message_is_refused_with_a_reason_or_decodes_to_itself(
        message: bytes) -> None:
    """Random bytes nearly all stop at the magic; a damaged valid message reaches every
    later check. What decodes is exactly what re-encoding it gives."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            d = decode(message)
        except WireError as e:
            assert e.reason in REASONS, e.reason
            assert e.detail
            assert not caught, [str(w.message) for w in caught]
            return
    assert not caught, [str(w.message) for w in caught]
    dtype = DType(message[5])
    scale = struct.unpack_from("<f", message, 32)[0]
    expected = message
    if math.isnan(d.shaft_hz):
        # Any NaN means "speed unknown"; encode writes the one Python's float gives back
        # (a signalling NaN comes back quiet).
        expected = _patch(message, 40, "<f", d.shaft_hz)
    assert encode(d, dtype, scale) == expected


def test_a_signalling_nan_sample_is_refused_without_a_warning() -> None:
    """Before: decode cast the float32 samples to float64 first, and numpy warned about the
    signalling NaN (RuntimeWarning, an error under -W error) before WireError("samples")."""
    message = _patch(GOOD[:48] + bytes.fromhex("0100807f") + GOOD[52:], 0, "2s", b"BP")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(WireError) as e:
            decode(message)
    assert e.value.reason == "samples"


@pytest.mark.parametrize("samples", [np.zeros((0, 4)), np.zeros((4, 4)), np.zeros(4)])
def test_encode_refuses_bad_shapes(samples: np.ndarray) -> None:
    with pytest.raises(ValueError, match="samples"):
        encode(Window(seq=0, t0_ns=0, fs_hz=1.0, samples=samples))


def test_encode_refuses_what_decode_would_refuse() -> None:
    """Before: a sample beyond float32 became inf and a negative shaft_hz went out as is;
    the gateway counted the window published and the stream refused it."""
    ok = np.ones((1, 16))
    with pytest.raises(ValueError, match="float32"):
        wire.encode(wire.Window(1, 10**18, 1000.0, ok * 1e39))
    with pytest.raises(ValueError, match="shaft_hz"):
        wire.encode(wire.Window(1, 10**18, 1000.0, ok, shaft_hz=-1.0))
    with pytest.raises(ValueError, match="shaft_hz"):
        wire.encode(wire.Window(1, 10**18, 1000.0, ok, shaft_hz=math.inf))
    assert wire.decode(wire.encode(wire.Window(1, 10**18, 1000.0, ok, shaft_hz=0.0))).shaft_hz == 0


@given(st.integers(0, 2**32 - 1))
def test_n_samples_beyond_the_limit_is_refused_before_anything_is_read(n: int) -> None:
    """Before: only n_samples < 1 was refused; a QoS 1 window of 2^24 int16 samples
    (32 MiB, within mosquitto's packet size) grew the stream by 1.5 GB, past its unit's
    MemoryMax, and came back after every restart."""
    message = _patch(GOOD, 36, "<I", n)
    if n == 8:
        assert decode(message).n_samples == 8
        return
    with pytest.raises(WireError) as e:
        decode(message)
    assert e.value.reason == ("n_samples" if not 1 <= n <= wire.MAX_SAMPLES else "length")


def test_the_longest_window_the_config_takes_is_the_longest_the_wire_takes() -> None:
    from ballpass.config import WINDOW_SAMPLES_MAX
    assert wire.MAX_SAMPLES == WINDOW_SAMPLES_MAX == 2**22
    longest = Window(seq=1, t0_ns=0, fs_hz=1000.0, samples=np.ones((1, wire.MAX_SAMPLES)))
    assert decode(encode(longest, DType.INT16, 0.5)).n_samples == wire.MAX_SAMPLES
    with pytest.raises(ValueError, match="samples"):
        encode(Window(seq=1, t0_ns=0, fs_hz=1000.0,
                      samples=np.ones((1, wire.MAX_SAMPLES + 1))), DType.INT16, 0.5)
    # With all its samples, as the reviewer sent it: refused by its header alone.
    too_long = _patch(encode(longest, DType.INT16, 0.5) + b"\0\0", 36, "<I",
                      wire.MAX_SAMPLES + 1)
    with pytest.raises(WireError) as e:
        decode(too_long)
    assert e.value.reason == "n_samples"


@given(windows(), st.booleans())
def test_declared_samples_is_what_the_header_says(w: Window, int16: bool) -> None:
    message = encode(w, DType.INT16 if int16 else DType.FLOAT32)
    assert wire.declared_samples(message) == w.n_channels * w.n_samples
    assert wire.declared_samples(message[:47]) == 0
    assert wire.declared_samples(b"{\"state\": \"online\"}" + bytes(40)) == 0
    assert wire.declared_samples(None) == 0
