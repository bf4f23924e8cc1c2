"""Portrait: real-time user portraits from clickstream and transaction events."""

__version__ = "0.1.0"
