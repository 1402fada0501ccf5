"""The DS18B20 1-Wire driver against a fake /sys/bus/w1 tree built in tmp_path."""

from __future__ import annotations

import builtins
import dataclasses
import re
import shutil
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from fakedev import FifoAttribute, capture
from plant import wait_until

from ballpass import wire
from ballpass.config import ConfigError, SensorConfig, parse
from ballpass.gateway.drivers import SensorFault, ds18b20
from ballpass.gateway.drivers import load as load_driver
from ballpass.gateway.drivers.ds18b20 import (
    MAX_FS_HZ,
    SAMPLE_CONFIG,
    Ds18b20Driver,
    crc8,
    parse_w1_slave,
)

ASSET = parse(tomllib.loads(SAMPLE_CONFIG)).assets[0]


def w1_text(celsius: float, *, crc_ok: bool = True) -> str:
    """What w1-therm writes: the scratchpad (raw in 1/16 °C, CRC last), twice."""
    raw = round(celsius * 16) & 0xFFFF
    # Byte 6 after a conversion is 0x10 minus the fraction's 1/16ths (0x0C at power-on).
    return w1_pad(bytes([raw & 0xFF, raw >> 8, 0x4B, 0x46, 0x7F, 0xFF, 0x10 - (raw & 0x0F),
                         0x10]), round(celsius * 1000), crc_ok=crc_ok)


def w1_pad(pad: bytes, milli_c: int, *, crc_ok: bool = True) -> str:
    """`w1_slave` for an 8-byte scratchpad (its CRC appended) and `t=`."""
    pad += bytes([crc8(pad)])
    hexes = " ".join(f"{b:02x}" for b in pad) + " "
    verdict = "YES" if crc_ok else "NO"
    return f"{hexes}: crc={pad[-1]:02x} {verdict}\n{hexes}t={milli_c}\n"


def fake_w1(root: Path, device: str = "28-0316a2793aff", celsius: float = 23.125) -> Path:
    d = root / "sys/bus/w1/devices" / device
    d.mkdir(parents=True)
    (d / "w1_slave").write_text(w1_text(celsius))
    return d


def sensor(root: Path, **options: object) -> SensorConfig:
    # 1.25 Hz: the most a DS18B20 can do (a 750 ms conversion plus bus time per reading)
    return SensorConfig("t1", "ds18b20", "agitator3", 1.25, 16, 20.0, kind="temperature",
                        options={"root": str(root), **options})


def test_sample_config_loads() -> None:
    config = parse(tomllib.loads(SAMPLE_CONFIG))
    s = config.gateways[0].sensors[0]
    assert load_driver(s.driver) is Ds18b20Driver
    Ds18b20Driver(s, config.asset(s.asset))


def test_reads_celsius_from_the_only_device(tmp_path: Path) -> None:
    fake_w1(tmp_path, celsius=-10.5)
    d = Ds18b20Driver(sensor(tmp_path), ASSET)
    d.open()
    t0 = time.monotonic()
    c = d.read(2)
    elapsed = time.monotonic() - t0
    d.close()
    assert c.samples.shape == (1, 2) and (c.samples == -10.5).all()
    assert 0.78 < elapsed < 1.5  # 2 readings paced at 1.25 Hz


def test_crc_no_garbage_and_range_are_faults(tmp_path: Path) -> None:
    dev = fake_w1(tmp_path)
    d = Ds18b20Driver(sensor(tmp_path, device="28-0316a2793aff"), ASSET)
    d.open()
    (dev / "w1_slave").write_text(w1_text(25.0, crc_ok=False))
    with pytest.raises(SensorFault, match="CRC check failed"):
        d.read(16)
    (dev / "w1_slave").write_text("\x00\xff garbage\n")
    with pytest.raises(SensorFault, match=r"expected 2 lines|unreadable"):
        d.read(16)
    text = w1_text(25.0)
    (dev / "w1_slave").write_text(text.replace(text[:2], "00", 2))  # corrupt byte, kernel YES
    with pytest.raises(SensorFault, match="scratchpad CRC mismatch"):
        d.read(16)
    (dev / "w1_slave").write_text(w1_text(25.0).replace("t=25000", "t=150000"))
    with pytest.raises(SensorFault, match="outside the DS18B20 range"):
        d.read(16)
    assert parse_w1_slave(w1_text(85.0)) == 85.0


def test_a_dead_or_reset_thermometer_and_a_t_off_its_scratchpad_are_faults(
        tmp_path: Path) -> None:
    """Before: each read as a valid temperature (the CRC of nine zero bytes is 0 too)."""
    dev = fake_w1(tmp_path)
    d = Ds18b20Driver(sensor(tmp_path), ASSET)
    d.open()
    for text, fault in (
            # lost power / dropped off the bus: what w1-therm then prints
            ("00 00 00 00 00 00 00 00 00 : crc=00 YES\n00 00 00 00 00 00 00 00 00 t=0\n",
             "all-zero scratchpad"),
            # the power-on reset scratchpad: no conversion ran
            (w1_pad(bytes.fromhex("5005 4b46 7fff 0c10"), 85000), "85 °C power-on value"),
            # t= is not the scratchpad's 25.0625 °C (0x0191)
            (w1_pad(bytes.fromhex("9101 4b46 7fff 0f10"), 99000),
             "t=99000 disagrees with the scratchpad")):
        (dev / "w1_slave").write_text(text)
        with pytest.raises(SensorFault, match=fault):
            d.read(16)
    # w1-therm truncates: 0x0191 is 25062.5 m°C, printed t=25062; negative values too
    assert parse_w1_slave(w1_pad(bytes.fromhex("9101 4b46 7fff 0f10"), 25062)) == 25.062
    assert parse_w1_slave(w1_pad(bytes.fromhex("5fff 4b46 7fff 0f10"), -10062)) == -10.062
    # a GX20MH01 clone (config bit 7): two more bits from byte 4, in 1/64 °C
    assert parse_w1_slave(w1_pad(bytes.fromhex("9101 4b46 81ff 0f10"), 25078)) == 25.078


