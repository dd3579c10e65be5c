//! What the log store writes inside each frame (see `frame`).
//!
//! Write-ahead log record (one per change, the same `Event` watchers get):
//!   revision:u64 | kind:u8 | key | object | previous
//! where key, object and previous are `len:u32 | bytes` and previous has
//! len = u32::MAX when there was no previous state. Keeping `previous` makes
//! history after a restart as complete as before it (a filtered watch needs
//! it to turn "left my selector" into DELETED).
//!
//! Snapshot records:
//!   header:  "mube-snapshot" | format:u32 | revision:u64
//!   object:  b'o' | revision:u64 | key | json
//!   trailer: b'e' | objects:u64

use std::sync::Arc;

use bytes::Bytes;

use super::frame::{self, Reader};
use super::{Event, EventKind, Revision, StoreError, StoredObject};

const NO_PREVIOUS: u32 = u32::MAX;
/// The first bytes of a log segment and of a snapshot file (see `frame`).
pub const WAL_FILE_MAGIC: &[u8; 8] = b"MUBEWAL\x02";
pub const SNAPSHOT_FILE_MAGIC: &[u8; 8] = b"MUBESNP\x02";
pub const SNAPSHOT_MAGIC: &[u8] = b"mube-snapshot";
pub const SNAPSHOT_FORMAT: u32 = 1;

/// Appends the log record of `event` to `out`, framed.
pub fn put_event(out: &mut Vec<u8>, event: &Event) {
    frame::put_with(out, |b| {
        b.extend_from_slice(&event.revision.to_be_bytes());
        b.push(match event.kind {
            EventKind::Added => 0,
            EventKind::Modified => 1,
            EventKind::Deleted => 2,
        });
        frame::put_sized(b, event.key.as_bytes());
        frame::put_sized(b, &event.object);
        match &event.previous {
            Some(p) => frame::put_sized(b, p),
            None => b.extend_from_slice(&NO_PREVIOUS.to_be_bytes()),
        }
    });
}

/// Decodes one log record body (the frame already checked its checksum).
pub fn decode_event(body: &[u8]) -> Option<Event> {
    let mut r = Reader::new(body);
    let revision = r.u64()?;
    let kind = match r.u8()? {
        0 => EventKind::Added,
        1 => EventKind::Modified,
        2 => EventKind::Deleted,
        _ => return None,
    };
    let key: Arc<str> = Arc::from(std::str::from_utf8(r.sized()?).ok()?);
    let object = Bytes::copy_from_slice(r.sized()?);
    let previous = match r.u32()? {
        NO_PREVIOUS => None,
        n => Some(Bytes::copy_from_slice(r.bytes(n as usize)?)),
    };
    Some(Event {
        revision,
        kind,
        key,
        object,
        previous,
        derived: Default::default(),
    })
}

pub fn put_snapshot_header(out: &mut Vec<u8>, revision: Revision) {
    frame::put_with(out, |b| {
        b.extend_from_slice(SNAPSHOT_MAGIC);
        b.extend_from_slice(&SNAPSHOT_FORMAT.to_be_bytes());
        b.extend_from_slice(&revision.to_be_bytes());
    });
}

pub fn put_snapshot_object(out: &mut Vec<u8>, object: &StoredObject) {
    frame::put_with(out, |b| {
        b.push(b'o');
        b.extend_from_slice(&object.revision.to_be_bytes());
        frame::put_sized(b, object.key.as_bytes());
        b.extend_from_slice(&object.json);
    });
}

pub fn put_snapshot_trailer(out: &mut Vec<u8>, objects: u64) {
    frame::put_with(out, |b| {
        b.push(b'e');
        b.extend_from_slice(&objects.to_be_bytes());
    });
}

/// One decoded snapshot record.
pub enum SnapshotRecord {
    Object(StoredObject),
    Trailer { objects: u64 },
}

