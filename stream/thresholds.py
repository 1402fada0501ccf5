"""Every tolerance, band and decision threshold of the DSP features and the diagnosis.

One module, so a reviewer sees every number that shapes a decision in one place, and
tests can refer to the same constants. Each value says where it comes from. Nothing here
was fitted to the CWRU recordings; those are only used to measure the result.
"""

from __future__ import annotations

# --- Units -------------------------------------------------------------------------
G_TO_M_S2: float = 9.80665
"""Standard gravity (m/s² per g), ISO 80000-3."""

# --- ISO 20816 velocity band ---------------------------------------------------------
VELOCITY_BAND_LO_HZ: float = 10.0
VELOCITY_BAND_HI_HZ: float = 1000.0
"""ISO 20816-3 broadband velocity r.m.s. range for machines at 600 r/min and above (Hz);
the velocity feature takes its band by speed from `models.iso20816.velocity_band_hz`
(2-1000 Hz below 600 r/min). These two bound the sensor checks' low band (flatness, hum)."""

# --- Kinematic line search -----------------------------------------------------------
SPEED_TOLERANCE: float = 0.02
"""Relative search half-width around each defect line: rolling elements slip 1-2 %
(Randall & Antoni 2011, sec. 2.1), and the speed reading itself has some error."""

N_HARMONICS: int = 3
"""Harmonics 1..3 of each defect line are searched."""

NOISE_FLOOR_BINS: int = 25
"""Bins taken on each side of a search zone for the local noise floor (median)."""

# --- Envelope band selection ----------------------------------------------------------
ENV_BAND_MIN_LO_HZ: float = 500.0
"""Lowest band edge for the envelope: below it shaft harmonics and structural modes dominate
and carry no impact-excited resonance."""

ENV_BANDWIDTH_FACTOR: float = 2.5
"""A band must be at least this many times wider than the highest envelope line searched
(3rd harmonic of the highest defect order plus a shaft sideband, 3×BPFI + 1× on a ball
bearing). Demodulating a band of width W keeps envelope lines up to W/2 on each side
of a centred resonance (the line at f needs the carrier ± f inside the band), so 2× is
the least; the extra 0.5 leaves room for a resonance that sits off the band's centre."""

# --- Sensor health ---------------------------------------------------------------------
SENSOR_MIN_STD_G: float = 1e-6
"""A window whose standard deviation is below this (g) is a flat line: the sensor is dead
or disconnected (an industrial 100 mV/g sensor has a noise floor near 1e-5 g)."""

SENSOR_MAX_PEAK_G: float = 500.0
"""A peak above this (g) is beyond any industrial accelerometer's range on a machine."""

SENSOR_MIN_RMS_G: float = 2e-5
"""Below this r.m.s. (g) the window is quieter than any sensor the gateways read: an
industrial 100 mV/g piezo accelerometer has 1e-5..1e-4 g of residual noise over its band, a
MEMS accelerometer 1e-4 g or more. Such a reading is a disconnected channel, a wrong gain or
a sensor that is not coupled, not a quiet machine."""

SENSOR_PLATEAU_TOL: float = 0.05
"""Samples within this fraction of the typical (robust) sample-to-sample step of the window's
extreme count as sitting on a rail (`dsp.stats._moments`): a saturated amplifier or ADC holds its
rail to within its own noise, far below a vibration's typical step between samples."""

SENSOR_PLATEAU_SAMPLES: int = 16
"""This many samples on a rail mean saturation. An unsaturated signal puts one sample at
each extreme and, by chance, a few more within `SENSOR_PLATEAU_TOL` of it (a Gaussian tail:
at most 9 in any 8192-sample window of the CWRU records, which only measure this). A clean
periodic signal reaches its extreme at every cycle; its smooth peaks count only through
`SENSOR_PLATEAU_KINK`."""

