//! The one record framing used by the write-ahead log and by snapshots.
//!
//! A file starts with an 8-byte magic that names what it is and its format
//! (`MUBEWAL` / `MUBESNP` and a version byte), then frames:
//! `len:u32 | crc32(len ‖ body):u32 | body`, big-endian. The checksum covers
//! the length, so eight zero bytes (a zero-filled block a crash left behind)
//! are not a valid empty frame, and a flipped bit in a length is caught.
//!
//! Files written before the magic existed (format 1: the checksum covered
//! only the body) are still read, so that an upgrade loses nothing.
//!
//! Where a frame does not check out, the reader stops and `classify` tells a
//! torn tail from damage, as etcd's WAL decoder does (`isTornEntry`): only a
//! tail that is all zeros, or that holds no valid frame after the bad one (a
//! write a crash cut short: never acknowledged), is torn. A bad frame followed
//! by a valid one is damage to acknowledged data, and is never cut silently.
//!
//! Written by hand because it is a few dozen lines; the checksum is crc32fast.

/// Bytes of framing before each body.
pub const HEADER: usize = 8;

/// Bytes of the magic at the start of a file of format 2.
pub const MAGIC_LEN: usize = 8;

/// How a file's frames are checksummed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// crc32(body); files without a magic (mube before format 2).
    V1,
    /// crc32(len ‖ body), after a magic.
    V2,
}

/// What the start of a file says it is.
pub enum Opened<'a> {
    /// Frames of this format, starting at byte `offset` of the file.
    Frames {
        format: Format,
        body: &'a [u8],
        offset: usize,
    },
    /// Shorter than the magic and the start of it (or empty, or zeros): a
    /// file a crash cut while it was being created, holding nothing.
    TornMagic,
    /// Neither: a damaged magic, or a file of another kind or version.
    Foreign,
}

/// Reads a file's magic. Files of format 1 have none, and start with a
/// frame whose length's high byte is 0 (no record is 16 MiB).
pub fn open<'a>(data: &'a [u8], magic: &[u8; MAGIC_LEN]) -> Opened<'a> {
    if data.starts_with(magic) {
        return Opened::Frames {
            format: Format::V2,
            body: &data[MAGIC_LEN..],
            offset: MAGIC_LEN,
        };
    }
    if data.len() < MAGIC_LEN && (magic.starts_with(data) || data.iter().all(|&b| b == 0)) {
        return Opened::TornMagic;
    }
    if data.first() == Some(&0) {
        return Opened::Frames {
            format: Format::V1,
            body: data,
            offset: 0,
        };
    }
    Opened::Foreign
}

fn checksum(format: Format, len: [u8; 4], body: &[u8]) -> u32 {
    match format {
        Format::V1 => crc32fast::hash(body),
        Format::V2 => {
            let mut h = crc32fast::Hasher::new();
            h.update(&len);
            h.update(body);
            h.finalize()
        }
    }
}

/// Appends one frame (format 2) whose body is written by `write`, without a
/// temporary buffer: the length and checksum are filled in afterwards.
pub fn put_with(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER]);
    write(out);
    let len = ((out.len() - start - HEADER) as u32).to_be_bytes();
    let crc = checksum(Format::V2, len, &out[start + HEADER..]);
    out[start..start + 4].copy_from_slice(&len);
    out[start + 4..start + HEADER].copy_from_slice(&crc.to_be_bytes());
}

/// The frame starting at `data[0]`, if it is whole and its checksum holds.
fn frame_at(data: &[u8], format: Format) -> Option<&[u8]> {
    let len: [u8; 4] = data.get(0..4)?.try_into().ok()?;
    let crc = u32::from_be_bytes(data.get(4..HEADER)?.try_into().ok()?);
    let n = u32::from_be_bytes(len) as usize;
    let body = data.get(HEADER..HEADER.checked_add(n)?)?;
    // No writer frames an empty body; an all-zero V1 header would otherwise
    // check out (the CRC-32 of nothing is 0).
    (n > 0 && checksum(format, len, body) == crc).then_some(body)
}

/// Iterates the frames of a buffer. After `None`, `valid_len` is how many
/// bytes from the start hold whole, intact frames.
pub struct Frames<'a> {
    data: &'a [u8],
    format: Format,
    pos: usize,
}

