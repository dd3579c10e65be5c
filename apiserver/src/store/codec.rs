//! On-disk layout of the sled store. One sled tree holds three key spaces so
//! that an object, its history record and the revision counter are written by
//! one atomic batch:
//!   `o{key}`           -> object JSON
//!   `h{revision:be64}` -> history record (see `encode_event`)
//!   `m/revision`, `m/compacted` -> be64 counters

use std::sync::Arc;

use bytes::Bytes;

use super::{Event, EventKind, Revision, StoreError};

pub const OBJECT_PREFIX: u8 = b'o';
pub const HISTORY_PREFIX: u8 = b'h';
pub const META_REVISION: &[u8] = b"m/revision";
pub const META_COMPACTED: &[u8] = b"m/compacted";

pub fn object_key(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(OBJECT_PREFIX);
    k.extend_from_slice(key.as_bytes());
    k
}

pub fn history_key(revision: Revision) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = HISTORY_PREFIX;
    k[1..].copy_from_slice(&revision.to_be_bytes());
    k
}

pub fn revision_of_history_key(key: &[u8]) -> Option<Revision> {
    let bytes: [u8; 8] = key.get(1..9)?.try_into().ok()?;
    Some(Revision::from_be_bytes(bytes))
}

pub fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

// A history record is length-prefixed binary rather than JSON: it is written
// on every request and read back only by watchers catching up.
//   kind:u8 | key_len:u32 | key | object_len:u32 | object | previous_len:u32 | previous
// (previous_len = u32::MAX when there is no previous state)
pub fn encode_event(event: &Event) -> Vec<u8> {
    let prev_len = event.previous.as_ref().map_or(0, |p| p.len());
    let mut out = Vec::with_capacity(13 + event.key.len() + event.object.len() + prev_len);
    out.push(match event.kind {
        EventKind::Added => 0,
        EventKind::Modified => 1,
        EventKind::Deleted => 2,
    });
    let put = |out: &mut Vec<u8>, b: &[u8]| {
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(b);
    };
    put(&mut out, event.key.as_bytes());
    put(&mut out, &event.object);
    match &event.previous {
        Some(p) => put(&mut out, p),
        None => out.extend_from_slice(&u32::MAX.to_be_bytes()),
    }
    out
}

pub fn decode_event(revision: Revision, bytes: &[u8]) -> Result<Event, StoreError> {
    let corrupt = || StoreError::Backend(format!("history record {revision} is corrupt"));
    let mut pos = 0usize;
    let mut take = |n: usize| -> Result<&[u8], StoreError> {
        let slice = bytes.get(pos..pos + n).ok_or_else(corrupt)?;
        pos += n;
        Ok(slice)
    };
    let kind = match take(1)?[0] {
        0 => EventKind::Added,
        1 => EventKind::Modified,
        2 => EventKind::Deleted,
        _ => return Err(corrupt()),
    };
    let len = |b: &[u8]| -> Result<u32, StoreError> {
        Ok(u32::from_be_bytes(b.try_into().map_err(|_| corrupt())?))
    };
    let key_len = len(take(4)?)? as usize;
    let key = std::str::from_utf8(take(key_len)?).map_err(|_| corrupt())?;
    let key: Arc<str> = Arc::from(key);
    let obj_len = len(take(4)?)? as usize;
    let object = Bytes::copy_from_slice(take(obj_len)?);
    let prev_len = len(take(4)?)?;
    let previous = if prev_len == u32::MAX {
        None
    } else {
        Some(Bytes::copy_from_slice(take(prev_len as usize)?))
    };
    Ok(Event {
        revision,
        kind,
        key,
        object,
        previous,
    })
}

/// Stamps `metadata.resourceVersion` and serializes.
pub fn stamp(mut object: serde_json::Value, revision: Revision) -> Result<Bytes, StoreError> {
    let meta = object
        .as_object_mut()
        .ok_or_else(|| StoreError::InvalidObject("object must be a JSON object".into()))?
        .entry("metadata")
        .or_insert_with(|| serde_json::json!({}));
    let meta = meta
        .as_object_mut()
        .ok_or_else(|| StoreError::InvalidObject("metadata must be an object".into()))?;
    meta.insert(
        "resourceVersion".into(),
        serde_json::Value::String(revision.to_string()),
    );
    serde_json::to_vec(&object)
        .map(Bytes::from)
        .map_err(|e| StoreError::InvalidObject(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_round_trip() {
        for previous in [None, Some(Bytes::from_static(b"{\"a\":1}"))] {
            let e = Event {
                revision: 7,
                kind: EventKind::Modified,
                key: Arc::from("/registry/nodes//n1"),
                object: Bytes::from_static(b"{\"b\":2}"),
                previous: previous.clone(),
            };
            let d = decode_event(7, &encode_event(&e)).unwrap();
            assert_eq!(d.kind, EventKind::Modified);
            assert_eq!(&*d.key, "/registry/nodes//n1");
            assert_eq!(d.object, e.object);
            assert_eq!(d.previous, previous);
        }
        assert!(decode_event(1, b"\x01\x00").is_err());
    }
}
