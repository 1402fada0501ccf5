"""ballpass: predictive maintenance for plant machines from vibration and temperature."""

__version__ = "0.1.0"
