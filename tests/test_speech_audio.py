"""Audio in: AudioData decoding (S16LE/F32LE, channels), resampling, voice-activity detection on synthetic
audio, the microphone source (with a stand-in sounddevice) and the speech parameters."""
import sys
import threading
import types

import numpy as np
import pytest

from perception_fm.errors import BadInputError
from perception_fm.speech.audio import decode_audio, encode_audio, float_to_pcm, pcm_to_float, resample, to_mono
from perception_fm.speech.microphone import MicrophoneError, MicrophoneSource
from perception_fm.speech.params import SPEECH_PARAMS, parse_phrase_list
from perception_fm.speech.vad import EnergyVad, VadConfig, frame_levels_db, vad_config_from

RATE = 16000


# ----------------------------------------------------------------------------------------------------------
# decoding


def test_s16le_decodes_to_float_in_range():
    pcm = np.array([0, 16384, -16384, 32767, -32768], dtype="<i2").tobytes()
    samples = pcm_to_float(pcm, "S16LE", 1)
    assert samples.dtype == np.float32 and samples.shape == (5, 1)
    np.testing.assert_allclose(samples[:, 0], [0.0, 0.5, -0.5, 32767 / 32768, -1.0])


def test_f32le_decodes_and_is_clipped_and_checked():
    pcm = np.array([0.25, -0.75, 1.5], dtype="<f4").tobytes()
    np.testing.assert_allclose(pcm_to_float(pcm, "F32LE", 1)[:, 0], [0.25, -0.75, 1.0])
    with pytest.raises(BadInputError) as error:
        pcm_to_float(np.array([0.1, np.nan], dtype="<f4").tobytes(), "F32LE", 1)
    assert error.value.reason == "nan"


def test_interleaved_stereo_is_averaged_to_mono():
    left, right = np.linspace(-0.5, 0.5, 100, dtype=np.float32), np.full(100, 0.25, np.float32)
    pcm = np.stack([left, right], axis=1).astype("<f4").tobytes()  # L R L R ...
    samples = pcm_to_float(pcm, "F32LE", 2)
    assert samples.shape == (100, 2)
    np.testing.assert_allclose(to_mono(samples), (left + right) / 2, atol=1e-7)


@pytest.mark.parametrize("encoding", ["S16LE", "F32LE"])
@pytest.mark.parametrize("channels", [1, 2, 6])
def test_audio_message_round_trip(encoding, channels):
    t = np.arange(4800) / 48000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    frames = np.repeat(tone[:, None], channels, axis=1) if channels > 1 else tone
    message = encode_audio(frames, 48000, encoding)
    assert (message.sample_rate, message.channels, message.encoding) == (48000, channels, encoding)
    assert len(message.data) == 4800 * channels * (2 if encoding == "S16LE" else 4)
    samples, rate = decode_audio(message)
    assert rate == 48000 and samples.shape == (4800,) and samples.dtype == np.float32
    np.testing.assert_allclose(samples, tone, atol=1e-4 if encoding == "S16LE" else 1e-7)


@pytest.mark.parametrize("change,reason", [
    (lambda m: setattr(m, "encoding", "MP3"), "encoding"),
    (lambda m: setattr(m, "encoding", "S24LE"), "encoding"),
    (lambda m: setattr(m, "channels", 0), "channels"),
    (lambda m: setattr(m, "sample_rate", 0), "sample_rate"),
    (lambda m: setattr(m, "data", m.data[:-1]), "size"),
    (lambda m: setattr(m, "channels", 3), "size"),  # 160 samples are no whole number of 3-channel frames
])
def test_bad_audio_messages_raise_with_a_reason(change, reason):
    message = encode_audio(np.zeros(160, np.float32), RATE)
    change(message)
    with pytest.raises(BadInputError) as error:
        decode_audio(message)
    assert error.value.reason == reason


def test_lower_case_encoding_names_are_accepted():
    message = encode_audio(np.full(10, 0.5, np.float32), RATE, "S16LE")
    message.encoding = "s16le"
    np.testing.assert_allclose(decode_audio(message)[0], 0.5, atol=1e-4)
    with pytest.raises(ValueError):
        float_to_pcm(np.zeros(3), "MP3")


# ----------------------------------------------------------------------------------------------------------
# resampling


def dominant_frequency(samples, rate):
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)]


@pytest.mark.parametrize("source,target", [(48000, 16000), (44100, 16000), (22050, 16000), (8000, 16000),
                                           (16000, 16000)])