SENSOR_PLATEAU_KINK: float = 0.5
"""When the window's noise (robust sigma of its fourth differences / sqrt(70)) is below the
rail tolerance, a clean periodic signal's smooth peaks fill the tolerance at every cycle, and
only excursions entered and left with a kink count: both edges must bend 1 / (1 - this) times
more than the flattest sample inside (a rail is flat between two kinks, where the slope drops
to zero within a sample; a parabola-like peak bends evenly, an asymmetric one linearly across
its top), and more than the signal does 2 lags outside (a flattened smooth top bends more and
more away from its top; a rail's bend stays at its edges)."""

SENSOR_PLATEAU_NOISE: float = 5.0
"""...each by more than this many sigmas of a second difference (sqrt(6) × the noise): the
largest of a few dozen noisy second differences stays below it."""

SENSOR_PLATEAU_SPREAD: float = 8.0
"""An excursion to the rail reaches this many noise sigmas deeper than `SENSOR_PLATEAU_TOL`:
noise on a rail spreads its samples about ±4 sigma, and the window's extreme is its highest."""

SPIKE_K: float = 8.0
"""A spike deviates from the window's median by more than this many robust standard
deviations (1.4826 × MAD): a Gaussian signal passes 8 sigma once in 1e15 samples."""

SPIKE_ISOLATION: float = 0.25
"""...is at most two samples wide, and the samples 2 to 4 away on both sides stay below this
share of its deviation. A mechanical impact excites a resonance that rings for a
millisecond or more (tens of samples at 10-50 kHz); only an electrical spike (EMI, a cable
or connector fault) is that narrow."""

SPIKE_SAMPLES: int = 256
"""Evenly strided samples the median and MAD of the spike test are taken from."""

SENSOR_MAX_SPIKES: int = 0
"""More isolated spikes than this in a window make it a sensor fault."""

BROADBAND_NOISE_G: float = 5.0
"""A high-frequency floor (`hf_floor`, g r.m.s.) above this, with a spectrum as flat down to
10 Hz as at the top of the band, is not a machine: white acceleration at that level would mean
hundreds of mm/s in the ISO band. It is a sensor that came loose and rattles, or a failing
cable or amplifier."""

BROADBAND_FLAT_RATIO: float = 0.5
"""Flat: the acceleration power density of 10-1000 Hz is at least this share of the density in
the high-frequency band. A machine's high-frequency energy (bearings, lubrication, cavitation)
lives in structural resonances far above its low-frequency density."""

MAINS_HZ: tuple[float, ...] = (50.0, 60.0)
"""Mains frequencies: electrical pickup (a ground loop, an unshielded cable) sits exactly on
them and their harmonics."""

MAINS_HARMONICS: int = 5
MAINS_SHAFT_ORDERS: int = 10
"""Mains lines within 2 bins of shaft harmonics 1..10 are left out of the hum test: the
machine vibrates there for its own reasons (an induction motor turns just below mains/pole
pairs)."""

MAINS_HUM_SHARE: float = 0.5
"""Mains lines holding more than this share of the window's power are hum: a machine does
not put most of its vibration at exactly mains frequency unless its shaft turns there."""

# --- Frequency resolution --------------------------------------------------------------
MIN_REVOLUTIONS: float = 5.0
"""A window must span at least this many shaft revolutions, so that it holds at least two
cage (FTF, about 0.4 order) cycles."""

MAX_RESOLUTION_SHAFT_FRACTION: float = 0.25
"""Bin spacing fs/N must be at most this fraction of the shaft rate, so that ±1× shaft
sidebands sit at least 4 bins from their carrier."""

MIN_FTF_BINS: float = 2.0
"""The cage line (FTF, the lowest kinematic line) must lie at least this many bins above DC,
or it cannot be told from the window's mean and leakage."""

# --- Diagnosis ---------------------------------------------------------------------------
LINE_SNR_DB: float = 10.0
"""A line is present when it stands this far above the median of its neighbours. For a
noise-only Rayleigh spectrum the chance one bin exceeds the median by 10 dB is about 1e-3."""

