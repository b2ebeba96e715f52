"""twinkles: emulate the LSST DM Level 2 pipeline on simulated LSST images of a deep field."""

__version__ = "0.1.0"