/// The snapshot's revision, if `body` is a header of a format we read.
pub fn decode_snapshot_header(body: &[u8]) -> Option<Revision> {
    let mut r = Reader::new(body);
    if r.bytes(SNAPSHOT_MAGIC.len())? != SNAPSHOT_MAGIC || r.u32()? != SNAPSHOT_FORMAT {
        return None;
    }
    r.u64()
}

pub fn decode_snapshot_record(body: &[u8]) -> Option<SnapshotRecord> {
    let mut r = Reader::new(body);
    match r.u8()? {
        b'o' => {
            let revision = r.u64()?;
            let key: Arc<str> = Arc::from(std::str::from_utf8(r.sized()?).ok()?);
            let json = Bytes::copy_from_slice(r.rest());
            Some(SnapshotRecord::Object(StoredObject {
                key,
                revision,
                json,
            }))
        }
        b'e' => Some(SnapshotRecord::Trailer { objects: r.u64()? }),
        _ => None,
    }
}

/// The revision stamped in a stored object's `metadata.resourceVersion`
/// (every stored object has one): how an event's `previous` state is put
/// back when a list is served at an older revision.
pub fn revision_of(json: &[u8]) -> Option<Revision> {
    #[derive(serde::Deserialize)]
    struct Meta<'a> {
        #[serde(borrow, rename = "resourceVersion")]
        resource_version: Option<&'a str>,
    }
    #[derive(serde::Deserialize)]
    struct Object<'a> {
        #[serde(borrow)]
        metadata: Meta<'a>,
    }
    serde_json::from_slice::<Object>(json)
        .ok()?
        .metadata
        .resource_version?
        .parse()
        .ok()
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
    use crate::store::frame::{Format, Frames};

    #[test]
    fn event_round_trip() {
        for previous in [None, Some(Bytes::from_static(b"{\"a\":1}"))] {
            let e = Event {
                revision: 7,
                kind: EventKind::Modified,
                key: Arc::from("/registry/nodes/n1"),
                object: Bytes::from_static(b"{\"b\":2}"),
                previous: previous.clone(),
                derived: Default::default(),
            };
            let mut buf = Vec::new();
            put_event(&mut buf, &e);
            let body = Frames::new(&buf, Format::V2).next().unwrap();
            let d = decode_event(body).unwrap();
            assert_eq!(d.revision, 7);
            assert_eq!(d.kind, EventKind::Modified);
            assert_eq!(&*d.key, "/registry/nodes/n1");
            assert_eq!(d.object, e.object);
            assert_eq!(d.previous, previous);
        }
        assert!(decode_event(b"\x00\x00\x00\x00\x00\x00\x00\x01\x09").is_none());
    }

    #[test]
    fn snapshot_records_round_trip() {
        let mut buf = Vec::new();
        put_snapshot_header(&mut buf, 42);
        put_snapshot_object(
            &mut buf,
            &StoredObject {
                key: Arc::from("/registry/leases/kube-node-lease/n1"),
                revision: 40,
                json: Bytes::from_static(b"{}"),
            },
        );
        put_snapshot_trailer(&mut buf, 1);
        let mut frames = Frames::new(&buf, Format::V2);
        assert_eq!(decode_snapshot_header(frames.next().unwrap()), Some(42));
        match decode_snapshot_record(frames.next().unwrap()) {
            Some(SnapshotRecord::Object(o)) => {
                assert_eq!(o.revision, 40);
                assert_eq!(&*o.key, "/registry/leases/kube-node-lease/n1");
                assert_eq!(&o.json[..], b"{}");
            }
            _ => panic!("expected an object record"),
        }
        assert!(matches!(
            decode_snapshot_record(frames.next().unwrap()),
            Some(SnapshotRecord::Trailer { objects: 1 })
        ));
        assert!(frames.next().is_none());
        assert_eq!(frames.tail(0), crate::store::frame::Tail::Clean);
    }
}
