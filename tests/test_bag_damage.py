"""Damaged and non-bag inputs: every kind of damage is detected and reported with its byte offset, what precedes
it is still read, and `perception-fm replay` exits 2 with one line, never a traceback.

The bags are the synthetic sample re-written through BagWriter with small chunks, so that there are several
chunks (each with its CRC, as `ros2 bag record` writes them) and damage can fall between good data."""
import json
import random
import shutil

import pytest
import yaml

from perception_fm.cli import main
from perception_fm.replay.bag_io import BagReader, BagReadError, BagWriter
from perception_fm.replay.runner import REPORT_FILE
from perception_fm.replay.synthetic import SampleConfig, write_sample_bag

SAMPLE = SampleConfig(width=64, height=48, frames=8)
IMAGE_TOPIC = "/camera/color/image_raw"


def read_raw(path):
    """(topic, log time, CDR bytes) of every message, read by rosbags (a reader independent of ours)."""
    from rosbags.highlevel import AnyReader

    with AnyReader([path]) as reader:
        return [(c.topic, t, bytes(raw)) for c, t, raw in reader.messages()]


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    """`plain`: the sample as written by the synthetic writer; `chunked`: the same messages in 8 KiB chunks."""
    root = tmp_path_factory.mktemp("damage")
    plain = root / "plain"
    write_sample_bag(plain, SAMPLE)
    chunked = root / "chunked"
    with BagReader(plain) as reader, BagWriter(chunked, chunk_size=8 * 1024) as writer:
        for item in reader.messages():
            writer.write(item.topic, item.message, item.timestamp_ns, latched=item.topic == "/tf_static")
    return {"plain": plain, "chunked": chunked}


def mcap_of(bag):
    [path] = bag.glob("*.mcap")
    return path


def chunk_offsets(path):
    """Start offsets of the file's chunks, from its own index (read by mcap's reader, not ours)."""
    from mcap.reader import make_reader

    with open(path, "rb") as stream:
        return sorted(index.chunk_start_offset for index in make_reader(stream).get_summary().chunk_indexes)


def damaged_copy(bags, tmp_path, damage):
    """A copy of the chunked bag with `damage(bytearray) -> bytes` applied to its MCAP file."""
    copy = tmp_path / "damaged"
    shutil.copytree(bags["chunked"], copy)
    path = mcap_of(copy)
    path.write_bytes(damage(bytearray(path.read_bytes()), chunk_offsets(path)))
    return copy


def zero(data, start, length):
    data[start:start + length] = bytes(len(data[start:start + length]))
    return bytes(data)


def flip_bits(data, count, seed, low):
    rng = random.Random(seed)
    for _ in range(count):
        position = rng.randrange(low, len(data))
        data[position] ^= 1 << rng.randrange(8)
    return bytes(data)


