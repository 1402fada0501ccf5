"""`ballpass evaluate` inputs: damaged files, `scale`, CSV/WAV readers, output paths.

Each case is a small recording written here; none needs the data folder."""

from __future__ import annotations

import io
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from ballpass.config import ConfigError
from ballpass.models.catalog import lookup as lookup_bearing
from ballpass.simulators.signals import synthesize
from ballpass.stream import evaluate
from ballpass.stream.recordings import load_spec, read_signal

FS_HZ = 12000.0
SHAFT_HZ = 29.95
G = 9.80665


def ballpass(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ballpass", *args], capture_output=True,
                          text=True, timeout=120)


def spec(tmp: Path, path: str, extra: str, label: str = "normal") -> Path:
    s = tmp / "s.toml"
    s.write_text(f'[[recording]]\npath = "{path}"\nfs_hz = {FS_HZ}\nshaft_hz = {SHAFT_HZ}\n'
                 f'label = "{label}"\nbearing = "SKF 6205"\n{extra}\n', encoding="utf-8")
    return s


def normal_g(seconds: float = 2.0) -> np.ndarray:
    """A simulated healthy SKF 6205 at the CWRU rig's speed, g."""
    return synthesize("normal", lookup_bearing("SKF 6205").orders(), SHAFT_HZ, FS_HZ,
                      int(seconds * FS_HZ), rng=np.random.default_rng(5))


# --- damaged files (bug 2) ----------------------------------------------------------------


def test_npz_with_bad_crc_is_a_config_error_naming_the_path(tmp_path: Path) -> None:
    p = tmp_path / "r.npz"
    np.savez(p, signal=np.random.default_rng(0).normal(size=40000))  # stored: data in clear
    b = bytearray(p.read_bytes())
    for i in range(2000, 2040):
        b[i] ^= 0xFF  # inside the member's data: the listing reads, the data fails its CRC
    p.write_bytes(bytes(b))
    (rec,) = load_spec(spec(tmp_path, "r.npz", 'key = "signal"'))
    with pytest.raises(ConfigError, match=r"recording\[0\]\.path: cannot read r\.npz: "
                       r"BadZipFile: Bad CRC"):
        read_signal(rec)
    r = ballpass("evaluate", str(tmp_path / "s.toml"))
    assert r.returncode == 2 and "recording[0].path: cannot read r.npz" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_truncated_mat_is_a_config_error_naming_the_path(tmp_path: Path) -> None:
    p = tmp_path / "t.mat"
    scipy.io.savemat(p, {"X": np.random.default_rng(1).normal(size=40000)})
    p.write_bytes(p.read_bytes()[:200000])  # the header lists X; its data is cut short
    (rec,) = load_spec(spec(tmp_path, "t.mat", 'key = "X"'))
    with pytest.raises(ConfigError, match=r"recording\[0\]\.path: cannot read t\.mat"):
        read_signal(rec)


# --- scale (bug 3) ------------------------------------------------------------------------


def test_scale_converts_m_s2_to_g_and_the_diagnosis_matches(tmp_path: Path) -> None:
    x = normal_g()
    np.savez(tmp_path / "g.npz", signal=x)
    np.savez(tmp_path / "ms2.npz", signal=x * G)
    (in_g,) = load_spec(spec(tmp_path, "g.npz", 'key = "signal"'))
    (in_ms2,) = load_spec(spec(tmp_path, "ms2.npz", f'key = "signal"\nscale = {1 / G!r}'))
    assert in_ms2.scale == pytest.approx(1 / G)
    np.testing.assert_allclose(read_signal(in_ms2), read_signal(in_g), rtol=1e-12)
    assert evaluate.evaluate_record(in_ms2).predicted == \
        evaluate.evaluate_record(in_g).predicted == "normal"


@pytest.mark.parametrize("value", ["0", "-1.0", "inf", "nan"])
def test_scale_must_be_finite_and_positive(tmp_path: Path, value: str) -> None:
    np.savez(tmp_path / "g.npz", signal=np.zeros(100))
    with pytest.raises(ConfigError, match=r"recording\[0\]\.scale: must be a finite number"):
        load_spec(spec(tmp_path, "g.npz", f'key = "signal"\nscale = {value}'))


def test_integer_samples_need_a_scale(tmp_path: Path) -> None:
    counts = np.round(normal_g() * 3000).astype(np.int16)
    np.savez(tmp_path / "c.npz", signal=counts)
    (rec,) = load_spec(spec(tmp_path, "c.npz", 'key = "signal"'))
    with pytest.raises(ConfigError, match=r"recording\[0\]\.scale: is required for integer"):
        read_signal(rec)
    (rec,) = load_spec(spec(tmp_path, "c.npz", 'key = "signal"\nscale = 3.3333333e-4'))
    np.testing.assert_allclose(read_signal(rec), counts * 3.3333333e-4)


