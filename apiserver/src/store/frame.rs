//! The one record framing used by the write-ahead log and by snapshots:
//! `len:u32 | crc32(body):u32 | body`, big-endian. A frame whose length runs
//! past the end of the file or whose checksum does not match is where a
//! crash cut the file off (or where the disk lied); readers stop there.
//!
//! Written by hand because it is a dozen lines; the checksum is crc32fast.

/// Bytes of framing before each body.
pub const HEADER: usize = 8;

/// Appends one frame whose body is written by `write`, without a temporary
/// buffer: the length and checksum are filled in afterwards.
pub fn put_with(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER]);
    write(out);
    let body_len = (out.len() - start - HEADER) as u32;
    let crc = crc32fast::hash(&out[start + HEADER..]);
    out[start..start + 4].copy_from_slice(&body_len.to_be_bytes());
    out[start + 4..start + HEADER].copy_from_slice(&crc.to_be_bytes());
}

/// Iterates the frames of a buffer. After `None`, `valid_len` is how many
/// bytes from the start hold whole, intact frames and `torn` says whether
/// anything followed them.
pub struct Frames<'a> {
    data: &'a [u8],
    pos: usize,
    pub torn: bool,
}

impl<'a> Frames<'a> {
    pub fn new(data: &'a [u8]) -> Frames<'a> {
        Frames {
            data,
            pos: 0,
            torn: false,
        }
    }

    pub fn valid_len(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = &self.data[self.pos..];
        if rest.is_empty() {
            return None;
        }
        let frame = (|| {
            let len = u32::from_be_bytes(rest.get(0..4)?.try_into().ok()?) as usize;
            let crc = u32::from_be_bytes(rest.get(4..HEADER)?.try_into().ok()?);
            let body = rest.get(HEADER..HEADER.checked_add(len)?)?;
            (crc32fast::hash(body) == crc).then_some(body)
        })();
        match frame {
            Some(body) => {
                self.pos += HEADER + body.len();
                Some(body)
            }
            None => {
                self.torn = true;
                None
            }
        }
    }
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

    #[test]
    fn frames_stop_at_a_torn_tail() {
        let mut buf = Vec::new();
        put(&mut buf, b"one");
        put_with(&mut buf, |b| b.extend_from_slice(b"two"));
        let whole = buf.len();
        put(&mut buf, b"three");
        // Cut the last frame short, as a crash mid-write would.
        buf.truncate(buf.len() - 2);
        let mut frames = Frames::new(&buf);
        assert_eq!(frames.next(), Some(&b"one"[..]));
        assert_eq!(frames.next(), Some(&b"two"[..]));
        assert_eq!(frames.next(), None);
        assert!(frames.torn);
        assert_eq!(frames.valid_len(), whole);

        // A flipped bit is caught by the checksum.
        let mut bad = Vec::new();
        put(&mut bad, b"abc");
        bad[HEADER] ^= 1;
        let mut frames = Frames::new(&bad);
        assert_eq!(frames.next(), None);
        assert!(frames.torn);
        assert_eq!(frames.valid_len(), 0);
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