MIN_SUPPORT_LINES: int = 2
"""Lines (harmonics or sidebands) that must back a defect's fundamental unless it is strong.
Measured on white noise, one envelope line passes LINE_SNR_DB in about 1 % of searches."""

STRONG_LINE_SNR_DB: float = 16.0
"""A line this far above its floor counts as evidence on its own (p about 1e-12 for noise)."""

CAGE_LINE_SNR_DB: float = 16.0
"""Cage lines are low-frequency and sit among shaft-related content; ask for more."""

SUPPORT_BONUS_DB: float = 1.0
"""Ranking bonus per harmonic or sideband supporting a defect's fundamental (dB)."""

CONFIDENCE_FULL_DB: float = 20.0
"""Evidence this many dB above the line threshold gives confidence 1."""

KURTOSIS_ANOMALY: float = 5.0
"""Kurtosis above this (gaussian = 3, std of the estimate about sqrt(24/N) = 0.05 at N=8192)
marks an impulsive signal even when no kinematic line explains it."""

LUBRICATION_HF_G: float = 0.5
"""High-frequency band r.m.s. (g) above which a non-impulsive broadband rise points to poor
lubrication (metal-to-metal friction) when no defect line is present."""

LUBRICATION_MAX_KURTOSIS: float = 4.0
"""Lubrication noise is broadband but not impulsive."""

HF_BAND_LO_FRACTION: float = 0.25
HF_BAND_HI_FRACTION: float = 0.45
"""hf_floor band as fractions of fs: above the structural modes, below the anti-alias roll-off."""

IMBALANCE_X1_SHARE: float = 0.5
"""Imbalance: the 1× shaft velocity holds at least this share of the band velocity energy."""

MISALIGNMENT_X2_RATIO: float = 0.5
"""Misalignment: the 2× shaft line reaches at least this fraction of the 1× line, in velocity
(mm/s; the acceleration lines' ratio halved)."""

# --- Impact intervals (ball faults; `dsp.impacts`, `impact_history`) --------------------
IMPACT_K_MAD: float = 5.0
"""An impact is an envelope maximum this many MADs (scaled to σ) above the envelope's median:
5σ, the usual outlier level; the median and MAD barely move with the impacts themselves."""

IMPACT_GAP_FRACTION: float = 0.5
"""Maxima closer than this fraction of the shortest period searched (1/BPFI) are one impact
ringing, not two strikes: the fastest defect's strikes stay two gaps apart."""

IMPACT_MAX_LAGS: int = 5
"""Each impact is paired with its next 5: a strike followed by stray impacts still pairs with
the next strike (the lag histogram of a point process, not only consecutive intervals)."""

IMPACT_HIT = ((1.0 - 2.5 * SPEED_TOLERANCE, 1.0 + 2.5 * SPEED_TOLERANCE),
              (2.0 - 5.0 * SPEED_TOLERANCE, 2.0 + 5.0 * SPEED_TOLERANCE))
"""Lag / period ranges that count as the defect's period: 1 ± 5 % and 2 ± 10 % (one strike
missed). Wider than the spectral SPEED_TOLERANCE: a ball's spin slips more than the cage,
and one lag between two impacts is read to a sample, not averaged over a window."""

IMPACT_FLANK = ((0.75, 0.9), (1.1, 1.25), (1.5, 1.8), (2.2, 2.5))
"""Lag / period ranges around the hits: 0.9 of the hits' total width; where lags land as
often as anywhere when the impacts have no period (they give the expected hit count)."""

IMPACT_SCORE_MIN: float = 3.0
"""A period is present when its hits exceed the flanks' expectation with Poisson p < 1e-3
(-log10 p >= 3), the same false-alarm level as one line at LINE_SNR_DB."""

IMPACT_HISTORY_WINDOWS: int = 16
"""Windows of one sensor whose counts are pooled: a ball strikes in runs, and one window of
1 s holds a few runs at most. 16 windows of one sensor: about 10 s at the CWRU rig's 0.68 s
windows, 20-30 s in the demo, 16 h in an hourly fleet."""
