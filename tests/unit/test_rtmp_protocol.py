from __future__ import annotations

import contextlib
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from origin import amf0
from origin.rtmp_chunk import ChunkReader, ChunkWriter, Message, MessageType
from origin.rtmp_protocol import (
    HANDSHAKE_SIZE,
    ConnectRequest,
    HandshakeComplete,
    MediaMessage,
    PlayRequest,
    PublishRequest,
    RtmpProtocolError,
    RtmpServerConnection,
    StreamMetadata,
    UnpublishRequest,
    UnsupportedCommand,
)
from tests.rtmp_client import ScriptedPublisher, handshake_c0c1, handshake_c2

KEY = "stream_abc_secret"
AVC_SEQ = bytes([0x17, 0, 0, 0, 0]) + b"\x01\x64\x00\x1f\xff\xe1"
AVC_FRAME = bytes([0x27, 1, 0, 0, 0x28]) + b"\x00\x00\x00\x02\x41\x9a"


def server_messages(data: bytes) -> list[Message]:
    reader = ChunkReader()
    return reader.feed(data)


def decode_commands(data: bytes) -> list[list[Any]]:
    out = []
    for m in server_messages(data):
        if m.type_id == MessageType.COMMAND_AMF0:
            out.append(amf0.decode(m.payload))
    return out


def obs_session_bytes(unpublish: bool = True) -> tuple[bytes, bytes]:
    """(handshake, everything after) for an OBS-like publish with media and unpublish."""
    pub = ScriptedPublisher(chunk_size=4096).obs_connect_sequence(KEY)
    pub.obs_publish_sequence(KEY)
    pub.data(
        "@setDataFrame",
        "onMetaData",
        amf0.EcmaArray(width=1280.0, height=720.0, framerate=30.0, encoder="obs-output module"),
    )
    pub.media(MessageType.VIDEO, 0, AVC_SEQ)
    pub.media(MessageType.VIDEO, 33, AVC_FRAME)
    pub.media(MessageType.VIDEO, 0x01000000, AVC_FRAME)  # needs an extended timestamp
    if unpublish:
        pub.command("FCUnpublish", 6.0, None, KEY)
        pub.command("deleteStream", 7.0, None, 1.0)
    return handshake_c0c1(), pub.take()


def run_session(chunks: list[bytes]) -> tuple[RtmpServerConnection, list[Any]]:
    """Drive a server through a scripted session, accepting connect and publish."""
    conn = RtmpServerConnection(clock=lambda: 99, random_bytes=lambda n: b"\x07" * n)
    events: list[Any] = []
    for chunk in chunks:
        batch = conn.receive_data(chunk)
        while batch:
            for event in batch:
                events.append(event)
                if isinstance(event, ConnectRequest):
                    conn.accept_connect(event.transaction_id)
                elif isinstance(event, PublishRequest):
                    conn.accept_publish(event.stream_id)
            batch = conn.receive_data(b"") if conn.has_pending else []
    return conn, events


def full_session(unpublish: bool = True) -> bytes:
    c0c1, body = obs_session_bytes(unpublish)
    s1 = b"\x00\x00\x00\x63" + bytes(4) + b"\x07" * (HANDSHAKE_SIZE - 8)
    return c0c1 + handshake_c2(s1) + body


