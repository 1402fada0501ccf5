"""The IIO accelerometer driver against fake sysfs/dev trees built in tmp_path."""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import threading
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
from fakedev import FifoAttribute, capture
from plant import wait_until

from ballpass import wire
from ballpass.config import SensorConfig, parse
from ballpass.gateway.drivers import SensorFault
from ballpass.gateway.drivers import load as load_driver
from ballpass.gateway.drivers.iio import (
    SAMPLE_CONFIG,
    STANDARD_GRAVITY,
    IioDriver,
    decode_scan,
    parse_scan_type,
)

ASSET = parse(tomllib.loads(SAMPLE_CONFIG)).assets[0]


def fake_iio(root: Path, *, name: str = "adxl355", n: int = 0, fs: float = 3200.0,
             scale: float = 0.0000382, counts: np.ndarray | None = None,
             scan_type: str = "le:s20/32>>0", index: int = 0) -> Path:
    """An `iio:device0` tree like the adxl355 driver's, plus `/dev/iio:device0`.

    `counts`: (3, n) ints written to the device file as scan records (x, y, z at
    indices 0, 1, 2 and a timestamp at 3, disabled by the driver).
    """
    dev = root / "sys/bus/iio/devices" / f"iio:device{index}"
    (dev / "scan_elements").mkdir(parents=True)
    (dev / "buffer").mkdir()
    (dev / "name").write_text(name + "\n")
    (dev / "sampling_frequency").write_text(f"{fs:g}\n")
    (dev / "in_accel_scale").write_text(f"{scale:.9f}\n")
    for i, axis in enumerate("xyz"):
        (dev / f"in_accel_{axis}_raw").write_text(f"{(i + 1) * 1000}\n")
        (dev / "scan_elements" / f"in_accel_{axis}_en").write_text("0\n")
        (dev / "scan_elements" / f"in_accel_{axis}_index").write_text(f"{i}\n")
        (dev / "scan_elements" / f"in_accel_{axis}_type").write_text(scan_type + "\n")
    (dev / "scan_elements" / "in_timestamp_en").write_text("1\n")
    (dev / "scan_elements" / "in_timestamp_index").write_text("3\n")
    (dev / "scan_elements" / "in_timestamp_type").write_text("le:s64/64>>0\n")
    (dev / "buffer" / "enable").write_text("0\n")
    (dev / "buffer" / "length").write_text("0\n")
    (root / "dev").mkdir(exist_ok=True)
    if counts is None:
        counts = np.zeros((3, n), dtype=np.int64)
    storage = np.dtype("<i4") if "/32" in scan_type else np.dtype("<i2")
    (root / "dev" / f"iio:device{index}").write_bytes(
        np.ascontiguousarray(counts.T.astype(storage)).tobytes())
    return dev


def sensor(root: Path, **options: object) -> SensorConfig:
    return SensorConfig("acc1", "iio", "agitator3", 3200.0, 64, 1.0,
                        options={"device": "adxl355", "root": str(root), **options})


def test_sample_config_loads_and_names_the_driver() -> None:
    config = parse(tomllib.loads(SAMPLE_CONFIG))
    s = config.gateways[0].sensors[0]
    assert s.driver == "iio" and load_driver("iio") is IioDriver
    IioDriver(s, config.asset(s.asset))  # options are valid; no I/O in the constructor


def test_scan_types_and_sign_extension() -> None:
    assert parse_scan_type("le:s16/16>>0") == ("<", True, 16, 16, 0)
    assert parse_scan_type("be:s12/16>>4") == (">", True, 12, 16, 4)
    with pytest.raises(SensorFault):
        parse_scan_type("garbage")
    # ADXL345 style: big endian 12 bits in 16 with a shift of 4, value -3 and 5.
    raw = np.array([(-3 << 4) & 0xFFFF, 5 << 4], dtype=">u2").tobytes()
    out = decode_scan(raw, [{"index": 0, "type": parse_scan_type("be:s12/16>>4")}])
    assert out.tolist() == [[-3, 5]]


