"""ballpass: predictive maintenance for plant machines from vibration and temperature."""

__version__ = "0.1.0"
"""The one place of the version: the package metadata (pyproject.toml, dynamic), `ballpass
--version`, the gateway's status and the webhook User-Agent all read it."""
