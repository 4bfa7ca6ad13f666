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
from .values import (
    KINDS,
    MAX_PATH,
    Begun,
    CommitArgs,
    Committed,
    Entry,
    GetEnd,
    ImportArgs,
    LogEntry,
    NamedTuple,
    ObjectsArgs,
    Put,
    PutArgs,
    RenameArgs,
    Stat,
    SyncedArgs,
)

VERSION = 1  # the version every session starts in (the first HELLO's)
VERSIONS = (1, 2)  # the versions this codec speaks; GREET(v) gets min(v, the last)
MAGIC = b"docteur\0"

HEADER = struct.Struct(">BBII")
HEADER_SIZE = HEADER.size
MAX_REQUEST = 1 << 16  # the biggest payload a server accepts from a client
MAX_FRAME = 1 << 24  # the biggest payload a client accepts from a server
CHUNK = 1 << 18  # DATA payload size the server aims for
MAX_CHUNK = 1 << 18  # the biggest CHUNK payload a v2 server accepts (HELLO's max_chunk)
MAX_DISK = 255

# Frame types.
REQUEST, CANCEL, GREET, CHUNK_FRAME = 0x01, 0x02, 0x03, 0x04
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
    # Version 2: writes.
    11: "begin",
    12: "put",
    13: "remove",
    14: "rename",
    15: "commit",
    16: "abort",
    17: "log",
    18: "snapshot",  # a snapshot start (resume.py): the state is about to be saved
    19: "restored",  # ... this guest runs from a saved state
    # Version 2: push and pull through the appliance (sync.py).
    20: "sync_info",
    21: "objects",
    22: "import",
    23: "set_synced",
}
# The operations of every version, a path and no arguments: version 1's and the
# appliance's snapshot pair (additions that old peers answer unknown_op).
V1_OPS = frozenset(OPS[code] for code in (*range(1, 11), 18, 19))
# The requests whose content follows in CHUNK frames (their args have a `size`).
UPLOADS = ("put", "import")
# The writes that take commit arguments outside a batch (their own batch).
SINGLE_WRITES = ("put", "remove", "rename")
MODES = (0o100644, 0o100755, 0o120000)  # what a put may bind: file, executable, symlink
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
    # Version 2: the errors of writes, named as mirage-kv names them.
    15: "value_expected",
    16: "dictionary_expected",
    17: "already_present",
    18: "no_space",
    19: "rename_source_prefix",
    20: "read_only",
    21: "busy",
    22: "conflict",
    23: "no_batch",
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
_PUT = struct.Struct(">QI")  # size, mode
_BEGUN = struct.Struct(">20sI")  # head, generation
_COMMITTED = struct.Struct(">B20sIQ")  # committed, commit id, generation, free bytes
_LOG = struct.Struct(">20sqhHI")  # commit, time, tz minutes, author length, message length
_ZERO_ID = bytes(20)
_IMPORT = struct.Struct(">Q20s20s")  # size, expected head, new head
_SYNCED = struct.Struct(">20s20s")  # expected head, the remote's tip
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
    # Version 2: PutArgs (put), RenameArgs (rename), CommitArgs (commit, and a
    # remove outside a batch), int (log's max), else None.
    args: object = None


class BadRequest(NamedTuple):
    """A well-framed request the server must refuse (the connection goes on)."""

    id: int
    code: str
    message: str


class Greet(NamedTuple):
    """The host asks for a (new) greeting: a new session, of `version`."""

    version: int = VERSION