DAMAGE = {
    "zero_4k_at_second_chunk": lambda data, chunks: zero(data, chunks[1], 4096),
    "zero_4k_at_first_chunk": lambda data, chunks: zero(data, chunks[0], 4096),
    "200_bit_flips": lambda data, chunks: flip_bits(data, 200, seed=9, low=chunks[0]),
    "zero_64k_block": lambda data, chunks: zero(data, len(data) // 3, 64 * 1024),
    "flipped_chunk_opcode": lambda data, chunks: (data.__setitem__(chunks[2], data[chunks[2]] ^ 0x01), bytes(data))[1],
    "truncated_to_half": lambda data, chunks: bytes(data[: len(data) // 2]),
    "truncated_to_1000_bytes": lambda data, chunks: bytes(data[:1000]),
    "truncated_to_8_bytes": lambda data, chunks: bytes(data[:8]),
    "empty": lambda data, chunks: b"",
    "garbage": lambda data, chunks: random.Random(3).randbytes(len(data)),
}


def read_until_error(bag):
    """(messages read, the BagReadError raised) whether the error comes when opening or while reading."""
    messages = []
    try:
        with BagReader(bag) as reader:
            for item in reader.messages():
                messages.append((item.topic, item.timestamp_ns))
    except BagReadError as error:
        return messages, error
    return messages, None


def test_the_chunked_bag_has_several_chunks_with_crcs(bags):
    from mcap.reader import make_reader

    with open(mcap_of(bags["chunked"]), "rb") as stream:
        summary = make_reader(stream).get_summary()
    assert len(summary.chunk_indexes) >= 6
    with open(mcap_of(bags["chunked"]), "rb") as stream:  # every chunk carries its CRC: damage is detectable
        from mcap.records import Chunk
        from mcap.stream_reader import StreamReader

        chunks = [r for r in StreamReader(stream, emit_chunks=True).records if isinstance(r, Chunk)]
    assert chunks and all(chunk.uncompressed_crc != 0 for chunk in chunks)


def test_an_intact_bag_reads_exactly_as_rosbags_reads_it(bags):
    for bag in bags.values():
        with BagReader(bag) as reader:
            ours = [(m.topic, m.timestamp_ns) for m in reader.messages()]
            assert reader.damage is None
        assert ours == [(topic, t) for topic, t, _ in read_raw(bag)]
    # re-chunking changed nothing but the chunks (compared as messages: CDR alignment padding is not defined)
    with BagReader(bags["plain"]) as plain, BagReader(bags["chunked"]) as chunked:
        assert [(m.topic, m.timestamp_ns, m.message) for m in plain.messages()] == \
            [(m.topic, m.timestamp_ns, m.message) for m in chunked.messages()]


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damage_is_detected_and_located(bags, tmp_path, kind):
    bag = damaged_copy(bags, tmp_path, DAMAGE[kind])
    intact = [(topic, t) for topic, t, _ in read_raw(bags["chunked"])]
    messages, error = read_until_error(bag)
    assert error is not None, f"{kind}: {len(messages)}/{len(intact)} messages read and no error"
    text = str(error)
    assert "byte" in text and (mcap_of(bag).name in text or str(bag) in text), text
    assert "\n" not in text
    assert messages == intact[: len(messages)]  # what was read is exactly the intact bag's beginning
    if kind.startswith("zero_4k_at_second") or kind == "truncated_to_half":
        assert 0 < len(messages) < len(intact)  # what precedes the damage is salvaged
    if kind in ("truncated_to_8_bytes", "truncated_to_1000_bytes", "empty", "garbage"):
        assert messages == []  # and said at open, not as "the topic is not in the bag"
        assert ("not an MCAP" in text or "damaged" in text or "empty" in text), text


def test_damage_report_names_topic_and_log_time_of_the_last_good_message(bags, tmp_path):
    bag = damaged_copy(bags, tmp_path, DAMAGE["zero_4k_at_second_chunk"])
    messages, error = read_until_error(bag)
    chunks = chunk_offsets(mcap_of(bag))
    assert f"byte {chunks[1]}" in str(error)
    topic, log_time = messages[-1]
    assert repr(topic) in str(error) and f"{log_time} ns" in str(error)


def test_a_directory_that_is_not_a_bag_is_a_clear_error(tmp_path):
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(BagReadError, match="no metadata.yaml.*no .mcap or .db3"):
        BagReader(tmp_path / "empty_dir")
    with pytest.raises(BagReadError, match="does not exist"):
        BagReader(tmp_path / "nope")


def test_a_bag_directory_without_metadata_is_read_from_its_mcap_files(bags, tmp_path):
    """A recorder killed before it wrote metadata.yaml leaves only the .mcap file."""
    copy = tmp_path / "no_metadata"
    shutil.copytree(bags["chunked"], copy)
    (copy / "metadata.yaml").unlink()
    with BagReader(copy) as reader:
        assert [(m.topic, m.timestamp_ns) for m in reader.messages()] == \
            [(topic, t) for topic, t, _ in read_raw(bags["chunked"])]


def config_file(tmp_path):
    config = tmp_path / "graph.yaml"
    config.write_text(yaml.safe_dump({"nodes": {"depth_node": {
        "remappings": {"image": IMAGE_TOPIC, "camera_info": "/camera/color/camera_info"},
        "parameters": {"process_res": 28}}}}))
    return config


def cli_replay(bag, tmp_path, out_name="out"):
    return main(["replay", str(bag), "--config", str(config_file(tmp_path)), "--out", str(tmp_path / out_name),
                 "--random-weights", "--quiet"])


def test_cli_replay_of_a_damaged_bag_writes_what_it_could_and_exits_2(bags, tmp_path, capsys):
    bag = damaged_copy(bags, tmp_path, DAMAGE["zero_4k_at_second_chunk"])
    assert cli_replay(bag, tmp_path) == 2
    printed = capsys.readouterr()
    assert "Traceback" not in printed.err
    assert "damaged at byte" in printed.err and "output holds everything before it" in printed.err
    report = json.loads((tmp_path / "out" / REPORT_FILE).read_text())
    assert "damaged at byte" in report["bag_error"]
    assert 0 < report["messages_in"] < len(read_raw(bags["chunked"]))


@pytest.mark.parametrize("kind", ["truncated_to_8_bytes", "truncated_to_1000_bytes", "empty", "garbage"])
def test_cli_replay_of_a_file_that_is_no_bag_is_one_line_and_exit_2(bags, tmp_path, capsys, kind):
    bag = damaged_copy(bags, tmp_path, DAMAGE[kind])
    assert cli_replay(bag, tmp_path) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "not in the bag" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("perception-fm: error:"), err


def test_cli_replay_of_a_missing_bag_is_one_line_and_exit_2(tmp_path, capsys):
    assert cli_replay(tmp_path / "no_such_bag", tmp_path) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "does not exist" in err


def test_cli_replay_of_an_intact_bag_exits_0(bags, tmp_path, capsys):
    assert cli_replay(bags["chunked"], tmp_path) == 0
    report = json.loads((tmp_path / "out" / REPORT_FILE).read_text())
    assert report["bag_error"] is None and report["messages_in"] == len(read_raw(bags["chunked"]))
    assert report["nodes"][0]["processed"] == SAMPLE.frames


def test_written_bags_carry_crcs_and_rosbags_reads_them(tmp_path):
    """What BagWriter writes (the replay's output) is protected the same way: chunk and summary CRCs."""
    from mcap.reader import make_reader
    from std_msgs.msg import String

    bag = tmp_path / "bag"
    with BagWriter(bag) as writer:
        for index in range(3):
            writer.write("/chatter", String(data=f"hello {index}"), 1_000 + index)
    assert [(topic, t) for topic, t, _ in read_raw(bag)] == [("/chatter", 1_000), ("/chatter", 1_001),
                                                              ("/chatter", 1_002)]
    from mcap.stream_reader import StreamReader

    with open(mcap_of(bag), "rb") as stream:  # validates chunk and data-section CRCs while reading
        records = list(StreamReader(stream, validate_crcs=True, emit_chunks=True).records)
    from mcap.records import Chunk, DataEnd, Footer

    assert all(r.uncompressed_crc for r in records if isinstance(r, Chunk))
    assert [r for r in records if isinstance(r, DataEnd)]
    assert [r.summary_crc for r in records if isinstance(r, Footer)][0] != 0
    with open(mcap_of(bag), "rb") as stream:
        assert make_reader(stream).get_summary().statistics.message_count == 3
