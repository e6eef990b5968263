#!/usr/bin/env python3
"""Writes the seed corpus for segment_recovery (docs/storage-format.md layouts).

Run from fuzz/: python3 gen_corpus.py. Each seed is one mode byte plus a body."""
import struct, zlib, os

def header(seg_id, prev):
    b = bytearray(40)
    b[0:8] = b"TPSEGMNT"
    b[8:10] = struct.pack("<H", 1)
    b[10:12] = struct.pack("<H", 40)
    b[16:24] = struct.pack("<Q", seg_id)
    b[24:32] = struct.pack("<Q", prev)
    b[36:40] = struct.pack("<I", zlib.crc32(bytes(b[0:36])))
    return bytes(b)

def frame(lsn, synced, payload):
    h = bytearray(32)
    h[4:6] = struct.pack("<H", 0x5442)
    h[6] = 1
    h[7] = 1
    h[8:12] = struct.pack("<I", len(payload))
    h[12:16] = struct.pack("<I", zlib.crc32(payload))
    h[16:24] = struct.pack("<Q", lsn)
    h[24:32] = struct.pack("<Q", synced)
    h[0:4] = struct.pack("<I", zlib.crc32(bytes(h[4:32])))
    pad = (-len(payload)) % 8
    return bytes(h) + payload + b"\0" * pad

frames = [frame(i, i - 1, b"batch %d " % i * (i % 4)) for i in range(1, 7)]
body = b"".join(frames)
mid = frames[2]
corrupt_mid = frames[0] + frames[1] + mid[:40] + bytes([mid[40] ^ 1]) + mid[41:] + frames[3] + frames[4]
seeds = {
    "empty": b"\x00",
    "header_only": b"\x01",
    "frames": b"\x01" + body,
    "torn_tail": b"\x01" + body[:-13],
    "zero_tail": b"\x01" + body + b"\0" * 64,
    "corrupt_mid_witnessed": b"\x01" + corrupt_mid,
    "raw_with_header": b"\x00" + header(1, 0) + body,
    "two_segments": bytes([0x03 | (2 << 2)]) + body,
    "big_len": b"\x01" + frames[0] + b"\xff" * 40,
}
os.makedirs("corpus/segment_recovery", exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join("corpus/segment_recovery", name), "wb") as f:
        f.write(data)
print(len(seeds), "seeds")
