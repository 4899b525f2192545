"""Audio as the speech models take it: mono float32 in [-1, 1] at the model's rate.

perception_fm/AudioData carries interleaved PCM, "S16LE" (signed 16-bit little endian) or "F32LE" (float32
little endian), at any rate and channel count. Decoding checks what a publisher could get wrong (unknown
encoding, a byte count that is no whole number of frames, zero rate or channels) and raises BadInputError
with a short reason, which nodes count as drops.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from perception_fm.errors import BadInputError

S16LE = "S16LE"
F32LE = "F32LE"
ENCODINGS = {S16LE: np.dtype("<i2"), F32LE: np.dtype("<f4")}
MAX_SAMPLE_RATE = 384_000


def pcm_to_float(data, encoding: str, channels: int) -> np.ndarray:
    """Interleaved PCM bytes → (frames, channels) float32 in [-1, 1]."""
    from perception_fm.ros.image_codec import message_bytes

    dtype = ENCODINGS.get(str(encoding).upper())
    if dtype is None:
        raise BadInputError("encoding", f"audio encoding {encoding!r} is not supported; use {S16LE} or {F32LE}")
    if channels < 1:
        raise BadInputError("channels", f"audio with {channels} channels")
    raw = message_bytes(data)
    frame_bytes = dtype.itemsize * channels
    if raw.size % frame_bytes:
        raise BadInputError("size", f"{raw.size} bytes of {encoding} audio are not a whole number of "
                                    f"{channels}-channel frames ({frame_bytes} bytes each)")
    samples = np.frombuffer(raw, dtype=dtype).reshape(-1, channels)
    if dtype.kind == "i":
        return samples.astype(np.float32) / 32768.0
    samples = samples.astype(np.float32)
    if not np.all(np.isfinite(samples)):
        raise BadInputError("nan", "float audio with NaN or infinite samples")
    return np.clip(samples, -1.0, 1.0)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """(frames, channels) or (frames,) → (frames,) float32, channels averaged."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 1:
        return samples
    if samples.shape[1] == 1:
        return samples[:, 0].copy()
    return samples.mean(axis=1, dtype=np.float32)


def decode_audio(message) -> tuple[np.ndarray, int]:
    """A perception_fm/AudioData message → (mono float32 samples, sample rate)."""
    rate = int(message.sample_rate)
    if not 0 < rate <= MAX_SAMPLE_RATE:
        raise BadInputError("sample_rate", f"audio sample rate {rate} Hz")
    return to_mono(pcm_to_float(message.data, message.encoding, int(message.channels))), rate


def float_to_pcm(samples: np.ndarray, encoding: str = S16LE) -> bytes:
    """(frames,) or (frames, channels) float in [-1, 1] → interleaved PCM bytes."""
    samples = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    encoding = encoding.upper()
    if encoding == S16LE:
        return np.round(samples * 32767.0).astype("<i2").tobytes()
    if encoding == F32LE:
        return samples.astype("<f4").tobytes()
    raise ValueError(f"audio encoding {encoding!r} is not supported; use {S16LE} or {F32LE}")


def encode_audio(samples: np.ndarray, sample_rate: int, encoding: str = S16LE, header=None):
    """float samples ((frames,) mono or (frames, channels) interleaved) → perception_fm/AudioData."""
    from perception_fm.msg import AudioData
    from perception_fm.ros.image_codec import new_message, to_uint8_array

    samples = np.asarray(samples, dtype=np.float32)
    message = new_message(AudioData)
    if header is not None:
        message.header = header
    message.sample_rate = int(sample_rate)
    message.channels = 1 if samples.ndim == 1 else int(samples.shape[1])
    message.encoding = encoding.upper()
    message.data = to_uint8_array(np.frombuffer(float_to_pcm(samples, encoding), dtype=np.uint8))
    return message


@lru_cache(maxsize=16)
def _ratio(source_rate: int, target_rate: int) -> tuple[int, int]:
    divisor = math.gcd(int(source_rate), int(target_rate))
    return int(target_rate) // divisor, int(source_rate) // divisor


def resample(samples: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Mono float32 from `source_rate` to `target_rate` (polyphase filtering, scipy.signal.resample_poly).
    Meant for whole utterances: resampling chunk by chunk would put filter edges at every chunk border."""
    samples = np.asarray(samples, dtype=np.float32)
    if source_rate == target_rate or samples.size == 0:
        return samples
    from scipy.signal import resample_poly

    up, down = _ratio(source_rate, target_rate)
    return resample_poly(samples, up, down).astype(np.float32)
