"""Memory of the feature kernels on the longest window the wire takes (2^22 samples).

The stream runs under MemoryMax=1G (deploy/ballpass-stream.service) and must hold queued
windows besides the one it processes; `extract` of one 2^22 window peaked at 316 MB over
the window itself (about ten times its 32 MB of float64), from full-length complex
buffers copied where one would do and a Hann table, an envelope, a windowed envelope and
an impact list each as long as the window.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ballpass import wire
from ballpass.stream.dsp.envelope import envelope, envelope_spectrum
from ballpass.stream.dsp.impacts import impact_interval_counts
from ballpass.stream.dsp.spectrum import _HANN_TABLE_MAX, amplitude_spectrum

_PEAK = textwrap.dedent("""
    import json, sys
    import numpy as np
    from ballpass.models.bearing import DefectOrders
    from ballpass.stream.features import extract

    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(key)

    orders = DefectOrders(bpfo=3.58, bpfi=5.42, bsf=2.36, ftf=0.40)
    n = int(sys.argv[1])
    rng = np.random.default_rng(0)
    extract(rng.standard_normal((1, 8192)), 25600.0, np.array([25.0]), orders)  # compiled
    x = rng.standard_normal((1, n))
    try:  # reset the high-water mark to now (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    before = max(status("VmRSS"), 0)
    extract(x, 25600.0, np.array([25.0]), orders)
    print(json.dumps({"before": before, "peak": status("VmHWM"), "window": x.nbytes}))
""")


@pytest.mark.slow
def test_one_longest_window_takes_less_than_eight_times_its_samples() -> None:
    """Before: 316 MB over the window (9.9x its float64 samples); after: about 190 MB
    (one (N+1,) complex scratch, the FFT's own scratch, the DFT and the spectrum)."""
    out = subprocess.run([sys.executable, "-c", _PEAK, str(wire.MAX_SAMPLES)],
                         capture_output=True, text=True, timeout=120, check=True)
    m = json.loads(out.stdout.strip().splitlines()[-1])
    grown = m["peak"] - m["before"]
    assert grown < 8 * m["window"], (
        f"extract of one {wire.MAX_SAMPLES}-sample window grew the process by "
        f"{grown / 2**20:.0f} MB, {grown / m['window']:.1f}x its samples")


@pytest.mark.parametrize("n", [8193, _HANN_TABLE_MAX + 1, _HANN_TABLE_MAX + 2])
def test_the_envelope_spectrum_in_one_buffer_is_the_spectrum_of_the_envelope(n: int) -> None:
    """The fused kernel (envelope, window and DFT in one buffer; above `_HANN_TABLE_MAX`
    the Hann window computed per sample) reads exactly what the separate steps read."""
    rng = np.random.default_rng(n)
    x = rng.standard_normal((2, n))
    lo, hi = np.array([n // 8, n // 5]), np.array([n // 4, n // 3])
    assert np.array_equal(envelope_spectrum(x, lo, hi), amplitude_spectrum(envelope(x, lo, hi)))


def test_impacts_every_other_sample_all_fit() -> None:
    """The impact list is sized by the gap: maxima every second sample, gap 1, all kept."""
    n = 1001
    env = np.zeros((1, n))
    env[0, 1::2] = 1.0 + np.arange(n // 2) * 1e-3  # a maximum at every odd index
    env[0, -1] = 0.0
    _, n_impacts = impact_interval_counts(env, np.array([[4.0]]), 0.0, np.array([1]),
                                          np.array([[0.9, 1.1]]), np.array([[1.2, 1.4]]), 4)
    assert n_impacts[0] == (n - 1) // 2
