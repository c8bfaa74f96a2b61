"""Bytes for cached user states: payload codecs and the self-describing record both backends store.

A user state is ``float32 [T, D]`` (T state tokens, D model dim). Payload layouts per user, little-endian:

* ``float32``: ``T*D`` float32 values, ``4*T*D`` bytes; lossless.
* ``float16``: ``T*D`` float16 values, ``2*T*D`` bytes; relative error <= 2**-11 for normal values.
* ``int8``: symmetric per-token quantisation. ``scale_t = max_d |x_td| / 127`` (float32) and
  ``q_td = round(x_td / scale_t)`` in [-127, 127]; stored as ``T`` float32 scales then ``T*D`` int8 values,
  ``T*(D + 4)`` bytes. Decoding gives ``q_td * scale_t``, so every element is off by at most ``scale_t / 2``.

A **record** is a fixed 32-byte header, the model version (UTF-8) and the payload::

    magic b"TTS1" | dtype u8 | flags u8 | version length u16 | T u32 | D u32 | snapshot_ts i64 | last_event_ts i64
    | version bytes | payload

The header makes a record readable without any outside schema and lets a reader refuse numbers that were
written by another model version or for another shape even when the key says otherwise (defence in depth).
Everything is vectorised with NumPy record arrays; the only per-user Python work is slicing and joining bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DTYPES = ("float32", "float16", "int8")
MAGIC = b"TTS1"
HEADER = np.dtype(
    [
        ("magic", "S4"),
        ("dtype", "u1"),
        ("flags", "u1"),
        ("vlen", "<u2"),
        ("t", "<u4"),
        ("d", "<u4"),
        ("snapshot_ts", "<i8"),
        ("last_event_ts", "<i8"),
    ]
)
HEADER_BYTES = HEADER.itemsize  # 32
assert HEADER_BYTES == 32


def _check_dtype(dtype: str) -> int:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {'|'.join(DTYPES)}, got {dtype!r}")
    return DTYPES.index(dtype)


def bytes_per_user(T: int, D: int, dtype: str) -> int:
    """Payload bytes of one user's ``[T, D]`` state in ``dtype`` (the record adds 32 + len(version))."""
    code = _check_dtype(dtype)
    return (4 * T * D, 2 * T * D, T * (D + 4))[code]


def record_bytes(T: int, D: int, dtype: str, model_version: str) -> int:
    """Bytes of one stored record: header + version + payload."""
    return HEADER_BYTES + len(model_version.encode()) + bytes_per_user(T, D, dtype)


def _payload_matrix(states: np.ndarray, dtype: str) -> np.ndarray:
    """``float32 [B, T, D]`` -> ``uint8 [B, bytes_per_user]``, one row per user."""
    B, T, D = states.shape
    if dtype == "float32":
        return states.astype("<f4").reshape(B, -1).view(np.uint8)
    if dtype == "float16":
        return states.astype("<f2").reshape(B, -1).view(np.uint8)
    _check_dtype(dtype)
    x = states.astype(np.float32)
    scale = np.abs(x).max(axis=2) / np.float32(127)  # [B, T]
    safe = np.where(scale > 0, scale, np.float32(1))  # an all-zero token stays zero with scale 0
    q = np.clip(np.rint(x / safe[:, :, None]), -127, 127).astype(np.int8)  # [B, T, D]
    out = np.empty((B, T * (D + 4)), np.uint8)
    out[:, : 4 * T] = scale.astype("<f4").view(np.uint8).reshape(B, 4 * T)
    out[:, 4 * T :] = q.view(np.uint8).reshape(B, T * D)
    return out


def _split_rows(buf: bytes, n: int, rows: int) -> list[bytes]:
    return [buf[i * n : (i + 1) * n] for i in range(rows)]


def encode_states(states: np.ndarray, dtype: str) -> list[bytes]:
    """Encode ``float32 [B, T, D]`` states into ``B`` payloads of ``bytes_per_user(T, D, dtype)`` bytes each."""
    states = np.asarray(states)
    if states.ndim != 3:
        raise ValueError(f"states must have shape [B, T, D], got {list(states.shape)}")
    mat = _payload_matrix(states, dtype)
    return _split_rows(mat.tobytes(), mat.shape[1], mat.shape[0])


def decode_states(blobs: Sequence[bytes], dtype: str, T: int, D: int) -> np.ndarray:
    """Decode ``B`` payloads written by :func:`encode_states` into ``float32 [B, T, D]``."""
    n = bytes_per_user(T, D, dtype)
    B = len(blobs)
    bad = [i for i, b in enumerate(blobs) if len(b) != n]
    if bad:
        raise ValueError(f"payload {bad[0]} has {len(blobs[bad[0]])} bytes, expected {n} for [{T}, {D}] {dtype}")
    mat = np.frombuffer(b"".join(blobs), np.uint8).reshape(B, n)
    if dtype == "float32":
        return mat.view("<f4").reshape(B, T, D).astype(np.float32)
    if dtype == "float16":
        return mat.view("<f2").reshape(B, T, D).astype(np.float32)
    scale = np.ascontiguousarray(mat[:, : 4 * T]).view("<f4").reshape(B, T, 1)
    q = np.ascontiguousarray(mat[:, 4 * T :]).view(np.int8).reshape(B, T, D)
    return (q.astype(np.float32) * scale).astype(np.float32)