# --- formats (bug 8) ----------------------------------------------------------------------


def test_unsupported_suffix_names_the_supported_formats(tmp_path: Path) -> None:
    (tmp_path / "r.bin").write_bytes(b"\x00\x01" * 100)
    with pytest.raises(ConfigError) as e:
        load_spec(spec(tmp_path, "r.bin", "column = 0"))
    assert "recording[0].path: unsupported file type '.bin'" in e.value.errors[0]
    assert ".npz, .mat (MATLAB v5), .wav, text (.txt, .csv" in e.value.errors[0]


def test_comma_csv_with_a_header(tmp_path: Path) -> None:
    x = normal_g(0.5)
    lines = ["time_s,accel_g"] + [f"{i / FS_HZ:.6f}, {float(v)!r}" for i, v in enumerate(x)]
    (tmp_path / "r.csv").write_text("# rig 3\n" + "\n".join(lines) + "\n")
    (rec,) = load_spec(spec(tmp_path, "r.csv", "column = 1"))
    np.testing.assert_array_equal(read_signal(rec), x)
    with pytest.raises(ConfigError, match=r"recording\[0\]\.column: r\.csv has 2 column"):
        load_spec(spec(tmp_path, "r.csv", "column = 2"))


def write_wav(path: Path, data: np.ndarray, rate: int, width: int = 2) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1 if data.ndim == 1 else data.shape[1])
        w.setsampwidth(width)
        w.setframerate(rate)
        if width == 3:  # little-endian 24-bit: the low 3 bytes of each int32
            raw = data.astype("<i4").tobytes()
            w.writeframes(b"".join(raw[i:i + 3] for i in range(0, len(raw), 4)))
        else:
            w.writeframes(data.astype(f"<i{width}").tobytes())


def test_wav_needs_scale_and_its_rate(tmp_path: Path) -> None:
    counts = np.round(normal_g() * 3000).astype(np.int16)
    write_wav(tmp_path / "r.wav", np.stack([counts, -counts], axis=1), int(FS_HZ))
    with pytest.raises(ConfigError, match=r"recording\[0\]\.scale: is required for integer "
                       r"samples \(int16\)"):
        load_spec(spec(tmp_path, "r.wav", ""))
    (rec,) = load_spec(spec(tmp_path, "r.wav", "column = 1\nscale = 0.001"))
    np.testing.assert_allclose(read_signal(rec), -counts * 0.001)
    s = tmp_path / "s.toml"
    s.write_text(s.read_text().replace(f"fs_hz = {FS_HZ}", "fs_hz = 25600"))
    with pytest.raises(ConfigError, match=r"recording\[0\]\.fs_hz: r\.wav is sampled at "
                       r"12000\.0 Hz"):
        load_spec(s)


def test_24_bit_wav_is_read_in_counts(tmp_path: Path) -> None:
    counts = np.array([0, 1, -1, 2**23 - 1, -(2**23)] * 100, dtype=np.int32)
    write_wav(tmp_path / "r.wav", counts, int(FS_HZ), width=3)
    (rec,) = load_spec(spec(tmp_path, "r.wav", "scale = 1.0"))
    np.testing.assert_array_equal(read_signal(rec), counts.astype(float))


# --- output paths (bug 6) -----------------------------------------------------------------


def test_json_to_a_directory_is_refused_before_evaluating(tmp_path: Path) -> None:
    np.savez(tmp_path / "g.npz", signal=normal_g(1.0))
    s = spec(tmp_path, "g.npz", 'key = "signal"')
    (tmp_path / "out").mkdir()
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(ConfigError, match=r"--json: .*out' is a directory"):
        evaluate.main(s, tmp_path / "out", out=out, err=err)
    assert err.getvalue() == ""  # refused before the first recording was read
    (tmp_path / "f").write_text("a file")
    with pytest.raises(ConfigError, match=r"--json: cannot create .*is not a directory"):
        evaluate.main(s, tmp_path / "f" / "r.json", out=out, err=err)
    r = ballpass("evaluate", str(s), "--json", str(tmp_path / "out"))
    assert r.returncode == 2 and "--json" in r.stderr and "Traceback" not in r.stderr
    # An existing report is overwritten; a missing folder is made.
    for target in (tmp_path / "new" / "r.json", tmp_path / "new" / "r.json"):
        assert evaluate.main(s, target, out=out, err=err) == 0
        assert "accuracy" in target.read_text()
