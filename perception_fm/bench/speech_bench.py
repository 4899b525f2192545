"""perception-fm bench speech: how many spoken commands come out right, through speech_node's own path.

Command sentences are spoken by espeak-ng (Debian package espeak-ng; not run where it is missing), wrapped in
quiet room noise, and fed in 0.1 s chunks to the speech node's voice-activity detector and listener (the code
the node and the replay share) with PocketSphinx constrained to the command grammar over the phrase list. An
utterance is right when the `concepts` messages it gives equal those the command parser gives for the
sentence's text; otherwise it is a miss (no command at all, or a wrong one). Figures, not a test.

    perception-fm bench speech [--voices en-us+f2] [--speeds 150] [--seeds 0]       (20 utterances, ~1 min)
    perception-fm bench speech --voices en-us+f2,en-us --speeds 130,150,175 --seeds 0,1,2
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import time
import wave

import numpy as np

PHRASES = "red cup, chair, mug, person, people, laptop, bottle, keyboard"
SENTENCES = (
    "segment the red cup and the chair", "stop tracking the chair", "track the person", "find the laptop",
    "segment the bottle", "clear", "track the mug and the keyboard", "forget the mug", "find people",
    "segment the keyboard", "stop tracking the person", "track the red cup", "find the chair and the bottle",
    "forget the laptop", "segment the person and the laptop", "track the bottle", "stop tracking the keyboard",
    "find the mug", "segment the chair", "forget the red cup",
)


def speak(text: str, voice: str, speed: int) -> tuple[np.ndarray, int]:
    """espeak-ng's voice for `text`: mono float32 and its sample rate."""
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text], capture_output=True,
                         check=True, timeout=60).stdout
    with wave.open(io.BytesIO(wav)) as reader:
        rate = reader.getframerate()
    samples = wav[44:len(wav) - (len(wav) - 44) % 2]  # piped WAVs carry no sizes: the samples follow the header
    return np.frombuffer(samples, dtype="<i2").astype(np.float32) / 32768.0, rate


def with_room_noise(speech: np.ndarray, rate: int, seed: int) -> np.ndarray:
    """0.6 s before and 1.5 s after the speech (the VAD learns the noise floor and hears the end), -60 dBFS
    hiss throughout."""
    rng = np.random.default_rng(seed)
    audio = np.concatenate([np.zeros(int(0.6 * rate), np.float32), speech, np.zeros(int(1.5 * rate), np.float32)])
    return (audio + rng.normal(0.0, 1e-3, audio.size)).astype(np.float32)


def run(voices=("en-us+f2",), speeds=(150,), seeds=(0,), sentences=SENTENCES, phrases: str = PHRASES) -> dict:
    from perception_fm.hookspecs import ModelOptions, Task
    from perception_fm.nodes.params import resolve
    from perception_fm.plugin_manager import PluginManager
    from perception_fm.speech.commands import parse_commands, to_concepts_message
    from perception_fm.speech.listener import listen
    from perception_fm.speech.params import SPEECH_PARAMS, parse_phrase_list
    from perception_fm.speech.vad import EnergyVad, vad_config_from

    values = resolve(SPEECH_PARAMS, {})  # the node's defaults
    phrase_list = parse_phrase_list(phrases)
    model = PluginManager(entry_points=False).create(Task.SPEECH, "pocketsphinx", ModelOptions(
        device="cpu", extra={"language": "en", "phrase_list": phrases}))
    rows, misses = [], []
    started = time.perf_counter()
    for voice in voices:
        for speed in speeds:
            for seed in seeds:
                right = 0
                for sentence in sentences:
                    expected = [to_concepts_message(c) for c in parse_commands(sentence)]
                    speech, rate = speak(sentence, voice, speed)
                    audio = with_room_noise(speech, rate, seed)
                    vad = EnergyVad(vad_config_from(values))
                    utterances = []
                    step = int(0.1 * rate)
                    for start in range(0, audio.size, step):
                        utterances += vad.feed(audio[start:start + step], rate)
                    utterances += vad.flush()
                    heard = [listen(model, u, phrase_list, float(values["min_confidence"])) for u in utterances]
                    got = [text for h in heard for text in h.concepts_messages]
                    if got == expected:
                        right += 1
                    else:
                        misses.append({"voice": voice, "speed": speed, "seed": seed, "said": sentence,
                                       "heard": [h.text for h in heard], "expected": expected, "got": got})
                rows.append({"voice": voice, "speed": speed, "seed": seed, "right": right,
                             "utterances": len(sentences)})
                print(f"  {voice} {speed} wpm seed {seed}: {right}/{len(sentences)} right", flush=True)
    right, total = sum(r["right"] for r in rows), sum(r["utterances"] for r in rows)
    return {"model": "pocketsphinx", "phrases": list(phrase_list), "rows": rows, "right": right, "utterances": total,
            "misses": misses, "wall_s": time.perf_counter() - started}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="perception-fm bench speech", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voices", default="en-us+f2", help="espeak-ng voices, comma-separated")
    parser.add_argument("--speeds", default="150", help="words per minute, comma-separated")
    parser.add_argument("--seeds", default="0", help="room-noise seeds, comma-separated")
    parser.add_argument("--json", help="also write the result to this file")
    parser.add_argument("--save", action="store_true", help="put the result into bench/results/<device>.json")
    args = parser.parse_args(argv)
    if shutil.which("espeak-ng") is None:
        print("bench speech: espeak-ng is not installed (Debian package espeak-ng); nothing measured")
        return 1
    voices = [v for v in args.voices.split(",") if v]
    result = run(voices, [int(v) for v in args.speeds.split(",") if v], [int(v) for v in args.seeds.split(",") if v])
    for voice in voices:
        rows = [r for r in result["rows"] if r["voice"] == voice]
        right, total = sum(r["right"] for r in rows), sum(r["utterances"] for r in rows)
        print(f"{voice}: {right} of {total} commands right ({100 * right / total:.0f} %)")
    for miss in result["misses"]:
        print(f"  miss ({miss['voice']}, {miss['speed']} wpm, seed {miss['seed']}): said {miss['said']!r}, heard "
              f"{miss['heard']}, concepts {miss['got']} instead of {miss['expected']}")
    print(f"{result['right']} of {result['utterances']} right in {result['wall_s']:.0f} s")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    if args.save:
        from perception_fm.bench.common import save_section

        print(f"wrote {save_section('speech', result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