def pack_records(
    states: np.ndarray, snapshot_ts: np.ndarray, last_event_ts: np.ndarray, model_version: str, dtype: str
) -> list[bytes]:
    """Encode ``float32 [B, T, D]`` states with their ``int64 [B]`` timestamps into ``B`` records."""
    B, T, D = states.shape
    vb = model_version.encode()
    payload = _payload_matrix(states, dtype)
    rec_dtype = np.dtype([("h", HEADER), ("v", np.uint8, (len(vb),)), ("p", np.uint8, (payload.shape[1],))])
    rec = np.zeros(B, rec_dtype)
    h = rec["h"]
    h["magic"] = MAGIC
    h["dtype"] = _check_dtype(dtype)
    h["vlen"] = len(vb)
    h["t"], h["d"] = T, D
    h["snapshot_ts"] = snapshot_ts
    h["last_event_ts"] = last_event_ts  # h is a view into rec
    rec["v"] = np.frombuffer(vb, np.uint8)
    rec["p"] = payload
    return _split_rows(rec.tobytes(), rec_dtype.itemsize, B)


def read_headers(blobs: Sequence[bytes]) -> np.ndarray:
    """The fixed headers of ``blobs`` as a ``HEADER`` record array (too-short blobs give a zero, invalid header)."""
    pad = b"\0" * HEADER_BYTES
    joined = b"".join(b[:HEADER_BYTES] if len(b) >= HEADER_BYTES else pad for b in blobs)
    return np.frombuffer(joined, HEADER, count=len(blobs)).copy()


def version_matches(blobs: Sequence[bytes], heads: np.ndarray, model_version: str) -> np.ndarray:
    """``bool [B]``: the header is valid and the record's embedded version equals ``model_version``."""
    vb = model_version.encode()
    n = len(vb)
    ok = (heads["magic"] == MAGIC) & (heads["vlen"] == n)
    if not len(blobs):
        return ok
    end = HEADER_BYTES + n
    joined = b"".join(b[HEADER_BYTES:end].ljust(n, b"\0") for b in blobs)
    got = np.frombuffer(joined, np.uint8).reshape(len(blobs), n)
    return ok & (got == np.frombuffer(vb, np.uint8)).all(axis=1)


def _expected_lengths(heads: np.ndarray) -> np.ndarray:
    td = heads["t"].astype(np.int64) * heads["d"].astype(np.int64)
    code = heads["dtype"]
    payload = np.select([code == 0, code == 1, code == 2], [4 * td, 2 * td, td + 4 * heads["t"].astype(np.int64)], -1)
    return HEADER_BYTES + heads["vlen"].astype(np.int64) + payload


@dataclass
class Unpacked:
    """What :func:`unpack_records` read. Shapes: B requested users, T, D the requested state shape."""

    states: np.ndarray  # float32 [B, T, D], zeros where not ok
    ok: np.ndarray  # bool [B]: a valid record of the requested version and shape
    skew: np.ndarray  # bool [B]: a record is there but of another version (per its header) or shape
    corrupt: np.ndarray  # bool [B]: bytes are there but are not a valid record
    snapshot_ts: np.ndarray  # int64 [B], -1 where not ok
    last_event_ts: np.ndarray  # int64 [B], -1 where not ok


def unpack_records(blobs: Sequence[bytes | None], model_version: str, shape: tuple[int, int]) -> Unpacked:
    """Decode the records among ``blobs`` (``None`` = absent) that match ``model_version`` and ``shape = (T, D)``.

    A record of another version or shape is reported in ``skew`` and its numbers are never returned; a record
    whose header is invalid or whose length disagrees with its header is reported in ``corrupt``.
    """
    T, D = shape
    B = len(blobs)
    out = Unpacked(
        states=np.zeros((B, T, D), np.float32),
        ok=np.zeros(B, bool),
        skew=np.zeros(B, bool),
        corrupt=np.zeros(B, bool),
        snapshot_ts=np.full(B, -1, np.int64),
        last_event_ts=np.full(B, -1, np.int64),
    )
    idx = np.array([i for i, b in enumerate(blobs) if b is not None], np.int64)
    if not len(idx):
        return out
    present = [blobs[i] for i in idx]
    heads = read_headers(present)
    lens = np.fromiter(map(len, present), np.int64, len(present))
    valid = (heads["magic"] == MAGIC) & (heads["dtype"] < len(DTYPES)) & (lens == _expected_lengths(heads))
    same_version = version_matches(present, heads, model_version)
    good = valid & same_version & (heads["t"] == T) & (heads["d"] == D)
    out.corrupt[idx] = ~valid
    out.skew[idx] = valid & ~good
    out.ok[idx] = good
    out.snapshot_ts[idx[good]] = heads["snapshot_ts"][good]
    out.last_event_ts[idx[good]] = heads["last_event_ts"][good]
    for code in np.unique(heads["dtype"][good]):
        sel = np.flatnonzero(good & (heads["dtype"] == code))
        off = HEADER_BYTES + int(heads["vlen"][sel[0]])
        out.states[idx[sel]] = decode_states([present[j][off:] for j in sel], DTYPES[code], T, D)
    return out
