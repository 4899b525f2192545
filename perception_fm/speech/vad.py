"""Voice-activity detection: a stream of mono PCM chunks in, utterances out.

Energy based, in pure numpy. The stream is cut into frames (20 ms); a frame is voiced when its level (dBFS)
is `threshold_db` above the noise floor and above `min_level_db`. The noise floor is the level of the
quietest frame of the last `noise_window_s` (minimum statistics): speech has pauses and stops between its
syllables and words, background noise has none, so the floor follows the background both down (at once)
and up (a fan switched on is background again after noise_window_s) whether or not someone is talking;
only a sound without any pause for that long is taken for background. An utterance starts after `onset_s` of voiced frames (clicks are not speech) and ends after
`hangover_s` without one; it then holds `pre_roll_s` before its first voiced frame and at most `tail_s`
after its last. An utterance reaching `max_utterance_s` is cut there (reason "max_length") and the next one
starts at once; ones shorter than `min_utterance_s` of speech are discarded (counted in `too_short`).

Memory is bounded: the pre-roll ring and the current utterance, at most max_utterance_s of samples.
The detector works at the stream's own rate; a change of rate ends the current utterance and starts over.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np

SILENCE_DB = -120.0  # the level of digital silence, instead of -inf


@dataclass(frozen=True)
class VadConfig:
    threshold_db: float = 10.0  # voiced: this far above the noise floor ...
    min_level_db: float = -55.0  # ... and at least this loud (dBFS)
    release_db: float = 3.0  # inside an utterance, frames this much below the threshold still count as voiced
    onset_s: float = 0.1  # voiced time that starts an utterance
    hangover_s: float = 0.6  # unvoiced time that ends it
    pre_roll_s: float = 0.25  # audio kept before the first voiced frame
    tail_s: float = 0.3  # audio kept after the last voiced frame
    min_utterance_s: float = 0.3  # shorter voiced spans are discarded
    max_utterance_s: float = 10.0  # longer utterances are cut
    frame_s: float = 0.02
    noise_window_s: float = 3.0  # the noise floor is the quietest frame of this long

    def __post_init__(self):
        if not 0.005 <= self.frame_s <= 0.1:
            raise ValueError(f"VAD frame of {self.frame_s} s; use 5 to 100 ms")
        if self.max_utterance_s <= self.min_utterance_s or self.min_utterance_s < 0:
            raise ValueError(f"max_utterance ({self.max_utterance_s} s) must exceed min_utterance "
                             f"({self.min_utterance_s} s) >= 0")
        if self.noise_window_s < self.frame_s:
            raise ValueError(f"noise window of {self.noise_window_s} s is shorter than a frame")
        if min(self.onset_s, self.hangover_s, self.pre_roll_s, self.tail_s) < 0:
            raise ValueError("VAD durations must not be negative")


@dataclass
class Utterance:
    audio: np.ndarray  # mono float32 at sample_rate
    sample_rate: int
    start_s: float  # stream time of the first sample (seconds since the detector started or reset)
    speech_s: float  # time from the first to the last voiced frame
    reason: str  # "silence" (hangover), "max_length" (cut), "flush" (end of stream) or "rate_change"

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate


@dataclass
class VadStats:
    utterances: int = 0
    too_short: int = 0
    cut: int = 0  # utterances cut at max_utterance_s


def frame_levels_db(frames: np.ndarray) -> np.ndarray:
    """RMS level in dBFS of each row of `frames` (full-scale sine ≈ -3 dB; silence = SILENCE_DB)."""
    power = np.mean(np.square(frames, dtype=np.float64), axis=-1)
    with np.errstate(divide="ignore"):
        return np.maximum(10.0 * np.log10(power), SILENCE_DB)


@dataclass
class _Active:
    chunks: list = field(default_factory=list)
    samples: int = 0
    start_sample: int = 0
    voiced_end: int = 0  # samples into the utterance up to the end of the last voiced frame
    first_voiced: int = 0  # samples into the utterance of the first voiced frame


class EnergyVad:
    """Feed chunks of any length with `feed`; it returns the utterances they completed, oldest first."""

    def __init__(self, config: VadConfig = VadConfig(), sample_rate: int = 16000):
        self.config = config
        self.stats = VadStats()
        self._reset(sample_rate)

    def _reset(self, sample_rate: int) -> None:
        config = self.config
        self.sample_rate = int(sample_rate)
        self.frame = max(1, int(round(config.frame_s * self.sample_rate)))
        frame_s = self.frame / self.sample_rate
        self._onset_frames = max(1, int(round(config.onset_s / frame_s)))
        self._hangover_frames = max(1, int(round(config.hangover_s / frame_s)))
        self._tail = int(round(config.tail_s * self.sample_rate))
        self._max_samples = max(self.frame, int(config.max_utterance_s * self.sample_rate))
        self._min_speech = config.min_utterance_s * self.sample_rate
        self._levels: deque[float] = deque(maxlen=max(1, int(round(config.noise_window_s / frame_s))))
        self._pending = np.zeros(0, np.float32)  # samples short of a whole frame
        pre_frames = int(np.ceil(config.pre_roll_s * self.sample_rate / self.frame))
        # unvoiced/onset frames before an utterance: the pre-roll plus the onset frames themselves
        self._history: deque[np.ndarray] = deque(maxlen=pre_frames + self._onset_frames)
        self._voiced_run = 0  # consecutive voiced frames (before an utterance starts)
        self._silent_run = 0  # consecutive unvoiced frames inside an utterance
        self._active: _Active | None = None
        self._position = 0  # samples seen since the reset

    @property
    def noise_floor_db(self) -> float | None:
        return min(self._levels) if self._levels else None

    @property
    def in_speech(self) -> bool:
        return self._active is not None

    def reset(self, sample_rate: int | None = None) -> None:
        """Forget everything (the current utterance too)."""
        self._reset(sample_rate or self.sample_rate)

    def feed(self, samples: np.ndarray, sample_rate: int | None = None) -> list[Utterance]:
        """Process mono float32 samples; a different `sample_rate` ends the current utterance first."""
        done: list[Utterance] = []
        if sample_rate is not None and int(sample_rate) != self.sample_rate:
            done += self._finish("rate_change")
            self._reset(int(sample_rate))
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if self._pending.size:
            samples = np.concatenate([self._pending, samples])
        whole = (samples.size // self.frame) * self.frame
        self._pending = samples[whole:].copy()
        if not whole:
            return done
        frames = samples[:whole].reshape(-1, self.frame)
        for frame, level in zip(frames, frame_levels_db(frames)):
            done += self._step(frame, float(level))
        return done

    def flush(self) -> list[Utterance]:
        """End of stream: the current utterance (if long enough), as it is."""
        return self._finish("flush")

    # -- per frame ------------------------------------------------------------------------------------------

    def _voiced(self, level: float) -> bool:
        config = self.config
        self._levels.append(level)
        floor = min(self._levels)  # at most noise_window_s / frame_s values (150)
        threshold = floor + config.threshold_db - (config.release_db if self._active else 0.0)
        return level >= max(threshold, config.min_level_db)

    def _step(self, frame: np.ndarray, level: float) -> list[Utterance]:
        voiced = self._voiced(level)
        self._position += self.frame
        done: list[Utterance] = []
        active = self._active
        if active is None:
            self._history.append(frame)
            self._voiced_run = self._voiced_run + 1 if voiced else 0
            if self._voiced_run >= self._onset_frames:
                self._start()
            return done
        active.chunks.append(frame)
        active.samples += self.frame
        if voiced:
            self._silent_run = 0
            active.voiced_end = active.samples
        else:
            self._silent_run += 1
            if self._silent_run >= self._hangover_frames:
                return self._finish("silence")
        if active.samples >= self._max_samples:
            done += self._finish("max_length")
            if voiced:  # still talking: the next utterance goes on from here
                self._start(pre_roll=False)
        return done

    def _start(self, pre_roll: bool = True) -> None:
        """Open an utterance: the onset frames, after up to pre_roll_s of the frames before them."""
        history = list(self._history) if pre_roll else []
        onset = min(self._voiced_run, len(history))
        pre = len(history) - onset  # at most pre_roll_s of frames: the history ring holds no more
        samples = len(history) * self.frame
        self._active = _Active(chunks=history, samples=samples, start_sample=self._position - samples,
                               voiced_end=samples, first_voiced=pre * self.frame)
        self._history.clear()
        self._voiced_run = 0
        self._silent_run = 0

    def _finish(self, reason: str) -> list[Utterance]:
        active, self._active = self._active, None
        self._silent_run = 0
        self._voiced_run = 0
        if active is None:
            return []
        speech = active.voiced_end - active.first_voiced
        if speech < self._min_speech:
            self.stats.too_short += 1
            return []
        end = active.samples if reason == "max_length" else min(active.samples, active.voiced_end + self._tail)
        audio = np.concatenate(active.chunks)[:end] if active.chunks else np.zeros(0, np.float32)
        self.stats.utterances += 1
        if reason == "max_length":
            self.stats.cut += 1
        return [Utterance(audio=audio, sample_rate=self.sample_rate, start_s=active.start_sample / self.sample_rate,
                          speech_s=speech / self.sample_rate, reason=reason)]


def vad_config_from(values: dict) -> VadConfig:
    """VadConfig from speech node parameter values (perception_fm.speech.params)."""
    return replace(
        VadConfig(),
        threshold_db=float(values["vad_threshold_db"]),
        min_level_db=float(values["vad_min_level_db"]),
        onset_s=float(values["vad_onset"]),
        hangover_s=float(values["vad_hangover"]),
        pre_roll_s=float(values["vad_pre_roll"]),
        min_utterance_s=float(values["min_utterance"]),
        max_utterance_s=float(values["max_utterance"]),
    )
