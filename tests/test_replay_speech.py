"""Offline replay of speech_node: a spoken command recorded in a bag with the camera stream reaches the concept
node of the same graph, which starts tracking the object from the next frame on."""
import numpy as np
import pytest
import yaml

from perception_fm.graph import load_graph
from perception_fm.replay.bag_io import BagReader, BagWriter
from perception_fm.replay.runner import ReplayError, replay
from perception_fm.replay.synthetic import TOPICS, SampleConfig, write_sample_bag
from perception_fm.ros.tf import ns_to_time, stamp_to_ns
from perception_fm.speech.audio import encode_audio
from scripted_segmentation import SAMPLE, use_in_default_manager
from test_speech_node import needs_espeak, speak, with_room_noise

CHUNK_S = 0.1
SPEECH_STARTS_S = 0.5  # bag time at which the audio starts


@pytest.fixture(scope="module", autouse=True)
def scripted_segmentation():
    use_in_default_manager()


def bag_with_audio(path, config: SampleConfig, audio: np.ndarray, rate: int, encoding: str = "S16LE"):
    """The sample bag plus `audio` as AudioData chunks on /audio from SPEECH_STARTS_S on; returns the log time
    of the last chunk."""
    plain = path.parent / f"{path.name}_plain"
    write_sample_bag(plain, config)
    step = int(CHUNK_S * rate)
    chunks = {}
    for index, start in enumerate(range(0, audio.shape[0], step)):
        stamp = config.start_ns + int((SPEECH_STARTS_S + index * CHUNK_S) * 1e9)
        message = encode_audio(audio[start:start + step], rate, encoding)
        message.header.stamp = ns_to_time(stamp)
        chunks[stamp] = message
    with BagReader(plain) as reader, BagWriter(path) as writer:
        pending = sorted(chunks)
        for item in reader.messages():
            while pending and pending[0] <= item.timestamp_ns:
                writer.write("/audio", chunks[pending[0]], pending[0])
                pending.pop(0)
            writer.write(item.topic, item.message, item.timestamp_ns, latched=item.topic == "/tf_static")
        for stamp in pending:
            writer.write("/audio", chunks[stamp], stamp)
    return max(chunks)


def graph(tmp_path, **speech_parameters):
    path = tmp_path / "graph.yaml"
    path.write_text(yaml.safe_dump({"nodes": {
        "speech_node": {"remappings": {"audio": "/audio", "concepts": "/concepts"},
                        "parameters": {"model": "pocketsphinx", "phrase_list": "red ball, blue box, grey cabinet",
                                       **speech_parameters}},
        "concept_node": {"remappings": {"image": TOPICS["image"], "concepts": "/concepts"},
                         "parameters": {"model": "scripted-segmentation", "concepts": "red ball",
                                        "confirmation_frames": 1, "publish_overlay": False}}}}))
    return load_graph(path)


@needs_espeak
def test_a_spoken_command_in_the_bag_adds_a_concept_from_the_next_frame_on(tmp_path):
    speech, rate = speak("segment the blue box")
    audio = with_room_noise(speech, rate)
    bag = tmp_path / "bag"
    last_chunk = bag_with_audio(bag, SAMPLE, audio, rate)
    report = replay(bag, graph(tmp_path), tmp_path / "out", progress=False)
    speech_report = next(n for n in report.nodes if n["node"] == "speech_node")
    assert speech_report["events"].get("commands") == 1 and speech_report["dropped"] == {}
    with BagReader(tmp_path / "out") as reader:
        messages = [(m.topic, m.timestamp_ns, m.message) for m in reader.messages()]
    transcripts = [m.data for topic, _, m in messages if topic == "/transcript"]
    concepts = [(log, m.data) for topic, log, m in messages if topic == "/concepts"]
    assert transcripts == ["segment the blue box"] and [text for _, text in concepts] == ["blue box"]
    heard_at = concepts[0][0]
    assert SAMPLE.start_ns + SPEECH_STARTS_S * 1e9 < heard_at <= last_chunk  # when the utterance ended
    arrays = [(stamp_to_ns(m.header.stamp), m) for topic, _, m in messages if topic == "/instances"]
    assert len(arrays) == SAMPLE.frames
    for stamp, array in arrays:  # the concept set changes with the first image after the command
        expected = ["red ball", "blue box"] if stamp >= heard_at else ["red ball"]
        assert list(array.concepts) == expected, stamp
    assert any("blue box" == i.concept for _, a in arrays for i in a.instances)


def test_bad_audio_chunks_are_counted_drops(tmp_path):
    bag = tmp_path / "bag"
    config = SampleConfig(width=32, height=24, frames=3)
    rate = 16000
    bag_with_audio(bag, config, np.zeros(rate // 2, np.float32), rate)
    broken = tmp_path / "broken"
    with BagReader(bag) as reader, BagWriter(broken) as writer:
        for item in reader.messages():
            if item.topic == "/audio" and stamp_to_ns(item.message.header.stamp) % 200_000_000 == 0:
                item.message.encoding = "MP3"
            writer.write(item.topic, item.message, item.timestamp_ns)
    path = tmp_path / "speech.yaml"
    path.write_text(yaml.safe_dump({"nodes": {"speech_node": {"remappings": {"audio": "/audio"},
                                                              "parameters": {"model": "pocketsphinx"}}}}))
    report = replay(broken, load_graph(path), tmp_path / "out", progress=False)
    node = report.nodes[0]
    assert node["frames"] == 5 and node["dropped"] == {"encoding": 2} and node["processed"] == 0
    assert "MP3" in node["errors"][0]


def test_a_bag_without_the_audio_topic_is_a_clear_error(tmp_path):
    bag = tmp_path / "bag"
    write_sample_bag(bag, SampleConfig(width=32, height=24, frames=2))
    with pytest.raises(ReplayError, match="'/audio', which is not in the bag"):
        replay(bag, graph(tmp_path), tmp_path / "out", progress=False)

