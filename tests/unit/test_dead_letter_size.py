"""A dead letter never exceeds the message limit: one as large as the limit loses its value (its size
and SHA-256 stay in the detail) instead of being refused and holding up every later dead letter."""

from __future__ import annotations

import hashlib

from streamfed.kafka.deadletters import OVERHEAD_BYTES, DeadLetterSink
from streamfed.serde.avro import AvroCodec


class _Msg:
    def __init__(self, value: bytes | None, offset: int = 7) -> None:
        self._value, self._offset = value, offset

    def topic(self) -> str:
        return "t"

    def partition(self) -> int:
        return 1

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes | None:
        return self._value


class _Producer:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> None:
        assert value is not None
        self.sent.append(value)


def test_an_oversized_dead_letter_keeps_its_reason_and_loses_its_value() -> None:
    limit = 1 << 20
    prod = _Producer()
    sink = DeadLetterSink(prod, "dl", "site", "s1", max_bytes=limit)
    big = bytes(range(256)) * (limit // 256)  # exactly the message limit: the letter would be larger
    sink.send(_Msg(big), "decode", "does not decode")
    sink.send(_Msg(b"small", offset=8), "decode", "short")
    codec = AvroCodec("dead_letter")
    first, second = (codec.decode(b) for b in prod.sent)
    assert all(len(b) <= limit - OVERHEAD_BYTES for b in prod.sent)
    assert first["value"] is None and first["reason"] == "decode" and first["offset"] == 7
    assert f"{len(big)} bytes" in first["detail"] and hashlib.sha256(big).hexdigest() in first["detail"]
    assert second["value"] == b"small" and sink.truncated == 1  # later letters go out whole


def test_without_a_limit_the_value_is_kept() -> None:
    prod = _Producer()
    DeadLetterSink(prod, "dl", "site", "s1").send(_Msg(b"x" * 5000), "decode", "d")
    assert AvroCodec("dead_letter").decode(prod.sent[0])["value"] == b"x" * 5000