def summarize(events: list[Any]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for e in events:
        if isinstance(e, MediaMessage):
            out.append(("media", (e.kind, e.timestamp, e.payload)))
        elif isinstance(e, StreamMetadata):
            out.append(("meta", e.metadata["width"]))
        else:
            out.append((type(e).__name__, getattr(e, "stream_key", None)))
    return out


def test_handshake_timing_fields() -> None:
    conn = RtmpServerConnection(clock=lambda: 4242, random_bytes=lambda n: b"\xaa" * n)
    c0c1 = handshake_c0c1()
    events = conn.receive_data(c0c1)
    assert events == [HandshakeComplete(client_time=1234, client_version=bytes(4))]
    out = conn.data_to_send()
    assert len(out) == 1 + 2 * HANDSHAKE_SIZE
    assert out[0] == 3
    s1, s2 = out[1 : 1 + HANDSHAKE_SIZE], out[1 + HANDSHAKE_SIZE :]
    assert int.from_bytes(s1[:4], "big") == 4242  # S1 time: ours
    assert s1[4:8] == bytes(4)  # zero: plain handshake
    assert int.from_bytes(s2[:4], "big") == 1234  # S2 time: echo of C1 time
    assert int.from_bytes(s2[4:8], "big") == 4242  # S2 time2: when we read C1
    assert s2[8:] == c0c1[9:]  # S2 random echo of C1's


def test_rejects_other_rtmp_versions() -> None:
    conn = RtmpServerConnection()
    with pytest.raises(RtmpProtocolError, match="unsupported RTMP version 6"):
        conn.receive_data(b"\x06" + bytes(HANDSHAKE_SIZE))
    assert conn.closed


def test_obs_like_sequence_whole_bytewise_and_with_trailing() -> None:
    data = full_session()
    _, whole = run_session([data])
    _, bytewise = run_session([data[i : i + 1] for i in range(len(data))])
    rnd = random.Random(7)
    cuts = sorted(rnd.sample(range(1, len(data)), 40))
    _, split = run_session([data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)])
    assert summarize(whole) == summarize(bytewise) == summarize(split)
    names = [name for name, _ in summarize(whole)]
    assert names == [
        "HandshakeComplete",
        "ConnectRequest",
        "PublishRequest",
        "meta",
        "media",
        "media",
        "media",
        "UnpublishRequest",
    ]
    publish = next(e for e in whole if isinstance(e, PublishRequest))
    assert publish.stream_key == KEY and publish.publish_type == "live"
    media = [e for e in whole if isinstance(e, MediaMessage)]
    assert [m.timestamp for m in media] == [0, 33, 0x01000000]
    assert media[2].payload == AVC_FRAME


def test_server_replies_to_the_obs_sequence() -> None:
    conn, _ = run_session([full_session()])
    out = conn.data_to_send()[1 + 2 * HANDSHAKE_SIZE :]
    messages = server_messages(out)
    types = [m.type_id for m in messages]
    assert types[:3] == [
        MessageType.WINDOW_ACK_SIZE,
        MessageType.SET_PEER_BANDWIDTH,
        MessageType.SET_CHUNK_SIZE,
    ]
    commands = decode_commands(out)
    assert commands[0][0] == "_result" and commands[0][3]["code"] == "NetConnection.Connect.Success"
    assert [c[0] for c in commands[1:4]] == ["_result"] * 3  # releaseStream, FCPublish, create
    assert commands[3][3] == 1.0  # createStream -> stream id 1
    assert commands[4][0] == "onStatus" and commands[4][3]["code"] == "NetStream.Publish.Start"


def test_publish_rejected_with_bad_name_then_closed() -> None:
    conn = RtmpServerConnection()
    c0c1, body = obs_session_bytes()
    conn.receive_data(c0c1)
    s = conn.data_to_send()
    events = conn.receive_data(handshake_c2(s[1 : 1 + HANDSHAKE_SIZE]) + body)
    # Everything after connect waits for our decision, even if pipelined in one read.
    assert not any(isinstance(e, PublishRequest) for e in events)
    connect = next(e for e in events if isinstance(e, ConnectRequest))
    conn.accept_connect(connect.transaction_id)
    assert conn.has_pending
    events = conn.receive_data(b"")
    publish = next(e for e in events if isinstance(e, PublishRequest))
    assert not any(isinstance(e, MediaMessage) for e in events)
    conn.reject_publish(publish.stream_id, "publish refused: unknown stream key")
    assert conn.closed
    status = decode_commands(conn.data_to_send())[-1]
    assert status[0] == "onStatus"
    assert status[3]["code"] == "NetStream.Publish.BadName"
    assert status[3]["level"] == "error"


def handshaken() -> RtmpServerConnection:
    conn = RtmpServerConnection()
    conn.receive_data(handshake_c0c1())
    s = conn.data_to_send()
    conn.receive_data(handshake_c2(s[1 : 1 + HANDSHAKE_SIZE]))
    return conn