def test_resampling_keeps_length_pitch_and_level(source, target):
    t = np.arange(source) / source  # one second
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    out = resample(tone, source, target)
    assert out.dtype == np.float32
    assert abs(len(out) - target) <= 1
    assert dominant_frequency(out, target) == pytest.approx(440, abs=2)
    middle = out[target // 10: -target // 10]
    assert np.sqrt(np.mean(middle ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


def test_resampling_removes_what_the_target_rate_cannot_hold():
    t = np.arange(48000) / 48000
    alias = np.sin(2 * np.pi * 12000 * t).astype(np.float32)  # above 8 kHz, the Nyquist frequency of 16 kHz
    assert np.sqrt(np.mean(resample(alias, 48000, 16000) ** 2)) < 0.01


# ----------------------------------------------------------------------------------------------------------
# voice activity


def tone(seconds, amplitude=0.3, frequency=300.0, rate=RATE):
    """Speech-like sound: syllables of a harmonic tone, 0.21 s each with 40 ms stops between them."""
    t = np.arange(int(seconds * rate)) / rate
    voiced = (t % 0.25) < 0.21
    voiced[t > seconds - 0.05] = True  # end on a syllable (the speech lasts `seconds`)
    wave = np.sin(2 * np.pi * frequency * t) + 0.5 * np.sin(2 * np.pi * 2 * frequency * t)
    return (amplitude * wave * voiced).astype(np.float32) / 1.5


def scene(parts, noise=0.002, seed=0, rate=RATE):
    """[(kind, seconds)] with kind "speech" or "silence" → audio with background noise, and the true speech
    intervals in seconds."""
    rng = np.random.default_rng(seed)
    chunks, intervals, position = [], [], 0.0
    for kind, seconds in parts:
        chunk = tone(seconds, rate=rate) if kind == "speech" else np.zeros(int(seconds * rate), np.float32)
        if kind == "speech":
            intervals.append((position, position + seconds))
        chunks.append(chunk)
        position += seconds
    audio = np.concatenate(chunks)
    return (audio + rng.normal(0, noise, audio.size)).astype(np.float32), intervals


def run_vad(audio, config=VadConfig(), rate=RATE, chunk=1600):
    vad = EnergyVad(config, rate)
    utterances = []
    for start in range(0, len(audio), chunk):
        utterances += vad.feed(audio[start:start + chunk], rate)
    return utterances, vad


def test_frame_levels():
    levels = frame_levels_db(np.stack([np.zeros(320), np.full(320, 0.1), np.full(320, 1.0)]))
    np.testing.assert_allclose(levels, [-120.0, -20.0, 0.0], atol=1e-9)


def test_utterance_boundaries_follow_the_speech():
    audio, truth = scene([("silence", 1.0), ("speech", 1.2), ("silence", 1.5), ("speech", 0.8), ("silence", 1.5)])
    config = VadConfig()
    utterances, vad = run_vad(audio, config)
    assert len(utterances) == 2, [(u.start_s, u.duration_s) for u in utterances]
    tolerance = 0.05
    for utterance, (start, end) in zip(utterances, truth):
        assert utterance.reason == "silence"
        assert utterance.speech_s == pytest.approx(end - start, abs=tolerance)
        # the utterance holds the pre-roll before the speech and the tail after it
        assert utterance.start_s == pytest.approx(start - config.pre_roll_s, abs=tolerance)
        assert utterance.start_s + utterance.duration_s == pytest.approx(end + config.tail_s, abs=tolerance)
        assert utterance.sample_rate == RATE and utterance.audio.dtype == np.float32
        # the audio is the stream's own: the utterance's samples are those of the input at that time
        first = int(round(utterance.start_s * RATE))
        np.testing.assert_array_equal(utterance.audio, audio[first:first + len(utterance.audio)])
    assert vad.stats.utterances == 2 and not vad.in_speech


def test_pauses_shorter_than_the_hangover_stay_in_one_utterance():
    audio, _ = scene([("silence", 1.0), ("speech", 0.5), ("silence", 0.3), ("speech", 0.5), ("silence", 0.4),
                      ("speech", 0.4), ("silence", 1.5)])
    utterances, _ = run_vad(audio, VadConfig(hangover_s=0.6))
    assert len(utterances) == 1
    assert utterances[0].speech_s == pytest.approx(0.5 + 0.3 + 0.5 + 0.4 + 0.4, abs=0.05)
    utterances, _ = run_vad(audio, VadConfig(hangover_s=0.2))
    assert len(utterances) == 3


def test_clicks_and_short_sounds_are_no_utterance():
    audio, _ = scene([("silence", 1.0), ("speech", 0.04), ("silence", 1.0), ("speech", 0.2), ("silence", 1.5)])
    utterances, vad = run_vad(audio, VadConfig(onset_s=0.1, min_utterance_s=0.3))
    assert utterances == []
    assert vad.stats.too_short == 1  # the 0.2 s sound started an utterance; the 40 ms click did not


def test_long_speech_is_cut_at_max_utterance_and_memory_stays_bounded():
    audio, _ = scene([("silence", 0.5), ("speech", 23.0), ("silence", 1.5)])
    config = VadConfig(max_utterance_s=5.0)
    vad = EnergyVad(config, RATE)
    utterances, held = [], []
    for start in range(0, len(audio), 1600):
        utterances += vad.feed(audio[start:start + 1600])
        if vad._active is not None:
            held.append(vad._active.samples)
    assert max(held) <= 5.0 * RATE
    assert [u.reason for u in utterances] == ["max_length"] * 4 + ["silence"]
    assert all(u.duration_s <= 5.0 + 1e-9 for u in utterances)
    # together the pieces hold all of the speech, without gaps or overlaps
    for previous, following in zip(utterances, utterances[1:]):
        assert following.start_s == pytest.approx(previous.start_s + previous.duration_s, abs=1e-9)
    assert sum(u.speech_s for u in utterances) == pytest.approx(23.0, abs=0.1)
    assert vad.stats.cut == 4


def test_chunk_size_does_not_change_the_result():
    audio, _ = scene([("silence", 0.7), ("speech", 0.9), ("silence", 1.0), ("speech", 0.6), ("silence", 1.0)])
    reference, _ = run_vad(audio, chunk=len(audio))
    for chunk in (1, 7, 160, 333, 4096):
        utterances, _ = run_vad(audio, chunk=chunk) if chunk > 1 else run_vad(audio[:len(audio)], chunk=chunk)
        assert [(u.start_s, len(u.audio)) for u in utterances] == [(u.start_s, len(u.audio)) for u in reference]


def test_noise_floor_adapts_to_louder_background_noise():
    rng = np.random.default_rng(1)
    config = VadConfig(noise_window_s=3.0)
    quiet = rng.normal(0, 0.001, 2 * RATE)
    loud = rng.normal(0, 0.02, 12 * RATE)  # the fan comes on: +26 dB for good
    audio = np.concatenate([quiet, loud]).astype(np.float32)
    utterances, vad = run_vad(audio, config)
    # the step is taken for speech until the noise window has only the new noise in it
    assert len(utterances) == 1
    assert utterances[0].start_s == pytest.approx(2.0 - config.pre_roll_s, abs=0.05)
    assert utterances[0].speech_s <= config.noise_window_s + 0.05
    assert not vad.in_speech
    assert vad.noise_floor_db == pytest.approx(20 * np.log10(0.02), abs=3)
    # speech 20 dB above the new noise is heard, with its pauses
    speech, truth = scene([("speech", 1.0), ("silence", 0.5), ("speech", 0.7), ("silence", 1.5)], noise=0.0)
    speech = (speech * 2.0 + rng.normal(0, 0.02, speech.size)).astype(np.float32)
    after = []
    for start in range(0, len(speech), 1600):
        after += vad.feed(speech[start:start + 1600])
    assert len(after) == 1 and after[0].speech_s == pytest.approx(2.2, abs=0.05)


def test_speech_longer_than_the_noise_window_is_not_taken_for_noise():
    audio, truth = scene([("silence", 1.0), ("speech", 8.0), ("silence", 1.5)])
    utterances, _ = run_vad(audio, VadConfig(noise_window_s=3.0, max_utterance_s=30.0))
    assert len(utterances) == 1 and utterances[0].speech_s == pytest.approx(8.0, abs=0.05)


def test_quiet_sounds_below_the_minimum_level_are_ignored():
    audio, _ = scene([("silence", 1.0), ("speech", 1.0), ("silence", 1.5)], noise=0.0)
    quiet = audio * 0.001  # about -70 dBFS
    utterances, _ = run_vad(quiet, VadConfig(min_level_db=-55.0))
    assert utterances == []


def test_rate_change_and_flush_end_the_current_utterance():
    vad = EnergyVad(VadConfig(), RATE)
    audio, _ = scene([("silence", 0.5), ("speech", 1.0)])
    assert vad.feed(audio, RATE) == []
    assert vad.in_speech
    done = vad.feed(np.random.default_rng(5).normal(0, 0.002, 4410).astype(np.float32), 44100)
    assert [u.reason for u in done] == ["rate_change"] and done[0].sample_rate == RATE
    assert vad.sample_rate == 44100 and not vad.in_speech
    audio, _ = scene([("silence", 0.5), ("speech", 1.0)], rate=44100)
    vad.feed(audio)
    flushed = vad.flush()
    assert [u.reason for u in flushed] == ["flush"] and flushed[0].sample_rate == 44100
    assert flushed[0].speech_s == pytest.approx(1.0, abs=0.05)


def test_vad_config_checks_its_values():
    with pytest.raises(ValueError):
        VadConfig(min_utterance_s=5.0, max_utterance_s=2.0)
    with pytest.raises(ValueError):
        VadConfig(frame_s=0.5)
    with pytest.raises(ValueError):
        VadConfig(hangover_s=-1)


def test_vad_config_from_node_parameters():
    values = {param.name: param.default for param in SPEECH_PARAMS}
    assert vad_config_from(values) == VadConfig()
    values.update(vad_hangover=1.0, max_utterance=3.0, vad_threshold_db=6.0)
    config = vad_config_from(values)
    assert (config.hangover_s, config.max_utterance_s, config.threshold_db) == (1.0, 3.0, 6.0)


def test_phrase_list_parameter():
    assert parse_phrase_list(" Red  Cup, chair , ,person,chair") == ("red cup", "chair", "person")
    assert parse_phrase_list("") == ()


# ----------------------------------------------------------------------------------------------------------
# microphone


class FakeStream:
    """sounddevice.InputStream's interface: calls back with (frames, channels) float32 blocks."""

    opened = []

    def __init__(self, samplerate, channels, dtype, device, blocksize, callback):
        self.samplerate, self.channels, self.dtype, self.device = samplerate, channels, dtype, device
        self.blocksize, self.callback = blocksize, callback
        self.closed = False
        FakeStream.opened.append(self)

    def start(self):
        def run():
            for i in range(5):
                block = np.full((self.blocksize, self.channels), 0.1 * i, np.float32)
                if self.channels > 1:
                    block[:, 1] = 0.3
                self.callback(block, self.blocksize, None, types.SimpleNamespace(input_overflow=i == 2))
        thread = threading.Thread(target=run)
        thread.start()
        thread.join()

    def stop(self):
        pass

    def close(self):
        self.closed = True


def fake_sounddevice():
    module = types.ModuleType("sounddevice")
    module.InputStream = FakeStream
    module.query_devices = lambda device, kind: {"default_samplerate": 44100.0}
    return module


def test_microphone_blocks_reach_the_callback_as_mono(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", fake_sounddevice())
    received = []
    source = MicrophoneSource(lambda samples, rate: received.append((samples, rate)), device="2", sample_rate=0,
                              channels=2, block_s=0.01)
    source.start()
    stream = FakeStream.opened[-1]
    assert (stream.samplerate, stream.device, stream.blocksize, stream.dtype) == (44100, 2, 441, "float32")
    assert [rate for _, rate in received] == [44100] * 5
    np.testing.assert_allclose([samples.mean() for samples, _ in received], [(0.1 * i + 0.3) / 2 for i in range(5)],
                               atol=1e-6)
    assert all(samples.shape == (441,) and samples.dtype == np.float32 for samples, _ in received)
    assert source.overflows == 1
    source.stop()
    assert stream.closed


def test_microphone_without_sounddevice_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import raises ImportError
    with pytest.raises(MicrophoneError) as error:
        MicrophoneSource(lambda samples, rate: None).start()
    assert "pip install sounddevice" in str(error.value) and "libportaudio2" in str(error.value)


def test_microphone_that_cannot_open_is_a_clear_error(monkeypatch):
    module = fake_sounddevice()

    def refuse(**kwargs):
        raise ValueError("No input device matching 'usb mic'")
    module.InputStream = refuse
    monkeypatch.setitem(sys.modules, "sounddevice", module)
    with pytest.raises(MicrophoneError, match="usb mic"):
        MicrophoneSource(lambda samples, rate: None, device="usb mic").start()
