"""The file replay driver: .npz, .wav, .csv, looping, real-time pacing, bad files."""

from __future__ import annotations

import itertools
import tomllib
import wave
from pathlib import Path

import numpy as np
import pytest

from ballpass.config import SensorConfig, parse
from ballpass.gateway.drivers import SensorFault
from ballpass.gateway.drivers import load as load_driver
from ballpass.gateway.drivers.replay import SAMPLE_CONFIG, ReplayDriver

ASSET = parse(tomllib.loads(SAMPLE_CONFIG)).assets[0]


def sensor(path: Path, fs: float = 1000.0, n: int = 100, interval: float = 0.1,
           **options: object) -> SensorConfig:
    return SensorConfig("r1", "replay", "pump3", fs, n, interval,
                        options={"path": str(path), **options})


def test_sample_config_loads() -> None:
    config = parse(tomllib.loads(SAMPLE_CONFIG))
    s = config.gateways[0].sensors[0]
    assert load_driver(s.driver) is ReplayDriver
    ReplayDriver(s, config.asset(s.asset))


def test_npz_loops_continuously_paced_in_real_time(tmp_path: Path) -> None:
    signal = np.arange(250, dtype=np.float64) / 100
    np.savez(tmp_path / "r.npz", signal=signal, fs_hz=1000.0)
    d = ReplayDriver(sensor(tmp_path / "r.npz", scale=2.0), ASSET)
    d.open()
    import time
    t_start = time.monotonic()
    caps = [d.read(100) for _ in range(5)]
    elapsed = time.monotonic() - t_start
    d.close()
    got = np.hstack([c.samples for c in caps])[0]
    np.testing.assert_allclose(got, 2.0 * signal[np.arange(500) % 250])  # wraps at 250
    assert 0.45 < elapsed < 1.0, elapsed  # 5 × 100 samples at 1 kHz: 0.5 s, not instant
    # back-to-back reads: t0 is the previous window's end (an unbroken signal)
    assert [b.t0_ns - a.t0_ns for a, b in itertools.pairwise(caps)] == [100_000_000] * 4


def test_npz_rate_mismatch_and_end_without_loop(tmp_path: Path) -> None:
    np.savez(tmp_path / "r.npz", signal=np.zeros(150), fs_hz=12000.0)
    with pytest.raises(SensorFault, match="sampled at 12000 Hz"):
        ReplayDriver(sensor(tmp_path / "r.npz"), ASSET).open()
    np.savez(tmp_path / "s.npz", accel=np.zeros((150, 2)))  # (n, channels), no rate
    d = ReplayDriver(sensor(tmp_path / "s.npz", loop=False, pace=False), ASSET)
    d.open()
    assert d.read(100).samples.shape == (2, 100)
    with pytest.raises(SensorFault, match="end of recording"):
        d.read(100)


def test_wav_16_bit_stereo(tmp_path: Path) -> None:
    pcm = np.array([[0, 16384], [-32768, 8192], [32767, -16384]] * 40, dtype="<i2")
    with wave.open(str(tmp_path / "r.wav"), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(1000)
        w.writeframes(pcm.tobytes())
    d = ReplayDriver(sensor(tmp_path / "r.wav", pace=False, scale=4.0), ASSET)
    d.open()
    c = d.read(100)
    d.close()
    assert c.samples.shape == (2, 100)
    np.testing.assert_allclose(c.samples[:, :3], [[0, -4.0, 4 * 32767 / 32768],
                                                  [2.0, 1.0, -2.0]])


def test_csv_by_header_names(tmp_path: Path) -> None:
    rows = "\n".join(f"{i / 1000},{i * 0.01},{-i * 0.02}" for i in range(120))
    (tmp_path / "r.csv").write_text("# exported by a DAQ\ntime_s,ax,ay\n" + rows + "\n")
    d = ReplayDriver(sensor(tmp_path / "r.csv", columns=["ay", "ax"], pace=False), ASSET)
    d.open()
    c = d.read(100)
    np.testing.assert_allclose(c.samples[:, 5], [-0.1, 0.05])
    with pytest.raises(SensorFault, match="no column 'az'"):
        ReplayDriver(sensor(tmp_path / "r.csv", columns=["az"]), ASSET).open()


def test_bad_files_are_sensor_faults(tmp_path: Path) -> None:
    with pytest.raises(SensorFault, match="cannot read recording"):
        ReplayDriver(sensor(tmp_path / "missing.npz"), ASSET).open()
    (tmp_path / "bad.csv").write_text("a,b\n1,x\n")
    with pytest.raises(SensorFault, match="not a numeric CSV"):
        ReplayDriver(sensor(tmp_path / "bad.csv"), ASSET).open()
    (tmp_path / "bad.wav").write_bytes(b"RIFF garbage")
    with pytest.raises(SensorFault, match=r"bad\.wav"):
        ReplayDriver(sensor(tmp_path / "bad.wav"), ASSET).open()
    with pytest.raises(ValueError, match=r"options\.path: required"):
        ReplayDriver(SensorConfig("r1", "replay", "pump3", 1000.0, 100, 1.0), ASSET)
    with pytest.raises(ValueError, match="unsupported file type"):
        from ballpass.gateway.drivers.replay import load_recording
        load_recording(str(tmp_path / "x.mat"))


def test_the_end_of_a_non_looping_recording_is_final(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Before: the end-of-recording fault made the schedule re-open the driver, which
    started the recording over: loop = false replayed it again and again."""
    import logging
    import time

    from fakedev import capture
    from plant import wait_until

    from ballpass import wire

    np.savez(tmp_path / "r.npz", signal=np.arange(250, dtype=float), fs_hz=1000.0)
    s = sensor(tmp_path / "r.npz", interval=0.02, loop=False, pace=False)
    box, status, stop, cap = capture(s, ASSET, tmp_path, 0.02, 0.05)
    with caplog.at_level(logging.INFO, "ballpass.gateway.schedule"):
        cap.start()
        try:
            wait_until(lambda: status.sensors()["r1"]["state"] == "fault", 3, "the end",
                       poll_s=0.01)
            time.sleep(0.5)  # ten backoffs' worth: no re-open, no replay
            assert status.sensors()["r1"]["reason"].startswith("finished: end of recording")
            assert box.counters()["captured"] == 2 and cap.faults == 0
            assert caplog.text.count("event=sensor_finished") == 1
            cap.reconfigure(s)  # new settings: the source starts again
            wait_until(lambda: box.counters()["captured"] == 4, 3, "the replay", poll_s=0.01)
        finally:
            stop.set()
            cap.join(5)
    firsts = [wire.decode(m.payload).samples[0, 0] for m in box.peek(10)]
    assert firsts == [0.0, 100.0, 0.0, 100.0]
    box.close()