impl<'a> Frames<'a> {
    pub fn new(data: &'a [u8], format: Format) -> Frames<'a> {
        Frames {
            data,
            format,
            pos: 0,
        }
    }

    pub fn valid_len(&self) -> usize {
        self.pos
    }

    /// What follows the last whole frame (call after `None`); `offset` is
    /// where `data` starts in its file (sectors are aligned to the file).
    pub fn tail(&self, offset: usize) -> Tail {
        classify(self.data, self.pos, self.format, offset)
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let body = frame_at(&self.data[self.pos..], self.format)?;
        self.pos += HEADER + body.len();
        Some(body)
    }
}

/// What a reader found after the last whole frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// Nothing: the data ends with a whole frame.
    Clean,
    /// Zeros to the end (a crash left zero-filled blocks past the last write).
    Zeroed,
    /// A frame cut short or garbled with no valid frame after it: a write in
    /// progress when the process or machine stopped.
    Torn,
    /// A bad frame with valid frames after it: acknowledged data is damaged.
    Damaged,
}

/// Bytes of a disk sector: the unit a torn write leaves zero-filled.
const SECTOR: usize = 512;

/// Classifies `data[pos..]`, where a frame failed to check out; `offset` is
/// where `data` starts in its file.
///
/// As etcd's `isTornEntry`: a write a crash cut short shows as a frame that
/// runs past the end of the file, or as one with a zero-filled sector (the
/// file grew, its blocks were never written). Any other bad frame is damage,
/// and so is a torn-looking one with a valid frame anywhere after it.
pub fn classify(data: &[u8], pos: usize, format: Format, offset: usize) -> Tail {
    let rest = &data[pos.min(data.len())..];
    if rest.is_empty() {
        return Tail::Clean;
    }
    if rest.iter().all(|&b| b == 0) {
        return Tail::Zeroed;
    }
    let declared = rest
        .get(0..4)
        .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize);
    let torn_write = match declared.and_then(|n| rest.get(..HEADER.checked_add(n)?)) {
        // Cut short by the end of the file.
        None => true,
        Some(frame) => has_zeroed_sector(frame, offset + pos, rest.len() == frame.len()),
    };
    if !torn_write {
        return Tail::Damaged;
    }
    // A valid frame anywhere after the bad one means the bad one is not the
    // end of the log. The frame boundary after a garbled length is unknown,
    // so every offset is tried; most fail at once on a length that runs past
    // the end, and this only runs when start-up found a bad frame.
    if (1..rest.len()).any(|at| frame_at(&rest[at..], format).is_some()) {
        Tail::Damaged
    } else {
        Tail::Torn
    }
}

/// Whether `frame`, at byte `start` of its file, holds a whole sector of
/// zeros (or zeros from a sector boundary to its end, when it ends the file).
fn has_zeroed_sector(frame: &[u8], start: usize, ends_file: bool) -> bool {
    let mut at = 0;
    while at < frame.len() {
        let boundary = (start + at) / SECTOR * SECTOR + SECTOR;
        let end = (boundary - start).min(frame.len());
        let chunk = &frame[at..end];
        let aligned = (start + at).is_multiple_of(SECTOR);
        let whole = aligned && chunk.len() == SECTOR;
        let to_end = aligned && end == frame.len() && ends_file;
        if (whole || to_end) && chunk.iter().all(|&b| b == 0) {
            return true;
        }
        at = end;
    }
    false
}

/// Reads the frames of a file one at a time, holding only the current one:
/// how a snapshot is read back after it is written.
pub struct FrameReader<R> {
    reader: R,
    format: Format,
    body: Vec<u8>,
    /// Bytes left to read: no frame may claim more (a damaged length must
    /// not make this allocate gigabytes).
    remaining: u64,
}

impl<R: std::io::Read> FrameReader<R> {
    pub fn new(reader: R, format: Format, remaining: u64) -> FrameReader<R> {
        FrameReader {
            reader,
            format,
            body: Vec::new(),
            remaining,
        }
    }

