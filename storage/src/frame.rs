//! Byte layout of segment files: the segment header and the batch frame.
//!
//! Every multi-byte integer is little-endian. Layouts are drawn in
//! `docs/storage-format.md`; this module is the only code that knows them.
//!
//! Decoders follow the crate's parser shape: `decode(&[u8]) -> Result<Option<(T, usize)>, E>`,
//! where `Ok(None)` means "not enough bytes yet" and consumes nothing. They never panic
//! and check lengths against [`MAX_BATCH_BYTES`] before trusting them.

use std::fmt;

/// First eight bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"TPSEGMNT";
/// Version of the segment and frame layout written by this code.
pub const FORMAT_VERSION: u16 = 1;
/// Size of the segment header; the first frame starts here.
pub const SEGMENT_HEADER_LEN: usize = 40;
/// Size of a frame header; the payload follows it.
pub const FRAME_HEADER_LEN: usize = 32;
/// Marks a frame header (bytes 4..6), so a scan for surviving frames is cheap.
pub const FRAME_MAGIC: u16 = 0x5442;
/// The only frame kind so far: one whole batch.
pub const FRAME_KIND_BATCH: u8 = 1;
/// Frames start at multiples of this offset; payloads are zero-padded up to it.
pub const ALIGN: usize = 8;
/// Largest payload one batch may carry (256 MiB).
pub const MAX_BATCH_BYTES: usize = 256 << 20;

/// Why bytes are not a valid segment header or frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The segment header does not start with [`SEGMENT_MAGIC`].
    BadSegmentMagic,
    /// The segment header's checksum does not match.
    SegmentHeaderChecksum,
    /// A header (segment or frame) with a valid checksum names a version we do not know.
    UnsupportedVersion(u16),
    /// The frame header's checksum does not match.
    HeaderChecksum,
    /// The frame header does not carry [`FRAME_MAGIC`].
    BadMagic,
    /// The frame kind is unknown.
    UnknownKind(u8),
    /// The declared payload length exceeds [`MAX_BATCH_BYTES`].
    TooLarge(u64),
    /// The frame's synced-LSN watermark is not below its own LSN.
    BadWatermark,
    /// The payload's checksum does not match.
    PayloadChecksum,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::BadSegmentMagic => f.write_str("not a segment file (bad magic)"),
            FrameError::SegmentHeaderChecksum => f.write_str("segment header checksum mismatch"),
            FrameError::UnsupportedVersion(v) => write!(f, "unsupported format version {v}"),
            FrameError::HeaderChecksum => f.write_str("frame header checksum mismatch"),
            FrameError::BadMagic => f.write_str("frame header magic mismatch"),
            FrameError::UnknownKind(k) => write!(f, "unknown frame kind {k}"),
            FrameError::TooLarge(n) => {
                write!(f, "frame length {n} exceeds the limit of {MAX_BATCH_BYTES}")
            }
            FrameError::BadWatermark => f.write_str("frame watermark is not below its LSN"),
            FrameError::PayloadChecksum => f.write_str("batch payload checksum mismatch"),
        }
    }
}

/// The fixed header at offset 0 of every segment file.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The segment's number; equals the number in its file name.
    pub segment_id: u64,
    /// The LSN of the last batch written before this segment was started (0 if none):
    /// every frame in this segment has a greater LSN.
    pub prev_lsn: u64,
}

impl SegmentHeader {
    /// The 40 header bytes.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[10..12].copy_from_slice(&(SEGMENT_HEADER_LEN as u16).to_le_bytes());
        b[16..24].copy_from_slice(&self.segment_id.to_le_bytes());
        b[24..32].copy_from_slice(&self.prev_lsn.to_le_bytes());
        let crc = crc32fast::hash(&b[0..36]);
        b[36..40].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a segment header from the start of `buf`.
    pub fn decode(buf: &[u8]) -> Result<Option<(SegmentHeader, usize)>, FrameError> {
        let Some(b) = buf.get(..SEGMENT_HEADER_LEN) else {
            return Ok(None);
        };
        if b[0..8] != SEGMENT_MAGIC {
            return Err(FrameError::BadSegmentMagic);
        }
        if crc32fast::hash(&b[0..36]) != le_u32(b, 36) {
            return Err(FrameError::SegmentHeaderChecksum);
        }
        let version = le_u16(b, 8);
        if version != FORMAT_VERSION || le_u16(b, 10) as usize != SEGMENT_HEADER_LEN {
            return Err(FrameError::UnsupportedVersion(version));
        }
        let header = SegmentHeader {
            segment_id: le_u64(b, 16),
            prev_lsn: le_u64(b, 24),
        };
        Ok(Some((header, SEGMENT_HEADER_LEN)))
    }
}

/// A decoded batch frame, borrowing its payload from the input.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The batch's LSN.
    pub lsn: u64,
    /// The highest LSN known durable (a `sync` had returned for it) when this frame was
    /// written. Recovery uses it to tell a torn tail from lost durable data.
    pub synced_lsn: u64,
    /// The opaque batch.
    pub payload: &'a [u8],
}

/// The checked fields of a frame header, before the payload is looked at.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// The batch's LSN.
    pub lsn: u64,
    /// See [`Frame::synced_lsn`].
    pub synced_lsn: u64,
    /// Payload length in bytes (without padding).
    pub payload_len: usize,
    /// crc32 of the payload.
    pub payload_crc: u32,
}

impl FrameHeader {
    /// Bytes the whole frame occupies on disk: header, payload and padding.
    pub fn frame_len(&self) -> usize {
        framed_len(self.payload_len)
    }