class Chunk(NamedTuple):
    """A piece of put `id`'s content; `last` when it completes the declared size."""

    id: int
    data: bytes
    last: bool


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

    def __init__(self, max_payload: int, limits: dict[int, int] | None = None):
        self.max_payload = max_payload
        self.limits = limits or {}  # frame type -> its own payload limit
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
            limit = self.limits.get(ftype, self.max_payload)
            if length > limit:
                raise ProtocolError(
                    f"frame declares {length} bytes, the limit is {limit}",
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
# A GREET's header up to the low byte of its length (0, or 2 with a version).
_GREET_PREFIX = GREET_FRAME[:9]
# What a greeting starts with (its length varies): type, code, id 0.
_HELLO_PREFIX = HEADER.pack(HELLO, 0, 0, 0)[:6]


def data_header(rid: int, length: int) -> bytes:
    """The header of a DATA frame; the caller sends the chunk after it (writev)."""
    return HEADER.pack(DATA, 0, rid, length)


def greet_frame(version: int = VERSION) -> bytes:
    """GREET asking for a session of `version` (version 1: the empty GREET)."""
    return GREET_FRAME if version == 1 else frame(GREET, 0, 0, _U16.pack(version))


def chunk_header(rid: int, length: int) -> bytes:
    """The header of a CHUNK frame of put `rid`; its `length` bytes follow (writev)."""
    return HEADER.pack(CHUNK_FRAME, 0, rid, length)


def chunk_frame(rid: int, data: bytes) -> bytes:
    return chunk_header(rid, len(data)) + data


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


def encode_log(entries: list[LogEntry]) -> bytes:
    out = []
    for e in entries:
        author, message = e.author.encode("utf-8", "replace"), e.message.encode("utf-8", "replace")
        out += [_LOG.pack(e.commit, e.time, e.tz, len(author), len(message)), author, message]
    return b"".join(out)


def decode_log(data: bytes) -> list[LogEntry]:
    """The log entries of a DATA frame of a `log` reply (each frame holds whole entries)."""
    entries, pos = [], 0
    try:
        while pos < len(data):
            commit, when, tz, alen, mlen = _LOG.unpack_from(data, pos)
            pos += _LOG.size
            author, message = data[pos : pos + alen], data[pos + alen : pos + alen + mlen]
            if len(author) != alen or len(message) != mlen:
                raise ProtocolError("truncated log entry")
            entries.append(LogEntry(commit, when, tz, author.decode(), message.decode()))
            pos += alen + mlen
    except (struct.error, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed log entry: {exc}") from None
    return entries


def encode_commit_args(args: CommitArgs) -> bytes:
    message, author = args.message.encode(), args.author.encode()
    if len(author) > 0xFFFF:
        raise ValueError("author too long")
    out = _U32.pack(len(message)) + message + _U16.pack(len(author)) + author
    if args.expected is None:
        return out + b"\0"
    if len(args.expected) != 20:
        raise ValueError("an expected head is a 20-byte commit id")
    return out + b"\1" + args.expected


def _prefixed(payload: bytes, pos: int, prefix: struct.Struct, what: str) -> tuple[bytes, int]:
    """The length-prefixed field at `pos` of a request: (its bytes, the position after it)."""
    (n,) = prefix.unpack_from(payload, pos)
    pos += prefix.size
    field = payload[pos : pos + n]
    if len(field) != n:
        raise ValueError(f"truncated {what}")
    return field, pos + n


def _decode_commit_args(payload: bytes, pos: int) -> tuple[CommitArgs, int]:
    message, pos = _prefixed(payload, pos, _U32, "commit message")
    author, pos = _prefixed(payload, pos, _U16, "author")
    (flag,) = _U8.unpack_from(payload, pos)
    pos += 1
    expected = None
    if flag == 1:
        expected = payload[pos : pos + 20]
        if len(expected) != 20:
            raise ValueError("truncated expected head")
        pos += 20
    elif flag:
        raise ValueError(f"expected-head flag {flag} (0 or 1)")
    return CommitArgs(message.decode(), author.decode(), expected), pos


def _encode_args(op: str, args: object) -> bytes:
    """A v2 request's arguments (after its path)."""
    if op == "put":
        if not isinstance(args, PutArgs):
            raise ValueError("a put takes PutArgs (size, mode, commit)")
        out = _PUT.pack(args.size, args.mode)
        return out + (encode_commit_args(args.commit) if args.commit is not None else b"")
    if op == "rename":
        if not isinstance(args, RenameArgs):
            raise ValueError("a rename takes RenameArgs (dest, commit)")
        if len(args.dest) > MAX_PATH:
            raise ValueError("destination path too long")
        out = _U16.pack(len(args.dest)) + args.dest
        return out + (encode_commit_args(args.commit) if args.commit is not None else b"")
    if op == "remove":
        return encode_commit_args(args) if isinstance(args, CommitArgs) else b""
    if op == "commit":
        return encode_commit_args(args if isinstance(args, CommitArgs) else CommitArgs())
    if op == "log":
        return _U32.pack(args) if isinstance(args, int) else b""
    if op == "objects":
        if not isinstance(args, ObjectsArgs) or any(len(i) != 20 for i in args.ids):
            raise ValueError("objects takes ObjectsArgs (20-byte ids, stored)")
        return _U8.pack(int(args.stored)) + _U32.pack(len(args.ids)) + b"".join(args.ids)
    if op == "import":
        if not isinstance(args, ImportArgs):
            raise ValueError("an import takes ImportArgs (size, expected, head, synced)")
        out = _IMPORT.pack(args.size, args.expected, args.head)
        return out + (b"\0" if args.synced is None else b"\1" + _encode_synced(*args.synced))
    if op == "set_synced":
        if not isinstance(args, SyncedArgs):
            raise ValueError("set_synced takes SyncedArgs (expected, commit, remote)")
        return args.expected + _encode_synced(args.commit, args.remote)
    return b""


def _encode_synced(commit: bytes, remote: str) -> bytes:
    record = remote.encode()
    if len(commit) != 20 or len(record) > 0xFFFF:
        raise ValueError("a synced record is a 20-byte commit and a remote of at most 65535 bytes")
    return commit + _U16.pack(len(record)) + record


def _decode_synced(payload: bytes, pos: int) -> tuple[tuple[bytes, str], int]:
    commit = payload[pos : pos + 20]
    if len(commit) != 20:
        raise ValueError("truncated synced commit")
    record, pos = _prefixed(payload, pos + 20, _U16, "remote")
    return (commit, record.decode()), pos


def _decode_args(op: str, payload: bytes, pos: int) -> object:
    """A v2 request's arguments from `pos` to the end of its payload."""
    end = len(payload)
    args: object = None
    if op == "put":
        size, mode = _PUT.unpack_from(payload, pos)
        if mode not in MODES:
            raise ValueError(f"mode {mode:o} (a put binds 100644, 100755 or 120000)")
        pos += _PUT.size
        commit = None
        if pos < end:
            commit, pos = _decode_commit_args(payload, pos)
        args = PutArgs(size, mode, commit)
    elif op == "rename":
        dest, pos = _prefixed(payload, pos, _U16, "destination path")
        if len(dest) > MAX_PATH:
            raise ValueError("truncated destination path")
        commit = None
        if pos < end:
            commit, pos = _decode_commit_args(payload, pos)
        args = RenameArgs(dest, commit)
    elif op == "commit" or (op == "remove" and pos < end):
        args, pos = _decode_commit_args(payload, pos)
    elif op == "log" and pos < end:
        (args,) = _U32.unpack_from(payload, pos)
        pos += 4
    elif op == "objects":
        stored, count = _U8.unpack_from(payload, pos)[0], _U32.unpack_from(payload, pos + 1)[0]
        pos += 5
        if stored > 1:
            raise ValueError(f"stored flag {stored} (0 or 1)")
        if end - pos != 20 * count:
            raise ValueError(f"{count} ids announced, {end - pos} bytes of them")
        args = ObjectsArgs([payload[i : i + 20] for i in range(pos, end, 20)], bool(stored))
        pos = end
    elif op == "import":
        size, expected, head = _IMPORT.unpack_from(payload, pos)
        pos += _IMPORT.size
        (flag,) = _U8.unpack_from(payload, pos)
        pos += 1
        synced = None
        if flag == 1:
            synced, pos = _decode_synced(payload, pos)
        elif flag:
            raise ValueError(f"synced flag {flag} (0 or 1)")
        args = ImportArgs(size, expected, head, synced)
    elif op == "set_synced":
        expected = payload[pos : pos + 20]
        if len(expected) != 20:
            raise ValueError("truncated expected head")
        (commit, remote), pos = _decode_synced(payload, pos + 20)
        args = SyncedArgs(expected, commit, remote)
    if pos != end:
        raise ValueError(f"{end - pos} unexpected bytes after the arguments")
    return args


def encode_request(
    rid: int,
    op: str,
    disk: str = "",
    path: bytes = b"",
    offset: int = 0,
    length: int | None = None,
    args: object = None,
) -> bytes:
    d = disk.encode()
    if len(d) > MAX_DISK or len(path) > MAX_PATH:
        raise ValueError("disk name or path too long")
    payload = _U8.pack(len(d)) + d + _U16.pack(len(path)) + path
    if op == "get" and (offset or length is not None):
        payload += _RANGE.pack(offset, TO_END if length is None else length)
    elif op not in V1_OPS:
        payload += _encode_args(op, args)
    if len(payload) > MAX_REQUEST:
        raise ValueError(f"a {op} request of {len(payload)} bytes (the limit is {MAX_REQUEST})")
    return frame(REQUEST, OP_CODES[op], rid, payload)


# The v2 operations that name no path.
_PATHLESS = ("begin", "commit", "abort", "log", "sync_info", "objects", "import", "set_synced")


def _decode_request(rid: int, code: int, payload: bytes, version: int = VERSION) -> Request | BadRequest:
    op = OPS.get(code)
    if rid == 0:
        return BadRequest(0, "bad_request", "request id 0 is reserved for the connection")
    if op is None or (version < 2 and op not in V1_OPS):
        return BadRequest(rid, "unknown_op", f"unknown operation {code}")
    try:
        (dlen,) = _U8.unpack_from(payload, 0)
        disk = payload[1 : 1 + dlen].decode()
        path, pos = _prefixed(payload, 1 + dlen, _U16, "path")
        if len(path) > MAX_PATH:
            raise ValueError("truncated path")
        offset, length, args = 0, None, None
        rest = len(payload) - pos
        if op not in V1_OPS:
            if path and op in _PATHLESS:
                raise ValueError(f"{op} names no path")
            args = _decode_args(op, payload, pos)
        elif op == "get" and rest == _RANGE.size:
            offset, raw_length = _RANGE.unpack_from(payload, pos)
            length = None if raw_length == TO_END else raw_length
        elif rest:
            raise ValueError(f"{rest} unexpected bytes after the path")
    except (struct.error, UnicodeDecodeError, ValueError) as exc:
        return BadRequest(rid, "bad_request", f"malformed {op} request: {exc}")
    return Request(rid, op, disk or DEFAULT_DISK, path, offset, length, args)


def encode_result(op: str, result: object) -> bytes:
    """The END payload of a successful `op`."""
    if op in ("info", "sync_info"):
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
    if op == "begin":
        assert isinstance(result, Begun)
        return _BEGUN.pack(result.head, result.generation)
    if op == "put":
        assert isinstance(result, Put)
        return result.blob + _encode_committed(result.commit)
    if op in ("remove", "rename", "commit", "import", "set_synced"):
        assert result is None or isinstance(result, Committed)
        return _encode_committed(result)
    if op in ("log", "objects"):
        assert isinstance(result, int)
        return _U64.pack(result)
    return b""


def _encode_committed(result: Committed | None) -> bytes:
    if result is None:
        return b""
    commit = result.commit if result.committed else _ZERO_ID
    return _COMMITTED.pack(int(result.committed), commit, result.generation, result.free)


def _decode_committed(payload: bytes) -> Committed | None:
    if not payload:
        return None
    committed, commit, generation, free = _COMMITTED.unpack(payload)
    return Committed(bool(committed), commit, generation, free)


def decode_result(op: str, payload: bytes) -> object:
    try:
        if op in ("info", "sync_info"):
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
        if op == "begin":
            return Begun(*_BEGUN.unpack(payload))
        if op == "put":
            if len(payload) < 20:
                raise ValueError("a put's result starts with a 20-byte blob id")
            return Put(payload[:20], _decode_committed(payload[20:]))
        if op in ("remove", "rename"):
            return _decode_committed(payload)
        if op in ("commit", "import", "set_synced"):
            if len(payload) != _COMMITTED.size:
                raise ValueError(f"a commit result is {_COMMITTED.size} bytes")
            return _decode_committed(payload)
        if op in ("log", "objects"):
            return _U64.unpack(payload)[0]
        return None
    except (struct.error, IndexError, ValueError) as exc:
        raise ProtocolError(f"malformed {op} result: {exc}") from None


# -- the two ends --------------------------------------------------------------
class ServerCodec:
    """The server's side: decodes requests (and a put's CHUNKs), encodes replies.

    A put is an input barrier: after decoding one, `receive` returns nothing
    more (the rest stays buffered, unparsed) until `resume()`: the connection
    resumes once every earlier request is answered and the put's content has
    somewhere to go, then the CHUNKs come out as `Chunk` events.
    """

    def __init__(self, max_request: int = MAX_REQUEST):
        self._reader = FrameReader(max_request, {CHUNK_FRAME: MAX_CHUNK, GREET: 2})
        self._resync = False
        self.version = VERSION  # the session's, set by GREET
        self.paused = False  # a put was decoded: no parsing until resume()
        self._upload: list[int] | None = None  # [put id, bytes still to come]
        self._refused = 0  # the id of a malformed put: its CHUNKs are dropped

    def resync(self) -> None:
        """Ignore input until the next GREET frame (after a broken frame on a
        stream that cannot be closed, like a serial port)."""
        self._resync = True
        self.paused = False
        self._upload = None

    def resume(self) -> list[Request | BadRequest | Cancel | Greet | Chunk]:
        """Parse again after a put (the events of what is buffered)."""
        self.paused = False
        return self.receive(b"")

    @property
    def receiving(self) -> int | None:
        """The id of the put whose CHUNKs are expected, if any."""
        return self._upload[0] if self._upload else None

    def _find_greet(self) -> bool:
        reader = self._reader
        while reader.skip_to(_GREET_PREFIX):
            at = reader._pos + len(_GREET_PREFIX)
            if at >= len(reader._buf):
                return False  # its length byte is not here yet
            if reader._buf[at] in (0, 2):
                return True
            reader._pos += 1
        return False

    def receive(self, data: bytes) -> list[Request | BadRequest | Cancel | Greet | Chunk]:
        """Events from `data`; raises ProtocolError when the stream is unusable."""
        self._reader.feed(data)
        events: list[Request | BadRequest | Cancel | Greet | Chunk] = []
        if self._resync:
            if not self._find_greet():
                return events
            self._resync = False
        if self.paused:
            return events
        for ftype, code, rid, payload in self._reader.frames():
            event = self._event(ftype, code, rid, payload)
            if event is not None:
                events.append(event)
            if self.paused:
                break
        return events

    def _event(
        self, ftype: int, code: int, rid: int, payload: bytes
    ) -> Request | BadRequest | Cancel | Greet | Chunk | None:
        upload = self._upload
        if ftype == CHUNK_FRAME and self.version >= 2:
            if upload is not None and rid == upload[0]:
                if len(payload) > upload[1]:
                    raise ProtocolError(
                        f"put {rid}: a CHUNK of {len(payload)} bytes, only {upload[1]} "
                        "left of its declared size",
                        "bad_request",
                        rid,
                    )
                upload[1] -= len(payload)
                if not upload[1]:
                    self._upload = None
                return Chunk(rid, payload, not upload[1])
            if rid and rid == self._refused:
                return None  # the content of a put refused as malformed
            # Not the id of a request waiting for it: the connection's error (id 0).
            raise ProtocolError(
                f"a CHUNK for request {rid}, which is not a put receiving its content", "bad_request"
            )
        if upload is not None and ftype not in (CANCEL, GREET):
            raise ProtocolError(
                f"frame type {ftype:#x} before the end of put {upload[0]} "
                f"({upload[1]} bytes of it still expected)",
                "bad_request",
                upload[0],
            )
        if ftype == REQUEST:
            req = _decode_request(rid, code, payload, self.version)
            if isinstance(req, Request) and req.op in UPLOADS:
                size = req.args.size  # type: ignore[union-attr]
                self._upload = [rid, size] if size else None
                self.paused = True
            elif OPS.get(code) in UPLOADS and self.version >= 2:
                self._refused = rid
            return req
        if ftype == CANCEL:
            if upload is not None and upload[0] == rid:
                self._upload = None  # the client sends no more of it
            return Cancel(rid)
        if ftype == GREET:
            asked = _U16.unpack(payload)[0] if len(payload) == 2 else VERSION
            if len(payload) not in (0, 2) or asked < 1:
                raise ProtocolError(f"malformed GREET (payload {payload.hex() or 'empty'})")
            self.version = min(asked, VERSIONS[-1])
            self._upload = None
            self._refused = 0
            return Greet(self.version)
        raise ProtocolError(f"unexpected frame type {ftype:#x} from a client", "protocol")

    @property
    def buffered(self) -> int:
        return self._reader.buffered

    @staticmethod
    def hello(fields: dict[str, str], max_frame: int = CHUNK, version: int = VERSION) -> bytes:
        return frame(HELLO, 0, 0, _HELLO.pack(MAGIC, version, max_frame) + encode_map(fields))

    @staticmethod
    def end(rid: int, op: str, result: object) -> bytes:
        return frame(END, OP_CODES.get(op, 0), rid, encode_result(op, result))

    @staticmethod
    def error(rid: int, code: str, message: str) -> bytes:
        msg = message.encode("utf-8", "replace")[:4096]
        return frame(ERROR, ERROR_CODES.get(code, ERROR_CODES["internal"]), rid, msg)


class ClientCodec:
    """The client's side: encodes requests, decodes replies (matched by id).

    A session starts in version 1. `upgrade(2)` gives the GREET that asks for
    version 2 (send it when the first HELLO's `versions` lists 2, or blindly on
    the microVM's serial stream); the codec then skips everything up to the
    HELLO of that version, which becomes `hello` (a Hello event again)."""

    def __init__(self, max_frame: int = MAX_FRAME, resync: bool = False):
        self.max_frame = max_frame
        self.resync = resync  # skip bytes before the greeting (a stream joined midway)
        self.hello: Hello | None = None
        self._awaiting: int | None = None  # upgrade(v) sent: skip to the HELLO of v
        self._pending: dict[int, str] = {}
        self._cancelled: set[int] = set()
        self._next_id = 1
        self._reader = FrameReader(max_frame)

    @property
    def version(self) -> int:
        """The session's version (1 until an upgrade's HELLO arrives)."""
        return self.hello.version if self.hello is not None and self._awaiting is None else VERSION

    def request(
        self,
        op: str,
        disk: str = "",
        path: bytes = b"",
        offset: int = 0,
        length: int | None = None,
        args: object = None,
    ) -> tuple[int, bytes]:
        """A REQUEST frame and its id. `args`: PutArgs for put, RenameArgs for
        rename, CommitArgs for commit (and optionally remove), an int (max
        entries) for log. A put's content follows in `chunk` frames."""
        if op not in OP_CODES:
            raise ValueError(f"unknown operation {op!r}")
        if op not in V1_OPS and self.version < 2:
            raise ValueError(f"the server speaks protocol {self.version}: no {op} (writes need 2)")
        rid = self._next_id
        self._next_id = rid % 0xFFFFFFFF + 1
        data = encode_request(rid, op, disk, path, offset, length, args)
        self._pending[rid] = op
        return rid, data

    @staticmethod
    def chunk(rid: int, data: bytes) -> bytes:
        """A CHUNK frame: the next `data` (at most MAX_CHUNK bytes) of put `rid`."""
        if len(data) > MAX_CHUNK:
            raise ValueError(f"a CHUNK carries at most {MAX_CHUNK} bytes")
        return chunk_frame(rid, data)

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
        """GREET (version 1): greet me again; a later HELLO is not an event."""
        return GREET_FRAME

    def upgrade(self, version: int = VERSIONS[-1]) -> bytes:
        """GREET asking for a session of `version`. The server drops the old
        session's requests unanswered (they are forgotten here: upgrade before
        sending any); the HELLO of `version` comes back as a Hello event."""
        self._awaiting = version
        self._pending.clear()
        self._cancelled.clear()
        return greet_frame(version)

    def receive(self, data: bytes) -> list[Hello | Data | End | Error]:
        self._reader.feed(data)
        if self.hello is None and self.resync and not self._find_hello():
            return []
        events: list[Hello | Data | End | Error] = []
        for ftype, code, rid, payload in self._reader.frames():
            if ftype == HELLO and rid == 0:
                hello = _decode_hello(payload)
                if self._awaiting is not None:
                    if hello.version != self._awaiting:
                        continue  # the session before the upgrade
                    self._awaiting = None
                elif self.hello is not None:
                    continue  # answers a version-1 GREET: same server, same session
                self.hello = hello
                events.append(hello)
                continue
            if self._awaiting is not None:
                continue  # the old session's replies: its requests were forgotten
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
    if version not in VERSIONS:
        raise ProtocolError(
            f"server speaks protocol version {version}, this client {VERSIONS[0]} to {VERSIONS[-1]}"
        )
    return Hello(version, max_frame, decode_map(payload, _HELLO.size))
