"""The docteur wire protocol (PROTOCOL.md), as a sans-IO codec.

Bytes in, events out: no sockets, no asyncio. The guest server
(`ServerCodec`) and the host client (`ClientCodec`) both use it.

Every frame is a 10-byte header `>BBII` (type, code, request id, payload
length) followed by the payload.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

# The values the wire carries live in `values` (the disk view builds them too);
# importing them from here keeps working.
from .defaults import DEFAULT_DISK
from .values import KINDS, MAX_PATH, Entry, GetEnd, NamedTuple, Stat

VERSION = 1
MAGIC = b"docteur\0"

HEADER = struct.Struct(">BBII")
HEADER_SIZE = HEADER.size
MAX_REQUEST = 1 << 16  # the biggest payload a server accepts from a client
MAX_FRAME = 1 << 24  # the biggest payload a client accepts from a server
CHUNK = 1 << 18  # DATA payload size the server aims for
MAX_DISK = 255

# Frame types.
REQUEST, CANCEL, GREET = 0x01, 0x02, 0x03
HELLO, DATA, END, ERROR = 0x10, 0x11, 0x12, 0x13

# Operations (the code of a REQUEST frame).
OPS = {
    1: "info",
    2: "exists",
    3: "stat",
    4: "get",
    5: "size",
    6: "digest",
    7: "last_modified",
    8: "list",
    9: "ping",
    10: "shutdown",
    18: "snapshot",  # a snapshot start (resume.py): the state is about to be saved
    19: "restored",  # ... this guest runs from a saved state
}
OP_CODES = {name: code for code, name in OPS.items()}

# Error codes (the code of an ERROR frame).
ERRORS = {
    1: "bad_request",
    2: "unknown_op",
    3: "too_large",
    4: "invalid_path",
    5: "no_such_disk",
    6: "not_found",
    7: "not_a_file",
    8: "not_a_directory",
    9: "integrity",
    10: "image",
    11: "boot_failed",
    12: "cancelled",
    13: "internal",
    14: "protocol",
}
ERROR_CODES = {name: code for code, name in ERRORS.items()}

KIND_CODES = {name: code for code, name in enumerate(KINDS)}

_U8, _U16, _U32, _U64 = (struct.Struct(f">{c}") for c in "BHIQ")
_RANGE = struct.Struct(">QQ")
_STAT = struct.Struct(">BIQ20sq")
_GET_END = struct.Struct(">QQQ")
_TIME = struct.Struct(">qh")
_ENTRY = struct.Struct(">BIH")
_HELLO = struct.Struct(">8sHI")
TO_END = (1 << 64) - 1  # a ranged get's length meaning "to the end of the file"


class ProtocolError(Exception):
    """The peer broke the framing: the connection cannot continue."""

    def __init__(self, message: str, code: str = "protocol", request_id: int = 0):
        super().__init__(message)
        self.code = code
        self.request_id = request_id


# -- events -------------------------------------------------------------------
class Hello(NamedTuple):
    version: int
    max_frame: int
    fields: dict[str, str]

    @property
    def ok(self) -> bool:
        return self.fields.get("status") == "ok"

    @property
    def disks(self) -> dict[str, str]:
        """Disk name -> commit hex ('' when the image could not be opened)."""
        return {k[5:]: v for k, v in self.fields.items() if k.startswith("disk.")}


class Request(NamedTuple):
    id: int
    op: str
    disk: str
    path: bytes
    offset: int = 0
    length: int | None = None  # None: to the end


class BadRequest(NamedTuple):
    """A well-framed request the server must refuse (the connection goes on)."""

    id: int
    code: str
    message: str


class Greet(NamedTuple):
    """The host asks for a (new) greeting: a new session on a stream."""


class Cancel(NamedTuple):
    id: int


class Data(NamedTuple):
    id: int
    data: bytes


class End(NamedTuple):
    id: int
    op: str
    result: object


class Error(NamedTuple):
    id: int
    code: str
    message: str


# -- framing -------------------------------------------------------------------
class FrameReader:
    """Cuts a byte stream into (type, code, id, payload) frames."""

    def __init__(self, max_payload: int):
        self.max_payload = max_payload
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes) -> None:
        if self._pos and self._pos >= len(self._buf) // 2:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def skip_to(self, pattern: bytes, back: int = 0) -> bool:
        """Drop bytes up to `back` bytes before `pattern`; False (keeping a
        tail that may start it) when it is not there yet."""
        at = self._buf.find(pattern, self._pos + back)
        if at < 0:
            keep = len(pattern) + back - 1
            self._pos = max(self._pos, len(self._buf) - keep)
            return False
        self._pos = at - back
        return True

    def frames(self) -> Iterator[tuple[int, int, int, bytes]]:
        buf = self._buf
        while len(buf) - self._pos >= HEADER_SIZE:
            ftype, code, rid, length = HEADER.unpack_from(buf, self._pos)
            if length > self.max_payload:
                raise ProtocolError(
                    f"frame declares {length} bytes, the limit is {self.max_payload}",
                    "too_large",
                    rid,
                )
            start = self._pos + HEADER_SIZE
            if len(buf) - start < length:
                return
            payload = bytes(buf[start : start + length])
            self._pos = start + length
            yield ftype, code, rid, payload


def frame(ftype: int, code: int, rid: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(ftype, code, rid, len(payload)) + payload


GREET_FRAME = HEADER.pack(GREET, 0, 0, 0)
# What a greeting starts with (its length varies): type, code, id 0.
_HELLO_PREFIX = HEADER.pack(HELLO, 0, 0, 0)[:6]


def data_header(rid: int, length: int) -> bytes:
    """The header of a DATA frame; the caller sends the chunk after it (writev)."""
    return HEADER.pack(DATA, 0, rid, length)


# -- field encodings -----------------------------------------------------------
def encode_map(fields: dict[str, str]) -> bytes:
    out = [_U16.pack(len(fields))]
    for key, value in fields.items():
        k, v = key.encode(), value.encode("utf-8", "surrogateescape")
        out += [_U16.pack(len(k)), k, _U32.pack(len(v)), v]
    return b"".join(out)


def decode_map(data: bytes, pos: int = 0) -> dict[str, str]:
    try:
        (count,) = _U16.unpack_from(data, pos)
        pos += 2
        fields = {}
        for _ in range(count):
            (klen,) = _U16.unpack_from(data, pos)
            key = data[pos + 2 : pos + 2 + klen].decode()
            pos += 2 + klen
            (vlen,) = _U32.unpack_from(data, pos)
            value = data[pos + 4 : pos + 4 + vlen]
            if len(value) != vlen:
                raise ProtocolError("truncated map value")
            fields[key] = value.decode("utf-8", "surrogateescape")
            pos += 4 + vlen
    except (struct.error, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed map: {exc}") from None
    return fields


def encode_entries(entries: list[Entry]) -> bytes:
    return b"".join(
        _ENTRY.pack(KIND_CODES[e.kind], e.mode, len(e.key)) + e.key for e in entries
    )


def decode_entries(data: bytes) -> list[Entry]:
    entries, pos = [], 0
    try:
        while pos < len(data):
            kind, mode, klen = _ENTRY.unpack_from(data, pos)
            pos += _ENTRY.size
            key = data[pos : pos + klen]
            if len(key) != klen:
                raise ProtocolError("truncated list entry")
            entries.append(Entry(key, KINDS[kind], mode))
            pos += klen
    except (struct.error, IndexError) as exc:
        raise ProtocolError(f"malformed list entry: {exc}") from None
    return entries


def encode_request(
    rid: int, op: str, disk: str = "", path: bytes = b"", offset: int = 0, length: int | None = None
) -> bytes:
    d = disk.encode()
    if len(d) > MAX_DISK or len(path) > MAX_PATH:
        raise ValueError("disk name or path too long")
    payload = _U8.pack(len(d)) + d + _U16.pack(len(path)) + path
    if op == "get" and (offset or length is not None):
        payload += _RANGE.pack(offset, TO_END if length is None else length)
    return frame(REQUEST, OP_CODES[op], rid, payload)


def _decode_request(rid: int, code: int, payload: bytes) -> Request | BadRequest:
    op = OPS.get(code)
    if rid == 0:
        return BadRequest(0, "bad_request", "request id 0 is reserved for the connection")
    if op is None:
        return BadRequest(rid, "unknown_op", f"unknown operation {code}")
    try:
        (dlen,) = _U8.unpack_from(payload, 0)
        disk = payload[1 : 1 + dlen].decode()
        (plen,) = _U16.unpack_from(payload, 1 + dlen)
        pos = 3 + dlen
        path = payload[pos : pos + plen]
        if len(path) != plen or plen > MAX_PATH:
            raise ValueError("truncated path")
        pos += plen
        offset, length = 0, None
        rest = len(payload) - pos
        if op == "get" and rest == _RANGE.size:
            offset, raw_length = _RANGE.unpack_from(payload, pos)
            length = None if raw_length == TO_END else raw_length
        elif rest:
            raise ValueError(f"{rest} unexpected bytes after the path")
    except (struct.error, UnicodeDecodeError, ValueError) as exc:
        return BadRequest(rid, "bad_request", f"malformed {op} request: {exc}")
    return Request(rid, op, disk or DEFAULT_DISK, path, offset, length)


def encode_result(op: str, result: object) -> bytes:
    """The END payload of a successful `op`."""
    if op == "info":
        assert isinstance(result, dict)
        return encode_map(result)
    if op == "exists":
        assert isinstance(result, str)
        return _U8.pack(KIND_CODES[result])
    if op == "stat":
        assert isinstance(result, Stat)
        r = result
        return _STAT.pack(KIND_CODES[r.kind], r.mode, r.size, r.oid.ljust(20, b"\0"), r.mtime)
    if op == "get":
        assert isinstance(result, GetEnd)
        return _GET_END.pack(result.size, result.offset, result.length)
    if op in ("size", "list"):
        assert isinstance(result, int)
        return _U64.pack(result)
    if op == "digest":
        assert isinstance(result, bytes)
        return result
    if op == "last_modified":
        assert isinstance(result, tuple)
        return _TIME.pack(*result)
    return b""


def decode_result(op: str, payload: bytes) -> object:
    try:
        if op == "info":
            return decode_map(payload)
        if op == "exists":
            return KINDS[_U8.unpack(payload)[0]]
        if op == "stat":
            kind, mode, size, oid, mtime = _STAT.unpack(payload)
            return Stat(KINDS[kind], mode, size, oid, mtime)
        if op == "get":
            return GetEnd(*_GET_END.unpack(payload))
        if op in ("size", "list"):
            return _U64.unpack(payload)[0]
        if op == "digest":
            if len(payload) != 20:
                raise ValueError("a digest is 20 bytes")
            return payload.hex()
        if op == "last_modified":
            return _TIME.unpack(payload)
        return None
    except (struct.error, IndexError, ValueError) as exc:
        raise ProtocolError(f"malformed {op} result: {exc}") from None


# -- the two ends --------------------------------------------------------------
class ServerCodec:
    """The server's side: decodes requests, encodes replies."""

    def __init__(self, max_request: int = MAX_REQUEST):
        self._reader = FrameReader(max_request)
        self._resync = False

    def resync(self) -> None:
        """Ignore input until the next GREET frame (after a broken frame on a
        stream that cannot be closed, like a serial port)."""
        self._resync = True

    def receive(self, data: bytes) -> list[Request | BadRequest | Cancel | Greet]:
        """Events from `data`; raises ProtocolError when the stream is unusable."""
        self._reader.feed(data)
        if self._resync:
            if not self._reader.skip_to(GREET_FRAME):
                return []
            self._resync = False
        events: list[Request | BadRequest | Cancel | Greet] = []
        for ftype, code, rid, payload in self._reader.frames():
            if ftype == REQUEST:
                events.append(_decode_request(rid, code, payload))
            elif ftype == CANCEL:
                events.append(Cancel(rid))
            elif ftype == GREET:
                events.append(Greet())
            else:
                raise ProtocolError(f"unexpected frame type {ftype:#x} from a client", "protocol")
        return events

    @property
    def buffered(self) -> int:
        return self._reader.buffered

    @staticmethod
    def hello(fields: dict[str, str], max_frame: int = CHUNK) -> bytes:
        return frame(HELLO, 0, 0, _HELLO.pack(MAGIC, VERSION, max_frame) + encode_map(fields))

    @staticmethod
    def end(rid: int, op: str, result: object) -> bytes:
        return frame(END, OP_CODES.get(op, 0), rid, encode_result(op, result))

    @staticmethod
    def error(rid: int, code: str, message: str) -> bytes:
        msg = message.encode("utf-8", "replace")[:4096]
        return frame(ERROR, ERROR_CODES.get(code, ERROR_CODES["internal"]), rid, msg)