@pytest.mark.parametrize(
    ("payload_builder", "message"),
    [
        (lambda w: w.write(Message(1, 0, 0, (0).to_bytes(4, "big")), 2), "absurd chunk size 0"),
        (
            lambda w: w.write(Message(1, 0, 0, (0x80000000).to_bytes(4, "big")), 2),
            "absurd chunk size",
        ),
        (lambda w: bytes([0x43]) + bytes(3), "without a type-0 header"),
        (lambda w: w.write(Message(20, 0, 0, b"\x42"), 3), "unknown AMF0 type"),
        (
            lambda w: w.write(Message(20, 0, 0, amf0.encode("publish", 5.0, None, "k")), 3),
            "before a successful connect",
        ),
        (lambda w: w.write(Message(9, 1, 0, b"\x17\x00"), 6), "not publishing"),
        (lambda w: bytes([0x06]) + bytes([0, 0, 0]) + b"\xff\xff\xff\x09" + bytes(4), "exceeds"),
    ],
)
def test_malformed_input_closes_with_clear_error(payload_builder: Any, message: str) -> None:
    conn = handshaken()
    with pytest.raises(RtmpProtocolError, match=message):
        conn.receive_data(payload_builder(ChunkWriter()))
    assert conn.closed


def test_acknowledgement_after_peer_window() -> None:
    conn = handshaken()
    pub = ScriptedPublisher()
    pub.control(MessageType.WINDOW_ACK_SIZE, (4096).to_bytes(4, "big"))
    conn.receive_data(pub.take())
    conn.data_to_send()
    pub.control(MessageType.USER_CONTROL, b"\x00\x03" + bytes(8))  # SetBufferLength
    for _ in range(40):
        pub.control(MessageType.ACKNOWLEDGEMENT, bytes(4))
    pub.data("onTextData", "x" * 4000, stream_id=0)  # dropped before publish, still counted
    conn.receive_data(pub.take() + bytes(0))
    acks = [m for m in server_messages(conn.data_to_send()) if m.type_id == 3]
    assert acks, "server must acknowledge once the peer's window is exceeded"
    assert int.from_bytes(acks[0].payload, "big") >= 4096


def test_ping_request_gets_response() -> None:
    conn = handshaken()
    pub = ScriptedPublisher()
    pub.control(MessageType.USER_CONTROL, b"\x00\x06" + (777).to_bytes(4, "big"))
    conn.receive_data(pub.take())
    (reply,) = server_messages(conn.data_to_send())
    assert reply.payload == b"\x00\x07" + (777).to_bytes(4, "big")


def test_unknown_command_gets_error_and_event() -> None:
    conn, _ = run_session([full_session()[: 1 + 2 * HANDSHAKE_SIZE]])
    pub = ScriptedPublisher().obs_connect_sequence(KEY)
    pub.command("seek", 9.0, None, 0.0)
    conn.data_to_send()
    (connect,) = conn.receive_data(pub.take())
    assert isinstance(connect, ConnectRequest)
    conn.accept_connect(connect.transaction_id)
    (event,) = conn.receive_data(b"")
    assert event == UnsupportedCommand("seek", 9.0)
    error = decode_commands(conn.data_to_send())[-1]
    assert error[0] == "_error" and "not supported" in error[3]["description"]


def test_aggregate_message_is_split_into_media() -> None:
    conn, _ = run_session([full_session(unpublish=False)])
    tag = bytes([9]) + len(AVC_FRAME).to_bytes(3, "big") + (100).to_bytes(3, "big") + b"\x00"
    tag += bytes(3) + AVC_FRAME + (11 + len(AVC_FRAME)).to_bytes(4, "big")
    tag2 = bytes([9]) + len(AVC_FRAME).to_bytes(3, "big") + (140).to_bytes(3, "big") + b"\x00"
    tag2 += bytes(3) + AVC_FRAME + (11 + len(AVC_FRAME)).to_bytes(4, "big")
    writer = ChunkWriter(4096)
    events = conn.receive_data(writer.write(Message(22, 1, 5000, tag + tag2), 6))
    assert [(e.timestamp, e.payload) for e in events if isinstance(e, MediaMessage)] == [
        (5000, AVC_FRAME),
        (5040, AVC_FRAME),
    ]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