def test_missing_device_and_config_errors(tmp_path: Path) -> None:
    with pytest.raises(SensorFault, match="no 1-Wire device '28-00000000'"):
        Ds18b20Driver(sensor(tmp_path, device="28-00000000"), ASSET).open()
    fake_w1(tmp_path, "28-aaaa")
    fake_w1(tmp_path, "28-bbbb")
    with pytest.raises(SensorFault, match="2 DS18B20 devices"):
        Ds18b20Driver(sensor(tmp_path), ASSET).open()
    accel = SensorConfig("t1", "ds18b20", "agitator3", 1.0, 16, 20.0)
    with pytest.raises(ValueError, match="measures temperature"):
        Ds18b20Driver(accel, ASSET)


def test_unplugged_thermometer_is_a_fault_then_recovers(tmp_path: Path) -> None:
    root = tmp_path / "root"
    dev = fake_w1(root)
    s = SensorConfig("t1", "ds18b20", "agitator3", 1.25, 1, 0.05, kind="temperature",
                     options={"root": str(root), "device": dev.name})
    box, status, stop, cap = capture(s, ASSET, tmp_path, 0.05, 0.2)
    cap.start()
    try:
        wait_until(lambda: box.counters()["captured"] >= 2, 5, "captures", poll_s=0.01)
        shutil.move(str(dev), tmp_path / "away")
        wait_until(lambda: status.sensors()["t1"]["state"] == "fault", 5, "the fault",
                   poll_s=0.01)
        assert dev.name in status.message()["sensors"]["t1"]["reason"]
        n = box.counters()["captured"]
        shutil.move(str(tmp_path / "away"), dev)
        wait_until(lambda: box.counters()["captured"] >= n + 2, 5, "recovery", poll_s=0.01)
        assert status.sensors()["t1"]["state"] == "ok"
    finally:
        stop.set()
        cap.join(5)
    w = wire.decode(box.peek(1)[0].payload)
    assert w.kind == wire.Kind.TEMPERATURE and w.samples[0, 0] == 23.125
    box.close()


def test_a_rate_above_one_reading_per_800_ms_is_a_config_error() -> None:
    """Before: fs_hz = 2 was accepted; readings came 0.75 s apart, labelled 0.5 s. Then
    1.333 (one 750 ms conversion) was, but the bus time on top made every read too slow."""
    for fs in ("2", "1.333", "1.26"):
        too_fast = SAMPLE_CONFIG.replace("fs_hz = 1 ", f"fs_hz = {fs} ")
        assert too_fast != SAMPLE_CONFIG
        with pytest.raises(ConfigError, match=r"gateway\[0\]\.sensor\[0\]\.fs_hz: .*0\.8 s.*"
                                              rf"at most 1\.25 Hz; got {re.escape(fs)}"):
            parse(tomllib.loads(too_fast))
    parse(tomllib.loads(SAMPLE_CONFIG.replace("fs_hz = 1 ", "fs_hz = 1.25 ")))


def test_the_highest_accepted_rate_keeps_up_with_a_conversion_plus_bus_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: fs_hz 1.333 passed config, but a read of 750 ms conversion plus ~20 ms of
    1-Wire traffic could never keep up: every window was a pacing fault."""
    fake_w1(tmp_path)
    real_open = builtins.open

    def slow_open(path: str, *args: Any, **kwargs: Any) -> Any:
        if str(path).endswith("w1_slave"):
            time.sleep(0.77)  # 750 ms conversion + ~20 ms of bus traffic
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(ds18b20, "open", slow_open, raising=False)
    d = Ds18b20Driver(dataclasses.replace(sensor(tmp_path), fs_hz=MAX_FS_HZ), ASSET)
    d.open()
    c = d.read(3)
    assert c.samples.shape == (1, 3) and (c.samples == 23.125).all()
    assert MAX_FS_HZ == 1.25


def test_readings_that_fall_behind_fs_hz_are_a_fault_naming_the_rate(tmp_path: Path) -> None:
    """Before: a bus slower than the sample period stretched the window silently."""
    dev = fake_w1(tmp_path)
    # the first conversion takes 0.9 s, more than the 0.8 s period
    slow = FifoAttribute(dev / "w1_slave", w1_text(21.5).rstrip("\n"), delay_s=0.9)
    d = Ds18b20Driver(sensor(tmp_path), ASSET)
    d.open()
    try:
        with pytest.raises(SensorFault, match=r"cannot keep up with fs_hz 1\.25 Hz.*about "
                                              r"(0\.|1\.[01])\d* Hz"):
            d.read(2)
    finally:
        slow.close()