def test_buffered_capture_in_g_with_timestamp_disabled(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    counts = rng.integers(-(1 << 19), 1 << 19, size=(3, 128))
    dev = fake_iio(tmp_path, counts=counts)
    d = IioDriver(sensor(tmp_path), ASSET)
    d.open()
    try:
        scan = dev / "scan_elements"
        assert [(scan / f"in_accel_{a}_en").read_text() for a in "xyz"] == ["1", "1", "1"]
        assert (scan / "in_timestamp_en").read_text() == "0"
        assert (dev / "buffer/length").read_text() == "128"  # 2 × window by default
        t_before = time.time_ns()
        c1 = d.read(64)
        c2 = d.read(64)
        with pytest.raises(SensorFault, match="end of data"):
            d.read(64)  # the fake device has no more records
    finally:
        d.close()
    assert (dev / "buffer/enable").read_text() == "0"
    expected = counts * 0.0000382 / STANDARD_GRAVITY
    np.testing.assert_allclose(np.hstack([c1.samples, c2.samples]), expected, rtol=1e-6)
    assert c1.samples.shape == (3, 64)
    assert abs(c1.t0_ns - t_before) < 1e9


def test_one_axis_and_16_bit_records(tmp_path: Path) -> None:
    counts = np.arange(3 * 32).reshape(3, 32) - 40
    fake_iio(tmp_path, counts=counts, scan_type="le:s16/16>>0")
    d = IioDriver(sensor(tmp_path, axes=["z"]), ASSET)
    # Only z enabled: but the fake file holds x, y, z records; z alone is 2 bytes a record,
    # so read what the kernel would have written for one channel.
    (tmp_path / "dev/iio:device0").write_bytes(counts[2].astype("<i2").tobytes())
    d.open()
    c = d.read(32)
    d.close()
    np.testing.assert_allclose(c.samples[0], counts[2] * 0.0000382 / STANDARD_GRAVITY,
                               rtol=1e-6)


def test_sysfs_mode_polls_raw_values(tmp_path: Path) -> None:
    fake_iio(tmp_path, scale=0.0098)
    d = IioDriver(sensor(tmp_path, mode="sysfs", axes=["x", "y"]), ASSET)
    d.open()
    c = d.read(16)
    d.close()
    np.testing.assert_allclose(c.samples[:, 0], [1000 * 0.0098 / STANDARD_GRAVITY,
                                                 2000 * 0.0098 / STANDARD_GRAVITY])
    assert c.samples.shape == (2, 16)


def test_frequency_is_set_or_refused(tmp_path: Path) -> None:
    dev = fake_iio(tmp_path, fs=1000.0)
    d = IioDriver(sensor(tmp_path), ASSET)
    d.open()
    d.close()
    assert float((dev / "sampling_frequency").read_text()) == 3200.0
    (dev / "sampling_frequency").write_text("1000\n")
    d = IioDriver(sensor(tmp_path, set_frequency=False), ASSET)
    with pytest.raises(SensorFault, match="sampling_frequency is 1000 Hz"):
        d.open()


def test_missing_device_and_bad_options(tmp_path: Path) -> None:
    fake_iio(tmp_path)
    with pytest.raises(SensorFault, match="no IIO device 'iis3dwb'"):
        IioDriver(sensor(tmp_path, device="iis3dwb"), ASSET).open()
    with pytest.raises(ValueError, match="did you mean 'axes'"):
        IioDriver(sensor(tmp_path, axis=["x"]), ASSET)
    with pytest.raises(ValueError, match=r"options\.axes"):
        IioDriver(sensor(tmp_path, axes=["w"]), ASSET)
    (tmp_path / "sys/bus/iio/devices/iio:device0/in_accel_scale").write_text("zz\n")
    with pytest.raises(SensorFault, match="not a number"):
        IioDriver(sensor(tmp_path), ASSET).open()


def test_unplugged_device_is_a_fault_then_recovers(tmp_path: Path) -> None:
    """The capture schedule with this driver: the device dir vanishes mid-run (unplugged),
    the sensor goes to fault with a reason, capture keeps retrying, and resumes once the
    device is back."""
    root = tmp_path / "root"
    fake_iio(root, n=0)
    s = SensorConfig("acc1", "iio", "agitator3", 3200.0, 64, 0.05,
                     options={"device": "adxl355", "root": str(root), "mode": "sysfs",
                              "axes": ["x"]})
    box, status, stop, cap = capture(s, ASSET, tmp_path, 0.05, 0.2)
    cap.start()
    try:
        wait_until(lambda: box.counters()["captured"] >= 2, 5, "captures", poll_s=0.01)
        saved = tmp_path / "saved"
        shutil.move(str(root / "sys/bus/iio/devices/iio:device0"), saved)
        wait_until(lambda: status.sensors()["acc1"]["state"] == "fault", 5, "the fault",
                   poll_s=0.01)
        reason = status.message()["sensors"]["acc1"]["reason"]
        assert "adxl355" in reason or "iio:device0" in reason, reason
        n_fault = box.counters()["captured"]
        time.sleep(0.3)
        assert cap.alive and box.counters()["captured"] == n_fault
        shutil.move(str(saved), root / "sys/bus/iio/devices/iio:device0")
        wait_until(lambda: box.counters()["captured"] >= n_fault + 2, 5, "recovery", poll_s=0.01)
        assert status.sensors()["acc1"] == {"state": "ok", "reason": ""}
    finally:
        stop.set()
        cap.join(5)
    w = wire.decode(box.peek(1)[0].payload)
    assert w.samples.shape == (1, 64) and w.kind == wire.Kind.ACCELERATION
    box.close()


# --- fake devices that behave like hardware: FIFOs -----------------------------------------


def fifo_device(root: Path) -> int:
    """Make `/dev/iio:device0` a FIFO; returns the producer's fd (open, sending nothing)."""
    dev = root / "dev/iio:device0"
    dev.unlink()
    os.mkfifo(dev)
    return os.open(dev, os.O_RDWR)


def records(n: int, first: int = 0) -> bytes:
    """n scan records of the fake adxl355 (x, y, z as le:s20/32), x counting from `first`."""
    counts = np.zeros((3, n), dtype=np.int64)
    counts[0] = np.arange(first, first + n)
    return np.ascontiguousarray(counts.T.astype("<i4")).tobytes()


def test_a_device_that_stops_delivering_is_a_fault_not_a_hung_thread(tmp_path: Path) -> None:
    """Before: os.read blocked for ever (stuck data-ready IRQ), status stayed "ok" and
    stop could not get through. Now: "no data" after 2 × 20 ms + 1 s, retried."""
    root = tmp_path / "root"
    fake_iio(root)
    producer = fifo_device(root)
    os.write(producer, records(64 * 2))  # two windows, then the interrupt stops
    s = SensorConfig("acc1", "iio", "agitator3", 3200.0, 64, 0.05,
                     options={"device": "adxl355", "root": str(root)})
    box, status, stop, cap = capture(s, ASSET, tmp_path, 0.05, 0.1)
    cap.start()
    try:
        wait_until(lambda: status.sensors()["acc1"]["state"] == "fault", 3, "the fault",
                   poll_s=0.01)
        assert "no data for" in status.sensors()["acc1"]["reason"]
        assert box.counters()["captured"] == 2
    finally:
        stop.set()
        t = time.monotonic()
        cap.join(3)
        os.close(producer)
    assert not cap.alive and time.monotonic() - t < 2.5
    box.close()


def kernel_like(root: Path, index: int, bus: str, label: str | None) -> Path:
    """Move the fake iio:deviceN below a bus device and link it from /sys/bus, as sysfs
    does; give it a `label` (the device tree's label property)."""
    bus_dir = root / "sys/devices/platform/soc/fe204000.spi/spi_master/spi0" / bus
    bus_dir.mkdir(parents=True, exist_ok=True)
    link = root / "sys/bus/iio/devices" / f"iio:device{index}"
    real = bus_dir / link.name
    shutil.move(str(link), real)
    link.symlink_to(real)
    if label is not None:
        (real / "label").write_text(label + "\n")
    return real


def test_two_devices_of_one_name_are_told_apart_never_the_first_taken(tmp_path: Path) -> None:
    """Before: both sensors bound to iio:device0; the second published the first's data."""
    fake_iio(tmp_path, index=0, counts=np.full((3, 64), 7))
    fake_iio(tmp_path, index=1, counts=np.full((3, 64), 9))
    kernel_like(tmp_path, 0, "spi0.0", "drive-end")
    kernel_like(tmp_path, 1, "spi0.1", "non-drive-end")
    with pytest.raises(SensorFault, match="2 IIO devices match 'adxl355'") as e:
        IioDriver(sensor(tmp_path), ASSET).open()
    assert "iio:device0 (label 'drive-end', bus spi0.0)" in str(e.value)
    assert "iio:device1 (label 'non-drive-end', bus spi0.1)" in str(e.value)
    for options, path, value in (({"label": "non-drive-end"}, "iio:device1", 9),
                                 ({"bus_id": "spi0.0"}, "iio:device0", 7),
                                 ({"label": "drive-end", "bus_id": "spi0.0"}, "iio:device0", 7)):
        d = IioDriver(sensor(tmp_path, **options), ASSET)
        d.open()
        try:
            assert d.path is not None and d.path.endswith(path)
            c = d.read(64)
        finally:
            d.close()
        np.testing.assert_allclose(c.samples, value * 0.0000382 / STANDARD_GRAVITY)
    with pytest.raises(SensorFault, match=r"with label 'nde'.*found: iio:device0"):
        IioDriver(sensor(tmp_path, label="nde"), ASSET).open()
    with pytest.raises(ValueError, match=r"options\.bus_id"):
        IioDriver(sensor(tmp_path, bus_id="a/b"), ASSET)
    # the sample config's second sensor uses these selectors and is valid
    config = parse(tomllib.loads(SAMPLE_CONFIG))
    nde = config.gateways[0].sensors[1]
    assert nde.options["label"] == "non-drive-end" and nde.options["bus_id"] == "spi0.1"


def test_a_sysfs_poll_that_cannot_keep_up_is_a_fault_naming_the_rate(tmp_path: Path) -> None:
    """Before: 20 samples labelled 500 Hz took 4 ms each (a slow I2C register read) and
    were published as 500 Hz: every spectral line off by the ratio."""
    dev = fake_iio(tmp_path, fs=500.0)
    raw = FifoAttribute(dev / "in_accel_x_raw", "1000", delay_s=0.004)
    s = SensorConfig("acc1", "iio", "agitator3", 500.0, 20, 10.0,
                     options={"device": "adxl355", "root": str(tmp_path), "mode": "sysfs",
                              "axes": ["x"]})
    d = IioDriver(s, ASSET)
    d.open()
    try:
        with pytest.raises(SensorFault, match=r"cannot keep up with fs_hz 500 Hz.*about "
                                              r"(1\d\d|2[0-4]\d) Hz"):
            d.read(20)
    finally:
        d.close()
        raw.close()


def test_continuous_t0s_chain_through_a_backlog_and_reanchor_after_a_gap(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Before: three windows read at once from the kernel's backlog got t0s 0.3 ms apart
    instead of a window (20 ms) apart."""
    fake_iio(tmp_path)
    producer = fifo_device(tmp_path)
    os.write(producer, records(64 * 3))  # the gateway was stalled: 3 windows waiting
    s = SensorConfig("acc1", "iio", "agitator3", 3200.0, 64, 0.02,  # continuous
                     options={"device": "adxl355", "root": str(tmp_path),
                              "buffer_length": 256})
    d = IioDriver(s, ASSET)
    d.open()
    try:
        assert d.continuous
        caps = [d.read(64) for _ in range(3)]
        assert [b.t0_ns - a.t0_ns for a, b in itertools.pairwise(caps)] == [20_000_000] * 2
        assert caps[2].samples[0, 0] == 128 * 0.0000382 / STANDARD_GRAVITY
        # the device stalls 0.3 s: samples the chain cannot account for; re-anchored
        timer = threading.Timer(0.3, os.write, (producer, records(64)))
        timer.start()
        with caplog.at_level(logging.WARNING, "ballpass.gateway.drivers.iio"):
            late = d.read(64)
        timer.join()
    finally:
        d.close()
        os.close(producer)
    assert 250e6 < late.t0_ns - caps[2].t0_ns < 1.5e9
    assert "event=iio_timebase_reanchored" in caplog.text


@pytest.mark.parametrize("rate_error", [0.01, -0.01])
def test_continuous_t0s_follow_the_clock_for_a_device_whose_rate_is_1_percent_off(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, rate_error: float) -> None:
    """Before: fresh windows were chained by the nominal n / fs too, so a device 1 % fast
    (or slow) made t0 drift off the clock by 1 % of every window, a sawtooth re-anchored
    with `event=iio_timebase_reanchored` every few windows."""
    fake_iio(tmp_path)
    producer = fifo_device(tmp_path)
    fs, n = 3200.0, 800  # 0.25 s windows
    real = fs * (1 + rate_error)
    s = SensorConfig("acc1", "iio", "agitator3", fs, n, n / fs,  # continuous
                     options={"device": "adxl355", "root": str(tmp_path),
                              "buffer_length": 4 * n})
    d = IioDriver(s, ASSET)
    d.open()
    stop = threading.Event()
    start_ns = time.time_ns()
    start = time.monotonic()

    def feed() -> None:  # the device's own clock: sample k at start + k / real
        sent = 0
        while not stop.is_set():
            due = int((time.monotonic() - start) * real)
            if due > sent:
                os.write(producer, records(due - sent, sent))
                sent = due
            time.sleep(0.001)

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    try:
        with caplog.at_level(logging.WARNING, "ballpass.gateway.drivers.iio"):
            caps = [d.read(n) for _ in range(10)]
    finally:
        stop.set()
        thread.join(5)
        d.close()
        os.close(producer)
    assert "iio_timebase_reanchored" not in caplog.text
    for i, c in enumerate(caps):
        assert c.samples[0, 0] == pytest.approx(i * n * 0.0000382 / STANDARD_GRAVITY)  # none lost
        # when the window's first sample really was taken (the chain was off 2.5 ms more
        # each window: 25 ms by the last)
        true_t0 = start_ns + round(i * n / real * 1e9)
        assert abs(c.t0_ns - true_t0) < 10e6, (i, (c.t0_ns - true_t0) / 1e6)


def test_a_buffer_left_enabled_does_not_block_the_frequency_change(tmp_path: Path) -> None:
    """Before: sampling_frequency was written while a buffer left on by a killed gateway
    was still enabled; st_lsm6dsx-like drivers refuse that (EBUSY) at every re-open."""
    dev = fake_iio(tmp_path, n=64, fs=1600.0)
    enable = dev / "buffer/enable"
    enable.write_text("1\n")
    freq = FifoAttribute(dev / "sampling_frequency", "1600", enable=enable, writes=True)
    d = IioDriver(sensor(tmp_path), ASSET)
    try:
        d.open()
        assert freq.value == "3200" and freq.refused == []
        assert d.read(64).samples.shape == (3, 64)
    finally:
        d.close()
        freq.close()