@example(b"\x03" + bytes(1536) + bytes(1536) + b"\x02" + b"\xff" * 40)
@example(
    b"\x03" + bytes(3072) + b"\x02\x00\x00\x00\x00\x00\x04\x01\x00\x00\x00\x00\x7f\xff\xff\xff"
)
def test_fuzz_core_only_raises_protocol_error(raw: bytes) -> None:
    conn = RtmpServerConnection()
    try:
        conn.receive_data(raw)
    except RtmpProtocolError:
        assert conn.closed


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutated_session(data: st.DataObject) -> None:
    """Flip bytes of a valid session after the handshake: never a crash or hang."""
    session = bytearray(full_session())
    start = 1 + 2 * HANDSHAKE_SIZE
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(start, len(session) - 1))
        session[pos] = data.draw(st.integers(0, 255))
    with contextlib.suppress(RtmpProtocolError):
        run_session([bytes(session)])


def test_unpublish_event_for_delete_stream_only() -> None:
    _, events = run_session([full_session()])
    unpublish = [e for e in events if isinstance(e, UnpublishRequest)]
    assert len(unpublish) == 1 and unpublish[0].reason == "FCUnpublish"


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_fuzz_publish_key_reaches_the_server_intact(key: str) -> None:
    """Whatever a client sends as the stream key (the only thing naming the stream) is
    what the server checks: no truncation, normalisation or splitting in the core."""
    pub = ScriptedPublisher(chunk_size=4096).obs_connect_sequence(key)
    pub.obs_publish_sequence(key)
    c0c1 = handshake_c0c1()
    s1 = b"\x00\x00\x00\x63" + bytes(4) + b"\x07" * (HANDSHAKE_SIZE - 8)
    _, events = run_session([c0c1 + handshake_c2(s1) + pub.take()])
    published = [e.stream_key for e in events if isinstance(e, PublishRequest)]
    assert published == [key]


# ---- before publish (issue 20, attack 2) -------------------------------------------------


def connected() -> RtmpServerConnection:
    conn = handshaken()
    conn.data_to_send()
    (connect,) = conn.receive_data(ScriptedPublisher().obs_connect_sequence(KEY).take())
    conn.accept_connect(connect.transaction_id)
    conn.data_to_send()
    return conn


def test_data_messages_before_publish_are_dropped_undecoded() -> None:
    conn = connected()
    writer = ChunkWriter()
    # Metadata for a stream nobody publishes, and garbage that would not even decode.
    pub = ScriptedPublisher().data("@setDataFrame", "onMetaData", {"width": 1.0})
    events = conn.receive_data(pub.take() + writer.write(Message(18, 1, 0, b"\x42\x42"), 4))
    assert events == [] and not conn.closed and not conn.admitted


def test_commands_outside_the_publish_handshake_are_refused_undecoded() -> None:
    conn = connected()
    # The body after the name and transaction id is invalid AMF0: never decoded.
    body = amf0.encode("callRemote", 9.0) + b"\x42" * 100
    (event,) = conn.receive_data(ChunkWriter().write(Message(20, 0, 0, body), 3))
    assert event == UnsupportedCommand("callRemote", 9.0)
    reader = ChunkReader()
    reader.set_chunk_size(4096)  # announced by accept_connect
    (error,) = [amf0.decode(m.payload) for m in reader.feed(conn.data_to_send())]
    assert error[0] == "_error" and error[3]["code"] == "NetConnection.Call.Failed"
    assert not conn.closed


def test_null_flood_before_publish_closes_at_once() -> None:
    """8 MiB of AMF0 NULL markers as a data message: refused by its declared length
    before a byte of it is buffered, let alone decoded."""
    conn = connected()
    header = ChunkWriter(4096).write(Message(18, 0, 0, b"\x05" * (8 << 20)), 4)[: 4096 + 12]
    with pytest.raises(RtmpProtocolError, match="exceeds the 16384 limit"):
        conn.receive_data(ScriptedPublisher(chunk_size=4096).take() + header)
    assert conn.closed


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda p: [p.control(4, b"\x00\x06" + bytes(4)) for _ in range(70)], "messages before"),
        (
            lambda p: [p.command("x", 0.0, None, "y" * 10_000) for _ in range(8)],
            "bytes of messages",
        ),
        (lambda p: p.command("releaseStream", 2.0, [None] * 2000), "more than 1024"),
    ],
)
def test_pre_publish_budget(build: Any, message: str) -> None:
    conn = connected()
    pub = ScriptedPublisher(chunk_size=4096)
    build(pub)
    with pytest.raises(RtmpProtocolError, match=message):
        conn.receive_data(pub.take())
    assert conn.closed


