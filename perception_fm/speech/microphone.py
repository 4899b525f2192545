"""The default microphone as an audio source, through sounddevice (PortAudio). Optional: sounddevice is
imported only when a microphone is opened, and a missing package or PortAudio library is a clear error."""
from __future__ import annotations

import threading
from typing import Callable

import numpy as np

from perception_fm.errors import PerceptionFmError

INSTALL_HINT = ("the microphone source needs the Python package sounddevice (pip install sounddevice) and the "
                "PortAudio library (Debian/Ubuntu: apt-get install libportaudio2)")


class MicrophoneError(PerceptionFmError):
    """The microphone cannot be opened (sounddevice or PortAudio missing, no such device, ...)."""


def import_sounddevice():
    try:
        import sounddevice
    except ImportError as error:
        raise MicrophoneError(f"{INSTALL_HINT}: {error}") from error
    except OSError as error:  # sounddevice raises OSError("PortAudio library not found") at import
        raise MicrophoneError(f"{INSTALL_HINT}: {error}") from error
    return sounddevice


class MicrophoneSource:
    """Calls `on_audio(mono float32 samples, sample_rate)` from PortAudio's thread for every block read.

    device: a sounddevice device name or index ("" = the default input); sample_rate 0 = the device's own.
    Overflows (samples lost because the callback was late) are counted in `overflows`."""

    def __init__(self, on_audio: Callable[[np.ndarray, int], None], *, device: str = "", sample_rate: int = 16000,
                 channels: int = 1, block_s: float = 0.05):
        self._on_audio = on_audio
        self.device = int(device) if str(device).strip().isdigit() else (str(device) or None)
        self.requested_rate = int(sample_rate)
        self.channels = int(channels)
        self.block_s = float(block_s)
        self.sample_rate = 0
        self.overflows = 0
        self._stream = None
        self._lock = threading.Lock()

    def start(self) -> None:
        sounddevice = import_sounddevice()
        try:
            rate = self.requested_rate or int(sounddevice.query_devices(self.device, "input")["default_samplerate"])
            self.sample_rate = int(rate)  # before the first callback
            stream = sounddevice.InputStream(
                samplerate=rate, channels=self.channels, dtype="float32", device=self.device,
                blocksize=max(1, int(rate * self.block_s)), callback=self._callback,
            )
            stream.start()
        except Exception as error:  # sounddevice.PortAudioError, ValueError for an unknown device, ...
            raise MicrophoneError(f"cannot open microphone {self.device or '(default)'!s} at "
                                  f"{self.requested_rate or 'its default'} Hz: {error}") from error
        with self._lock:
            self._stream = stream

    def _callback(self, indata, frames, time_info, status) -> None:
        if status and getattr(status, "input_overflow", False):
            self.overflows += 1
        block = np.asarray(indata, dtype=np.float32)
        mono = block.mean(axis=1, dtype=np.float32) if block.ndim == 2 and block.shape[1] > 1 else block.reshape(-1)
        self._on_audio(mono.copy(), self.sample_rate)

    def stop(self) -> None:
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.stop()
            finally:
                stream.close()
