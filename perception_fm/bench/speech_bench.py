"""perception-fm bench speech: how often spoken commands come out right, and how often as the opposite intent.

A corpus of command phrasings (CORPUS: adds, removes, replaces and clears in the forms people use, with
articles, quantifiers, plurals and several objects, and speech that is no command at all) is spoken by
espeak-ng (Debian package espeak-ng; nothing is measured where it is missing) in several voices and speeds,
with room noise (low-passed noise with a mains hum, at a given speech-to-noise ratio) throughout, and fed in
0.1 s chunks through the speech node's own voice-activity detector and listener (the code the node and the
replay share), with its default confidence thresholds.

Each utterance is one of:
  right     the `concepts` messages equal those the parser gives for the sentence's text with the phrase
            list (none for speech that is no command);
  rejected  a command was said and nothing was published (not understood, or not heard): nothing changes;
  wrong     commands of the intended operation(s) but other objects, or an add heard in a non-command;
  opposite  a published command whose operation was not meant (e.g. "track" published as a removal, or any
            removal, replacement or clear from speech that was no command): what must never happen.
Figures, not a test.

    perception-fm bench speech                       quick: a stratified third of the corpus, 3 voices, 1 speed
    perception-fm bench speech --full                every phrasing x 6 voices x 2 speeds x 2 noise levels
    perception-fm bench speech --voices en-us,en-gb --speeds 130,170 --snr 20,10
    perception-fm bench speech --model whisper --weights openai/whisper-small.en   (the same with Whisper)
"""
from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import subprocess
import time
import wave
from collections import Counter

import numpy as np

from perception_fm.speech.intents import ADD, CLEAR, REMOVE, REPLACE

NONE = "none"  # speech that is no command
PHRASES = "person, bottle, chair, cup, red cup, laptop, box, keyboard, backpack, dog"
# Phrasings written for this benchmark (not the tests' sentences): (intent, what is said).
CORPUS = (
    (ADD, "track the person"), (ADD, "find the bottle"), (ADD, "look for the red cup"),
    (ADD, "show me the chairs"), (ADD, "where is the laptop"), (ADD, "where are the boxes"),
    (ADD, "segment the keyboard and the backpack"), (ADD, "detect every dog"), (ADD, "highlight all the bottles"),
    (ADD, "follow that person"), (ADD, "can you find the cup please"), (ADD, "could you track the backpack"),
    (ADD, "I want you to segment the chair"), (ADD, "please look for any laptop"), (ADD, "track every person"),
    (ADD, "can you segment the chair"), (ADD, "search for the red cup and the bottle"),
    (ADD, "start tracking the dog"), (ADD, "find the box, the cup and the laptop"),
    (ADD, "would you please detect the keyboards"), (ADD, "okay robot, find my backpack"),
    (ADD, "locate the bottle"), (ADD, "keep track of the dogs"), (ADD, "I would like you to highlight the laptop"),
    (ADD, "spot the cups"), (ADD, "show me every box"), (ADD, "track the people"),
    (ADD, "detect the chair as well as the dog"), (ADD, "hey robot, where is my cup"), (ADD, "focus on the keyboard"),
    (REMOVE, "stop tracking the person"), (REMOVE, "forget the bottle"), (REMOVE, "ignore the chairs"),
    (REMOVE, "drop the box"), (REMOVE, "remove the laptop"), (REMOVE, "don't track the dog"),
    (REMOVE, "stop looking for the red cup"), (REMOVE, "please stop following the person"),
    (REMOVE, "forget about the keyboard and the backpack"), (REMOVE, "no longer track the cups"),
    (REMOVE, "stop segmenting the boxes"), (REMOVE, "can you remove the bottle please"), (REMOVE, "delete the chair"),
    (REMOVE, "get rid of the backpack"), (REMOVE, "stop detecting the dogs"), (REMOVE, "ignore every laptop"),
    (REMOVE, "do not follow the person anymore"), (REMOVE, "stop highlighting the keyboard"),
    (REPLACE, "only track the person"), (REPLACE, "track only the bottles"), (REPLACE, "find just the red cup"),
    (REPLACE, "segment only the chair and the box"), (REPLACE, "track the dog instead"),
    (REPLACE, "only look for the laptop"), (REPLACE, "please only detect the cups"),
    (REPLACE, "follow the person only"), (REPLACE, "now only segment the keyboard"),
    (REPLACE, "highlight only the backpack"), (REPLACE, "can you only find the boxes"),
    (REPLACE, "show me only the dogs"),
    (CLEAR, "clear"), (CLEAR, "reset"), (CLEAR, "stop everything"), (CLEAR, "clear everything"),
    (CLEAR, "stop tracking everything"), (CLEAR, "forget everything"), (CLEAR, "start over"),
    (CLEAR, "please clear all"), (CLEAR, "remove everything"), (CLEAR, "reset everything please"),
    (CLEAR, "okay robot, stop everything"),
    (NONE, "what a nice day it is"), (NONE, "open the door please"), (NONE, "how are you today"),
    (NONE, "turn on the light"), (NONE, "I like coffee in the morning"), (NONE, "tell me about the weather"),
    (NONE, "thank you very much"), (NONE, "move forward and turn left"), (NONE, "play some music"),
    (NONE, "the cat is sleeping on the sofa"), (NONE, "can you hear me"), (NONE, "it is cold in here"),
)
INTENT_NAMES = (ADD, REMOVE, REPLACE, CLEAR, NONE)
QUICK = {"voices": ("en-us", "en-us+f2", "en-gb"), "speeds": (150,), "snr": (15,), "fraction": 1 / 3}
FULL = {"voices": ("en-us", "en-us+f2", "en-us+f5", "en-us+m3", "en-gb", "en-gb-x-rp"), "speeds": (130, 170),
        "snr": (20, 10), "fraction": 1.0}