def test_publish_admits_and_lifts_the_pre_publish_limits() -> None:
    conn = connected()
    pub = ScriptedPublisher(chunk_size=4096).obs_publish_sequence(KEY)
    events = conn.receive_data(pub.take())
    publish = next(e for e in events if isinstance(e, PublishRequest))
    conn.accept_publish(publish.stream_id)
    assert conn.admitted
    # After admission: large media messages, many messages, and metadata are fine.
    big = ScriptedPublisher(chunk_size=4096)
    big.data("@setDataFrame", "onMetaData", amf0.EcmaArray(width=640.0, height=360.0))
    big.media(MessageType.VIDEO, 0, AVC_SEQ)
    big.media(MessageType.VIDEO, 40, AVC_FRAME + bytes(200_000))
    for i in range(100):
        big.control(4, b"\x00\x06" + i.to_bytes(4, "big"))
    events = conn.receive_data(big.take())
    assert isinstance(events[0], StreamMetadata) and events[0].metadata["width"] == 640.0
    assert [len(e.payload) for e in events if isinstance(e, MediaMessage)] == [
        len(AVC_SEQ),
        len(AVC_FRAME) + 200_000,
    ]


def _play_request(name: str = "cam") -> tuple[RtmpServerConnection, PlayRequest]:
    """A player's sequence (librtmp order) up to its play request."""
    conn, _ = run_session([full_session()[: 1 + 2 * HANDSHAKE_SIZE]])
    pub = ScriptedPublisher().obs_connect_sequence(KEY)
    pub.command("createStream", 2.0, None)
    pub.command("getStreamLength", 3.0, None, name)
    pub.command("play", 4.0, None, name, -1000.0, stream_id=1)
    (connect,) = conn.receive_data(pub.take())
    assert isinstance(connect, ConnectRequest)
    conn.accept_connect(connect.transaction_id)
    (play,) = conn.receive_data(b"")
    assert isinstance(play, PlayRequest)
    conn.data_to_send()
    return conn, play


def test_play_is_accepted_with_the_status_sequence_players_wait_for() -> None:
    conn, play = _play_request()
    assert play == PlayRequest(1, "cam", 4.0)
    conn.accept_play(play.stream_id, "cam")
    conn.send_media(1, MessageType.VIDEO, 40, AVC_SEQ)
    messages = server_messages(conn.data_to_send())
    assert messages[0].type_id == MessageType.USER_CONTROL  # StreamBegin 1
    assert messages[0].payload == b"\x00\x00" + (1).to_bytes(4, "big")
    codes = [amf0.decode(m.payload)[3]["code"] for m in messages[1:3]]
    assert codes == ["NetStream.Play.Reset", "NetStream.Play.Start"]
    assert amf0.decode(messages[3].payload) == ["|RtmpSampleAccess", True, True]
    media = messages[4]
    assert (media.type_id, media.stream_id, media.timestamp) == (MessageType.VIDEO, 1, 40)
    assert media.payload == AVC_SEQ
    conn.end_play(1, "cam ended")
    codes = [c[3]["code"] for c in decode_commands(conn.data_to_send())]
    assert codes == ["NetStream.Play.UnpublishNotify", "NetStream.Play.Stop"]
    assert conn.closed


def test_play_refused_sends_the_status_and_closes() -> None:
    conn, play = _play_request("nobody")
    conn.reject_play(play.stream_id, "stream 'nobody' is not live")
    (status,) = decode_commands(conn.data_to_send())
    assert status[0] == "onStatus" and status[3]["code"] == "NetStream.Play.StreamNotFound"
    assert conn.closed


def test_play_without_a_created_stream_is_a_protocol_error() -> None:
    conn, _ = run_session([full_session()[: 1 + 2 * HANDSHAKE_SIZE]])
    pub = ScriptedPublisher().obs_connect_sequence(KEY)
    pub.command("play", 4.0, None, "cam", stream_id=3)
    (connect,) = conn.receive_data(pub.take())
    conn.accept_connect(connect.transaction_id)
    with pytest.raises(RtmpProtocolError, match="never created"):
        conn.receive_data(b"")
