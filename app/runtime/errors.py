"""The GPU runtime's errors; each message is meant for the user."""

from __future__ import annotations


class GpuRuntimeError(Exception):
    """Base class for GPU-runtime errors; the message is meant for the user."""


class NoCudaBuild(GpuRuntimeError):
    """No CUDA build fits this GPU/driver; the message is the reason (the app stays on the CPU)."""


class WheelNotFound(GpuRuntimeError):
    """The runtime source has no wheel for the chosen build and this Python."""


class ChecksumError(GpuRuntimeError):
    """The downloaded file's sha256 does not match; the partial download has been removed."""


class DownloadCancelled(GpuRuntimeError):
    """The download was cancelled; the ``.part`` file is kept so the next try resumes."""