US_VOICES = ("en-us", "en-us+")  # the voices the target (>= 95 % right, 0 opposite) is about


def speak(text: str, voice: str, speed: int) -> tuple[np.ndarray, int]:
    """espeak-ng's voice for `text`: mono float32 and its sample rate."""
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text], capture_output=True,
                         check=True, timeout=60).stdout
    with wave.open(io.BytesIO(wav)) as reader:
        rate = reader.getframerate()
    samples = wav[44:len(wav) - (len(wav) - 44) % 2]  # piped WAVs carry no sizes: the samples follow the header
    return np.frombuffer(samples, dtype="<i2").astype(np.float32) / 32768.0, rate


def room_noise(size: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-power room noise: white noise low-passed (ventilation rumble, most power below ~1 kHz) plus a
    50 Hz hum with harmonics."""
    white = rng.standard_normal(size + 64)
    kernel = np.exp(-np.arange(64) / 8.0)  # a one-pole-like low pass
    rumble = np.convolve(white, kernel / kernel.sum(), mode="valid")[:size]
    t = np.arange(size) / rate
    hum = sum(np.sin(2 * np.pi * 50 * k * t + rng.uniform(0, 6.3)) / k for k in (1, 2, 3))
    noise = rumble / rumble.std() + 0.3 * hum / hum.std()
    return (noise / noise.std()).astype(np.float32)


def with_room_noise(speech: np.ndarray, rate: int, seed: int, snr_db: float | None = None) -> np.ndarray:
    """0.6 s before and 1.5 s after the speech (the VAD learns the noise floor and hears the end). With
    `snr_db`: room noise throughout at that speech-to-noise power ratio (speech power over its voiced
    samples); without: -60 dBFS hiss."""
    rng = np.random.default_rng(seed)
    audio = np.concatenate([np.zeros(int(0.6 * rate), np.float32), speech, np.zeros(int(1.5 * rate), np.float32)])
    if snr_db is None:
        return (audio + rng.normal(0.0, 1e-3, audio.size)).astype(np.float32)
    voiced = speech[np.abs(speech) > 0.02 * np.abs(speech).max()]
    speech_power = float(np.mean(voiced ** 2)) if voiced.size else 1e-6
    noise = room_noise(audio.size, rate, rng) * np.sqrt(speech_power / 10 ** (snr_db / 10))
    return np.clip(audio + noise, -1.0, 1.0).astype(np.float32)


def select(corpus, fraction: float, seed: int = 0):
    """A stratified sample: `fraction` of each intent's phrasings (at least 2), the same ones every run."""
    if fraction >= 1.0:
        return list(corpus)
    rng = random.Random(seed)
    chosen = []
    for intent in INTENT_NAMES:
        items = [item for item in corpus if item[0] == intent]
        chosen += rng.sample(items, max(2, round(fraction * len(items))))
    return chosen


def judge(intent: str, expected: list[str], got: list[str], expected_ops: set[str], got_ops: set[str]) -> str:
    if got == expected:
        return "right"
    if not got:
        return "rejected"
    if got_ops - expected_ops and (intent == NONE and got_ops - {ADD} or intent != NONE):
        return "opposite"
    return "wrong"


def check_corpus(corpus, phrases) -> None:
    """Each phrasing must parse (as text) as its labelled intent; a mislabelled corpus would mismeasure."""
    from perception_fm.speech.commands import parse_commands

    for intent, sentence in corpus:
        operations = {c.operation for c in parse_commands(sentence, phrases)}
        if operations != ({intent} if intent != NONE else set()):
            raise ValueError(f"corpus: {sentence!r} is labelled {intent} but parses as {sorted(operations)}")


def create_model(name: str, weights: str, phrases: str, device: str):
    from perception_fm.hookspecs import ModelOptions, Task
    from perception_fm.plugin_manager import PluginManager

    return PluginManager(entry_points=False).create(Task.SPEECH, name, ModelOptions(
        device=device, weights=weights, extra={"language": "en", "phrase_list": phrases}))


def run(voices=QUICK["voices"], speeds=QUICK["speeds"], snrs=QUICK["snr"], fraction=QUICK["fraction"],
        corpus=CORPUS, phrases: str = PHRASES, model_name: str = "pocketsphinx", weights: str = "",
        device: str = "cpu", seed: int = 0, log=print) -> dict:
    from perception_fm.nodes.params import resolve
    from perception_fm.speech.commands import parse_commands, to_concepts_message
    from perception_fm.speech.listener import listen
    from perception_fm.speech.params import SPEECH_PARAMS, parse_phrase_list
    from perception_fm.speech.vad import EnergyVad, vad_config_from

    values = resolve(SPEECH_PARAMS, {})  # the node's defaults, thresholds included
    phrase_list = parse_phrase_list(phrases)
    check_corpus(corpus, phrase_list)
    sentences = select(corpus, fraction, seed)
    model = create_model(model_name, weights, phrases, device)
    counts: dict[tuple, Counter] = {}
    misses, confidences = [], []
    started = time.perf_counter()
    for voice in voices:
        for speed in speeds:
            spoken = {sentence: speak(sentence, voice, speed) for _, sentence in sentences}
            for snr in snrs:
                tally = counts.setdefault((voice, speed, snr), Counter())
                for index, (intent, sentence) in enumerate(sentences):
                    expected_commands = parse_commands(sentence, phrase_list)
                    expected = [to_concepts_message(c) for c in expected_commands]
                    speech, rate = spoken[sentence]
                    audio = with_room_noise(speech, rate, seed=hash((seed, index, speed)) % 2**32, snr_db=snr)
                    vad = EnergyVad(vad_config_from(values))
                    utterances = []
                    step = int(0.1 * rate)
                    for start in range(0, audio.size, step):
                        utterances += vad.feed(audio[start:start + step], rate)
                    utterances += vad.flush()
                    heard = [listen(model, u, phrase_list, float(values["min_confidence"]),
                                    float(values["destructive_min_confidence"])) for u in utterances]
                    got_commands = [c for h in heard for c in h.commands]
                    got = [to_concepts_message(c) for c in got_commands]
                    verdict = judge(intent, expected, got, {c.operation for c in expected_commands},
                                    {c.operation for c in got_commands})
                    tally[(intent, verdict)] += 1
                    for h in heard:  # for choosing thresholds: the confidence of each command heard
                        for command in h.commands or h.rejected:
                            confidences.append({"intent": intent, "heard": command.operation,
                                                "confidence": h.confidence,
                                                "correct": command in expected_commands})
                    if verdict != "right":
                        misses.append({"voice": voice, "speed": speed, "snr_db": snr, "said": sentence,
                                       "intent": intent, "verdict": verdict, "expected": expected, "got": got,
                                       "heard": [h.transcript_message for h in heard],
                                       "confidence": [h.confidence for h in heard]})
                right = sum(n for (_, v), n in tally.items() if v == "right")
                log(f"  {voice} {speed} wpm {snr} dB SNR: {right}/{len(sentences)} right, "
                    f"{sum(n for (_, v), n in tally.items() if v == 'opposite')} opposite", flush=True)
    rows = []
    for (voice, speed, snr), tally in counts.items():
        row = {"voice": voice, "speed": speed, "seed": seed, "snr_db": snr,
               "utterances": sum(tally.values())}
        for verdict in ("right", "rejected", "wrong", "opposite"):
            row[verdict] = sum(n for (_, v), n in tally.items() if v == verdict)
        row["by_intent"] = {intent: {verdict: n for (i, verdict), n in tally.items() if i == intent}
                            for intent in INTENT_NAMES}
        rows.append(row)
    total = {verdict: sum(r[verdict] for r in rows) for verdict in ("right", "rejected", "wrong", "opposite")}
    return {"model": model_name, "weights": getattr(model, "weights", weights), "phrases": list(phrase_list),
            "corpus_phrasings": len(corpus), "phrasings_used": len(sentences),
            "thresholds": {"min_confidence": values["min_confidence"],
                           "destructive_min_confidence": values["destructive_min_confidence"]},
            "rows": rows, **total, "utterances": sum(r["utterances"] for r in rows),
            "misses": misses, "confidences": confidences, "wall_s": time.perf_counter() - started}


def summarise(result: dict, key: str) -> dict[str, Counter]:
    groups: dict[str, Counter] = {}
    for row in result["rows"]:
        if key == "voice":
            groups.setdefault(row["voice"], Counter()).update(
                {v: row[v] for v in ("utterances", "right", "rejected", "wrong", "opposite")})
        else:
            for intent, verdicts in row["by_intent"].items():
                counter = groups.setdefault(intent, Counter())
                counter.update(verdicts)
                counter["utterances"] += sum(verdicts.values())
    return groups


def report(result: dict) -> str:
    lines = []
    for key in ("voice", "intent"):
        lines.append(f"{'per ' + key:<14} {'right':>12} {'rejected':>9} {'wrong':>6} {'opposite':>9}")
        for name, c in summarise(result, key).items():
            n = c["utterances"]
            if n:
                lines.append(f"{name:<14} {c['right']:>4}/{n:<4} {100 * c['right'] / n:3.0f}% {c['rejected']:>9} "
                             f"{c['wrong']:>6} {c['opposite']:>9}")
    us = [r for r in result["rows"] if r["voice"].startswith(US_VOICES)]
    if us:
        right, n = sum(r["right"] for r in us), sum(r["utterances"] for r in us)
        lines.append(f"en-us voices: {right}/{n} right ({100 * right / n:.1f} %), "
                     f"{sum(r['opposite'] for r in us)} opposite intent (target: >= 95 %, 0)")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="perception-fm bench speech", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="the whole corpus, 6 voices, 2 speeds, 2 noise levels")
    parser.add_argument("--voices", help="espeak-ng voices, comma-separated")
    parser.add_argument("--speeds", help="words per minute, comma-separated")
    parser.add_argument("--snr", help="speech-to-noise ratios in dB, comma-separated ('none': a quiet hiss)")
    parser.add_argument("--fraction", type=float, help="share of the corpus (stratified by intent), 0-1")
    parser.add_argument("--seed", type=int, default=0, help="noise and sampling seed")
    parser.add_argument("--model", default="pocketsphinx", help="speech plugin (pocketsphinx, whisper)")
    parser.add_argument("--weights", default="", help="the plugin's weights (whisper: hub id or directory)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--misses", action="store_true", help="print every utterance that was not right")
    parser.add_argument("--json", help="also write the result to this file")
    parser.add_argument("--save", action="store_true", help="put the result into bench/results/<device>.json")
    args = parser.parse_args(argv)
    if shutil.which("espeak-ng") is None:
        print("bench speech: espeak-ng is not installed (Debian package espeak-ng); nothing measured")
        return 1
    preset = FULL if args.full else QUICK
    voices = args.voices.split(",") if args.voices else preset["voices"]
    speeds = [int(v) for v in args.speeds.split(",")] if args.speeds else preset["speeds"]
    snrs = [None if v == "none" else float(v) for v in args.snr.split(",")] if args.snr else preset["snr"]
    fraction = args.fraction if args.fraction is not None else preset["fraction"]
    result = run(voices, speeds, snrs, fraction, model_name=args.model, weights=args.weights, device=args.device,
                 seed=args.seed)
    if args.misses:
        for miss in result["misses"]:
            print(f"  {miss['verdict']} ({miss['voice']}, {miss['speed']} wpm, {miss['snr_db']} dB): said "
                  f"{miss['said']!r}, heard {miss['heard']} {miss['confidence']}, concepts {miss['got']} "
                  f"instead of {miss['expected']}")
    print(report(result))
    print(f"{result['right']} of {result['utterances']} right, {result['rejected']} rejected, {result['wrong']} "
          f"wrong, {result['opposite']} opposite intent, in {result['wall_s']:.0f} s")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    if args.save:
        from perception_fm.bench.common import save_section

        saved = dict(result)
        saved.pop("confidences")  # the per-command confidences are for --json; the result file keeps figures
        print(f"wrote {save_section('speech', saved)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
