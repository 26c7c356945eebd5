"""t2i: a text-to-image lab. Every family of the survey, trained from scratch, measured exactly."""

__version__ = "0.1.0"