    /// The next frame's body; `None` at the end of the file; an error for a
    /// frame cut short or whose checksum does not hold.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, String> {
        let mut header = [0u8; HEADER];
        let mut got = 0;
        while got < HEADER {
            match self.reader.read(&mut header[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err("a frame is cut short".into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        let len: [u8; 4] = [header[0], header[1], header[2], header[3]];
        let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        let n = u64::from(u32::from_be_bytes(len));
        if n + HEADER as u64 > self.remaining {
            return Err("a frame is cut short".into());
        }
        self.remaining -= n + HEADER as u64;
        self.body.resize(n as usize, 0);
        self.reader
            .read_exact(&mut self.body)
            .map_err(|_| "a frame is cut short".to_string())?;
        if self.body.is_empty() || checksum(self.format, len, &self.body) != crc {
            return Err("a frame's checksum does not match".into());
        }
        Ok(Some(&self.body))
    }
}

/// How many valid frames there are in `data[pos..]`, skipping damage: what
/// a repair that cuts the data at `pos` drops.
pub fn count_valid(data: &[u8], pos: usize, format: Format) -> usize {
    let mut count = 0;
    let mut at = pos;
    while at + HEADER < data.len() {
        match frame_at(&data[at..], format) {
            Some(body) => {
                count += 1;
                at += HEADER + body.len();
            }
            None => at += 1,
        }
    }
    count
}

/// Reads fields off the front of a frame body.
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Reader<'a> {
        Reader { data }
    }

    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.data.len() >= n).then(|| self.data.split_at(n))?;
        self.data = rest;
        Some(head)
    }

    pub fn u8(&mut self) -> Option<u8> {
        Some(self.bytes(1)?[0])
    }

    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.bytes(4)?.try_into().ok()?))
    }

    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.bytes(8)?.try_into().ok()?))
    }

    /// A `len:u32 | bytes` field.
    pub fn sized(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.bytes(n)
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// Appends a `len:u32 | bytes` field.
pub fn put_sized(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(out: &mut Vec<u8>, body: &[u8]) {
        put_with(out, |b| b.extend_from_slice(body));
    }

    fn three() -> (Vec<u8>, [usize; 3]) {
        let mut buf = Vec::new();
        put(&mut buf, b"one");
        let a = buf.len();
        put(&mut buf, b"two");
        let b = buf.len();
        put(&mut buf, b"three");
        (buf.clone(), [a, b, buf.len()])
    }

    fn read_all(buf: &[u8]) -> (Vec<&[u8]>, usize, Tail) {
        let mut frames = Frames::new(buf, Format::V2);
        let bodies: Vec<&[u8]> = frames.by_ref().collect();
        (bodies, frames.valid_len(), frames.tail(0))
    }

    #[test]
    fn a_record_cut_short_at_the_end_is_torn() {
        let (mut buf, ends) = three();
        buf.truncate(buf.len() - 2);
        let (bodies, valid, tail) = read_all(&buf);
        assert_eq!(bodies, vec![&b"one"[..], b"two"]);
        assert_eq!(valid, ends[1]);
        assert_eq!(tail, Tail::Torn);
        // Even a cut inside the header (its length's high bytes are zeros).
        let (_, valid, tail) = read_all(&buf[..ends[1] + 6]);
        assert_eq!((valid, tail), (ends[1], Tail::Torn));
        let (_, valid, tail) = read_all(&buf[..ends[1] + 3]);
        assert_eq!((valid, tail), (ends[1], Tail::Zeroed));
        let (_, _, tail) = read_all(&buf[..ends[1]]);
        assert_eq!(tail, Tail::Clean);
    }

    #[test]
    fn zeros_after_the_last_record_end_the_log() {
        let (mut buf, ends) = three();
        buf.extend_from_slice(&[0u8; 4096]);
        let (bodies, valid, tail) = read_all(&buf);
        assert_eq!(bodies.len(), 3);
        assert_eq!((valid, tail), (ends[2], Tail::Zeroed));
        // Eight zero bytes are not an empty frame in either format.
        assert!(frame_at(&[0u8; 16], Format::V2).is_none());
        assert!(frame_at(&[0u8; 16], Format::V1).is_none());
    }

    #[test]
    fn a_bad_record_followed_by_a_good_one_is_damage() {
        let (buf, ends) = three();
        // A flipped bit in the body of the middle record.
        let mut bad = buf.clone();
        bad[ends[0] + HEADER] ^= 1;
        let (bodies, valid, tail) = read_all(&bad);
        assert_eq!((bodies.len(), valid, tail), (1, ends[0], Tail::Damaged));
        // In its length: the frame now runs past the end of the data.
        let mut bad = buf.clone();
        bad[ends[0]] ^= 0x40;
        let (_, valid, tail) = read_all(&bad);
        assert_eq!((valid, tail), (ends[0], Tail::Damaged));
        // In its checksum.
        let mut bad = buf;
        bad[ends[0] + 5] ^= 0x01;
        assert_eq!(read_all(&bad).2, Tail::Damaged);
        // The same flip in the last record: a whole record whose checksum
        // fails is damage too, not a torn write, even with nothing after it.
        let (mut last, ends) = three();
        last[ends[1] + HEADER] ^= 1;
        assert_eq!(read_all(&last).2, Tail::Damaged);
    }

    #[test]
    fn a_last_record_with_a_zeroed_sector_is_a_torn_write() {
        // A record spanning sectors whose second sector was never written.
        let mut buf = Vec::new();
        put(&mut buf, &[b'a'; 100]);
        let start = buf.len();
        put(&mut buf, &[b'b'; 2000]);
        let boundary = (start / SECTOR + 1) * SECTOR;
        buf[boundary..boundary + SECTOR].fill(0);
        let (bodies, valid, tail) = read_all(&buf);
        assert_eq!((bodies.len(), valid, tail), (1, start, Tail::Torn));
        // Zeros from a sector boundary to the end of the file, less than a
        // whole sector.
        let mut buf = Vec::new();
        put(&mut buf, &[b'a'; 100]);
        let start = buf.len();
        put(&mut buf, &[b'b'; 700]);
        let boundary = (start / SECTOR + 1) * SECTOR;
        assert!(buf.len() - boundary < SECTOR);
        let end = buf.len();
        buf[boundary..end].fill(0);
        assert_eq!(read_all(&buf).2, Tail::Torn);
        // Without the zeros it is damage.
        let mut bad = Vec::new();
        put(&mut bad, &[b'a'; 100]);
        put(&mut bad, &[b'b'; 700]);
        let last = bad.len() - 1;
        bad[last] = b'c';
        assert_eq!(read_all(&bad).2, Tail::Damaged);
    }

    #[test]
    fn format_1_files_are_still_read() {
        // len | crc32(body) | body, no magic.
        let mut v1 = Vec::new();
        for body in [&b"old"[..], b"records"] {
            v1.extend_from_slice(&(body.len() as u32).to_be_bytes());
            v1.extend_from_slice(&crc32fast::hash(body).to_be_bytes());
            v1.extend_from_slice(body);
        }
        let magic = b"MUBEWAL\x02";
        let Opened::Frames {
            format,
            body,
            offset,
        } = open(&v1, magic)
        else {
            panic!("format 1 not recognised")
        };
        assert_eq!((format, offset), (Format::V1, 0));
        let bodies: Vec<&[u8]> = Frames::new(body, format).collect();
        assert_eq!(bodies, vec![&b"old"[..], b"records"]);

        let mut v2 = magic.to_vec();
        put(&mut v2, b"new");
        let Opened::Frames {
            format,
            body,
            offset,
        } = open(&v2, magic)
        else {
            panic!("format 2 not recognised")
        };
        assert_eq!((format, offset), (Format::V2, MAGIC_LEN));
        assert_eq!(Frames::new(body, format).next(), Some(&b"new"[..]));
        // Another version, a damaged magic, a magic cut short.
        assert!(matches!(open(b"MUBEWAL\x09rest", magic), Opened::Foreign));
        assert!(matches!(open(b"XUBEWAL\x02rest", magic), Opened::Foreign));
        assert!(matches!(open(b"MUBE", magic), Opened::TornMagic));
        assert!(matches!(open(b"", magic), Opened::TornMagic));
    }

    #[test]
    fn reader_fields() {
        let mut body = vec![7u8];
        body.extend_from_slice(&5u64.to_be_bytes());
        put_sized(&mut body, b"key");
        body.extend_from_slice(b"tail");
        let mut r = Reader::new(&body);
        assert_eq!(r.u8(), Some(7));
        assert_eq!(r.u64(), Some(5));
        assert_eq!(r.sized(), Some(&b"key"[..]));
        assert_eq!(r.rest(), b"tail");
        assert_eq!(r.u32(), None);
    }
}