    /// Checks a frame header (the first [`FRAME_HEADER_LEN`] bytes of `buf`).
    /// `Ok(None)`: fewer than [`FRAME_HEADER_LEN`] bytes.
    pub fn decode(buf: &[u8]) -> Result<Option<FrameHeader>, FrameError> {
        let Some(b) = buf.get(..FRAME_HEADER_LEN) else {
            return Ok(None);
        };
        // Magic first: it is the cheap filter when scanning garbage for frames.
        if le_u16(b, 4) != FRAME_MAGIC {
            return Err(FrameError::BadMagic);
        }
        if crc32fast::hash(&b[4..FRAME_HEADER_LEN]) != le_u32(b, 0) {
            return Err(FrameError::HeaderChecksum);
        }
        let version = u16::from(b[6]);
        if version != FORMAT_VERSION {
            return Err(FrameError::UnsupportedVersion(version));
        }
        if b[7] != FRAME_KIND_BATCH {
            return Err(FrameError::UnknownKind(b[7]));
        }
        let len = le_u32(b, 8);
        if len as usize > MAX_BATCH_BYTES {
            return Err(FrameError::TooLarge(u64::from(len)));
        }
        let lsn = le_u64(b, 16);
        let synced_lsn = le_u64(b, 24);
        if synced_lsn >= lsn {
            return Err(FrameError::BadWatermark);
        }
        Ok(Some(FrameHeader {
            lsn,
            synced_lsn,
            payload_len: len as usize,
            payload_crc: le_u32(b, 12),
        }))
    }
}

/// Bytes a frame with a payload of `payload_len` occupies on disk.
pub fn framed_len(payload_len: usize) -> usize {
    FRAME_HEADER_LEN + align_up(payload_len)
}

/// Rounds up to a multiple of [`ALIGN`].
pub fn align_up(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// Appends one encoded frame to `out`. The caller checks `payload.len() <=
/// MAX_BATCH_BYTES` and `synced_lsn < lsn` first.
pub fn encode(out: &mut Vec<u8>, lsn: u64, synced_lsn: u64, payload: &[u8]) {
    debug_assert!(payload.len() <= MAX_BATCH_BYTES && synced_lsn < lsn);
    let mut h = [0u8; FRAME_HEADER_LEN];
    h[4..6].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
    h[6] = FORMAT_VERSION as u8;
    h[7] = FRAME_KIND_BATCH;
    h[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[12..16].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    h[16..24].copy_from_slice(&lsn.to_le_bytes());
    h[24..32].copy_from_slice(&synced_lsn.to_le_bytes());
    let crc = crc32fast::hash(&h[4..]);
    h[0..4].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    let pad = align_up(payload.len()) - payload.len();
    out.extend_from_slice(&[0u8; ALIGN][..pad]);
}

/// Decodes one frame from the start of `buf`: the frame and the bytes it occupies.
/// `Ok(None)`: the frame is not complete in `buf` (at the end of a file, a torn write).
pub fn decode(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    let Some(h) = FrameHeader::decode(buf)? else {
        return Ok(None);
    };
    let total = h.frame_len();
    let Some(payload) = buf.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + h.payload_len) else {
        return Ok(None);
    };
    if buf.len() < total {
        return Ok(None);
    }
    if crc32fast::hash(payload) != h.payload_crc {
        return Err(FrameError::PayloadChecksum);
    }
    let frame = Frame {
        lsn: h.lsn,
        synced_lsn: h.synced_lsn,
        payload,
    };
    Ok(Some((frame, total)))
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    if let Some(s) = b.get(at..at + 2) {
        a.copy_from_slice(s);
    }
    u16::from_le_bytes(a)
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(lsn: u64, synced: u64, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode(&mut v, lsn, synced, payload);
        v
    }

    #[test]
    fn frame_round_trips_and_is_aligned() {
        for len in [0usize, 1, 7, 8, 9, 200, 4096] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let bytes = frame(7, 3, &payload);
            assert_eq!(bytes.len() % ALIGN, 0);
            assert_eq!(bytes.len(), framed_len(len));
            let (f, used) = decode(&bytes).unwrap().unwrap();
            assert_eq!(
                (f.lsn, f.synced_lsn, f.payload, used),
                (7, 3, &payload[..], bytes.len())
            );
        }
    }

    #[test]
    fn every_prefix_is_partial_not_error() {
        let bytes = frame(9, 0, b"hello world");
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let bytes = frame(9, 2, b"hello world");
        for i in 0..FRAME_HEADER_LEN + 11 {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                assert!(
                    !matches!(decode(&b), Ok(Some((f, _))) if f.payload == b"hello world" && f.lsn == 9),
                    "flip at byte {i} bit {bit} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn oversized_length_is_rejected_before_use() {
        let mut b = frame(9, 0, b"x");
        b[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        let crc = crc32fast::hash(&b[4..32]);
        b[0..4].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&b), Err(FrameError::TooLarge(u64::from(u32::MAX))));
    }

    #[test]
    fn segment_header_round_trips() {
        let h = SegmentHeader {
            segment_id: 42,
            prev_lsn: 1234,
        };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b), Ok(Some((h, SEGMENT_HEADER_LEN))));
        assert_eq!(SegmentHeader::decode(&b[..39]), Ok(None));
        let mut bad = b;
        bad[20] ^= 1;
        assert_eq!(
            SegmentHeader::decode(&bad),
            Err(FrameError::SegmentHeaderChecksum)
        );
    }
}