class ClientCodec:
    """The client's side: encodes requests, decodes replies (matched by id)."""

    def __init__(self, max_frame: int = MAX_FRAME, resync: bool = False):
        self.max_frame = max_frame
        self.resync = resync  # skip bytes before the greeting (a stream joined midway)
        self.hello: Hello | None = None
        self._pending: dict[int, str] = {}
        self._cancelled: set[int] = set()
        self._next_id = 1
        self._reader = FrameReader(max_frame)

    def request(
        self, op: str, disk: str = "", path: bytes = b"", offset: int = 0, length: int | None = None
    ) -> tuple[int, bytes]:
        if op not in OP_CODES:
            raise ValueError(f"unknown operation {op!r}")
        rid = self._next_id
        self._next_id = rid % 0xFFFFFFFF + 1
        data = encode_request(rid, op, disk, path, offset, length)
        self._pending[rid] = op
        return rid, data

    def cancel(self, rid: int) -> bytes:
        """A CANCEL frame; what still arrives for `rid` is dropped."""
        if self._pending.pop(rid, None) is not None:
            self._cancelled.add(rid)
        return frame(CANCEL, 0, rid)

    def _find_hello(self) -> bool:
        reader = self._reader
        while reader.skip_to(MAGIC, HEADER_SIZE):
            start = reader._pos
            if reader._buf[start : start + 6] == _HELLO_PREFIX:
                return True
            reader._pos = start + 1
        return False

    @staticmethod
    def greet() -> bytes:
        return GREET_FRAME

    def receive(self, data: bytes) -> list[Hello | Data | End | Error]:
        self._reader.feed(data)
        if self.hello is None and self.resync and not self._find_hello():
            return []
        events: list[Hello | Data | End | Error] = []
        for ftype, code, rid, payload in self._reader.frames():
            if ftype == HELLO and rid == 0:
                if self.hello is None:  # later ones answer our GREET: same server
                    self.hello = _decode_hello(payload)
                    events.append(self.hello)
                continue
            if self.hello is None:
                raise ProtocolError(f"expected a greeting, got frame type {ftype:#x}")
            if rid in self._cancelled:
                if ftype in (END, ERROR):
                    self._cancelled.discard(rid)
                continue
            elif ftype == DATA:
                events.append(Data(rid, payload))
            elif ftype == END:
                op = self._pending.pop(rid, None)
                if op is None:
                    raise ProtocolError(f"END for unknown request {rid}")
                events.append(End(rid, op, decode_result(op, payload)))
            elif ftype == ERROR:
                self._pending.pop(rid, None)
                name = ERRORS.get(code, "internal")
                events.append(Error(rid, name, payload.decode("utf-8", "replace")))
            else:
                raise ProtocolError(f"unexpected frame type {ftype:#x} from a server")
        return events


def _decode_hello(payload: bytes) -> Hello:
    if len(payload) < _HELLO.size:
        raise ProtocolError("truncated greeting")
    magic, version, max_frame = _HELLO.unpack_from(payload)
    if magic != MAGIC:
        raise ProtocolError("not a docteur server (bad greeting magic)")
    if version != VERSION:
        raise ProtocolError(f"server speaks protocol version {version}, this client {VERSION}")
    return Hello(version, max_frame, decode_map(payload, _HELLO.size))
