//! `?watch=true`: newline-delimited JSON events over a chunked response.
//!
//! Each watch is a task that takes its events from the kind's fan-out
//! (`registry::fanout`) and writes lines into a channel that the response
//! body drains, bounded in bytes (`WATCH_BUFFER_BYTES`), not only in
//! chunks. A client that stops reading fills it; the task then stops
//! taking events, which wait in the fan-out within their own byte budget
//! (writers never wait for a watcher). Once that overflows, or nothing
//! more has been taken for the server's `watchStuckTimeout`, the watcher is
//! closed: a 410 ERROR event is queued (a slow client that reads on sees
//! it, and relists), and a moment later the connection is closed, so that
//! neither the task nor hyper's buffers outlive a client that is gone in
//! all but name.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use mube_apis::watch::EventType;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::rest::Params;
use super::table::{self, TableRequest};
use super::AppState;
use crate::error::ApiError;
use crate::registry::fanout::{translate, Dispatched, Next, Subscription};
use crate::registry::{Filter, Resource};
use crate::store::ListCursor;

/// Chunks buffered between the watch task and a slow client (the byte
/// budget below is what binds; this bounds the count of small ones).
const LINES_IN_FLIGHT: usize = 64;
/// Bytes queued for a client and not yet written to its socket, in this
/// task's channel and in hyper's buffer together.
const WATCH_BUFFER_BYTES: usize = 16 * 1024;
/// A watch's socket send buffer (the kernel doubles it for its own
/// bookkeeping): room for bursts at loopback speed and a few MB/s over a
/// WAN, without the 4 MiB the kernel would let a stuck client take.
const SOCKET_SEND_BUFFER: usize = 128 * 1024;
/// A connection's send buffer once its watch is over: the kernel's own
/// ceiling for one it sizes itself (`tcp_wmem`), so that the next request
/// on a kept-alive connection (a relist) is not held to a watch's size.
/// Setting any size turns the kernel's sizing off for the socket.
const SOCKET_SEND_BUFFER_AFTER: usize = 4 * 1024 * 1024;
/// Largest chunk of events sent in one write: half the budget, so that one
/// can be queued while the other is being written.
const MAX_CHUNK: usize = WATCH_BUFFER_BYTES / 2;

/// Objects or events a watch takes in one go before it lets other tasks
/// run, whether or not its filter kept any.
const YIELD_EVERY: usize = 256;

/// A chunk queued for the connection. One sent by a watch task owns its
/// share of the byte budget (`held`) until hyper has written it and lets
/// it go: the budget bounds what hyper holds of a watch too.
type Queued = Bytes;

/// A chunk that holds its share of a watch's budget for as long as it
/// lives.
struct Held {
    bytes: Bytes,
    _share: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// `bytes`, holding `share` until the last of it is dropped.
fn held(bytes: Bytes, share: Option<tokio::sync::OwnedSemaphorePermit>) -> Bytes {
    Bytes::from_owner(Held {
        bytes,
        _share: share,
    })
}

fn line(kind: EventType, object: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(object.len() + 32);
    line_into(&mut out, kind, object);
    Bytes::from(out)
}

/// Appends an event's line to `out`.
fn line_into(out: &mut Vec<u8>, kind: EventType, object: &[u8]) {
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(kind.as_str().as_bytes());
    out.extend_from_slice(b"\",\"object\":");
    out.extend_from_slice(object);
    out.extend_from_slice(b"}\n");
}

fn error_line(error: ApiError) -> Bytes {
    let object = serde_json::to_vec(&error.status).unwrap_or_default();
    line(EventType::Error, &object)
}

fn bookmark(r: &Resource, revision: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    let object = json!({"kind": r.kind, "apiVersion": r.api_version(), "metadata": metadata});
    line(EventType::Bookmark, object.to_string().as_bytes())
}

pub async fn serve(
    state: &AppState,
    r: Arc<Resource>,
    ns: Option<&str>,
    filter: Filter,
    params: &Params,
    table: Option<TableRequest>,
    connection_control: Option<super::serve::ConnectionControl>,
) -> Result<Response, ApiError> {
    let requested = params.revision()?;
    if let Some(rev) = requested {
        // A watch from a revision the server has not reached (or not made
        // durable) would silently skip what comes before it: wait briefly,
        // then answer as Kubernetes does (504 ResourceVersionTooLarge).
        state
            .registry
            .store()
            .wait_for(rev, state.read_wait)
            .await?;
    }
    let (initial, after) = match requested {
        Some(rev) if !params.send_initial_events => (None, rev),
        // No resourceVersion, "0", or sendInitialEvents: the current state as
        // synthetic ADDED events first, then changes after that snapshot.
        _ => {
            let cursor = state.registry.list_cursor(&r, ns).await?;
            let at = cursor.revision;
            (Some(cursor), at)
        }
    };
    let (tx, rx) = mpsc::channel::<Queued>(LINES_IN_FLIGHT);
    match state.registry.subscribe(&r, ns, filter.clone(), after) {
        Ok(subscription) => {
            // Given back when the task ends (`WatchTask`'s drop).
            if let Some(control) = &connection_control {
                control.cap_send_buffer(SOCKET_SEND_BUFFER);
            }
            let events = crate::metrics::metrics()
                .watch_events
                .with_label_values(&[r.group, r.version, r.plural]);
            let task = WatchTask {
                overflowed: subscription.overflowed(),
                events,
                r,
                filter,
                tx,
                shutdown: state.shutdown.clone(),
                allow_bookmarks: params.allow_bookmarks,
                initial_events_end: params.send_initial_events,
                bookmark_every: state.bookmark_interval,
                timeout: params.timeout,
                table,
                table_headers_sent: false,
                budget: Arc::new(tokio::sync::Semaphore::new(WATCH_BUFFER_BYTES)),
                stuck_after: state.watch_stuck_timeout,
                connection_control,
            };
            tokio::spawn(task.run(initial, after, subscription));
        }
        // Too old a resourceVersion: Kubernetes answers 200 with one ERROR
        // event carrying 410 Expired, which clients take as "relist".
        Err(e) => {
            let _ = tx.try_send(error_line(e));
        }
    }
    // The budget a chunk holds is given back once hyper has written it.
    let body = Body::from_stream(ReceiverStream::new(rx).map(Ok::<_, Infallible>));
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response())
}

struct WatchTask {
    /// Cancelled when the watcher falls past its backlog (`fanout`).
    overflowed: CancellationToken,
    /// `apiserver_watch_events_total` of this resource.
    events: mube_process::metrics::prometheus::IntCounter,
    r: Arc<Resource>,
    filter: Filter,
    tx: mpsc::Sender<Queued>,
    shutdown: CancellationToken,
    allow_bookmarks: bool,
    initial_events_end: bool,
    bookmark_every: std::time::Duration,
    timeout: Option<std::time::Duration>,
    /// Send each object as a one-row Table (kubectl get -w).
    table: Option<TableRequest>,
    /// Column definitions go with the first Table only, as Kubernetes does.
    table_headers_sent: bool,
    /// `WATCH_BUFFER_BYTES` permits: a chunk takes its size's worth.
    budget: Arc<tokio::sync::Semaphore>,
    /// How long a chunk may wait for room before the watcher is closed.
    stuck_after: std::time::Duration,
    /// Closes the connection (absent for a caller without one).
    connection_control: Option<super::serve::ConnectionControl>,
}

impl WatchTask {
    /// The event line for `object` (stored at `revision`), as a Table if one
    /// was asked for.
    fn event(&mut self, kind: EventType, object: &[u8], revision: u64) -> Bytes {
        let mut out = Vec::with_capacity(object.len() + 32);
        self.event_into(&mut out, kind, object, revision);
        Bytes::from(out)
    }

    /// `event`, appended to `out`.
    fn event_into(&mut self, out: &mut Vec<u8>, kind: EventType, object: &[u8], revision: u64) {
        let Some(t) = self.table else {
            return line_into(out, kind, &self.r.served(object));
        };
        let meta = json!({"resourceVersion": revision.to_string()});
        let headers = !self.table_headers_sent;
        self.table_headers_sent = true;
        match table::render(&self.r, t, [object], meta, headers) {
            Ok(rendered) => line_into(out, kind, &rendered),
            Err(_) => line_into(out, kind, object),
        }
    }

    /// The line for a dispatched event: made once for every watcher that
    /// wants it in the same form, except a Table's first line, which alone
    /// carries the column definitions.
    fn shared_event(&mut self, kind: EventType, d: &Dispatched) -> Bytes {
        if self.table.is_some() && !self.table_headers_sent {
            return self.event(kind, &d.event.object, d.event.revision);
        }
        let (r, table) = (&self.r, self.table);
        d.form(form(kind, table), |event| match table {
            None => line(kind, &r.served(&event.object)),
            Some(t) => {
                let meta = json!({"resourceVersion": event.revision.to_string()});
                match table::render(r, t, [&event.object[..]], meta, false) {
                    Ok(rendered) => line(kind, &rendered),
                    Err(_) => line(kind, &event.object),
                }
            }
        })
    }

    /// Queues one chunk; false once the client is gone, the server stops,
    /// or the client has taken nothing for `stuck_after` (the watcher is
    /// then closed: `close_stuck`).
    async fn send(&self, bytes: Bytes) -> bool {
        let share = bytes.len().clamp(1, WATCH_BUFFER_BYTES) as u32;
        let queue = async {
            let permit = self.budget.clone().acquire_many_owned(share).await.ok()?;
            self.tx.send(held(bytes, Some(permit))).await.ok()
        };
        tokio::select! {
            sent = tokio::time::timeout(self.stuck_after, queue) => match sent {
                Ok(sent) => sent.is_some(),
                Err(_) => {
                    // It has had its time already: a second more.
                    self.close_stuck(self.stuck_after.min(std::time::Duration::from_secs(1))).await;
                    false
                }
            },
            _ = self.overflowed.cancelled() => {
                self.close_stuck(self.stuck_after).await;
                false
            }
            _ = self.shutdown.cancelled() => false,
        }
    }

    /// A watcher whose client took nothing for `stuck_after`, or fell past
    /// its backlog: Kubernetes' answer to a watcher that falls behind, a
    /// 410 ERROR event (a client that reads on relists), then, if it is
    /// not taken within `grace`, the connection closed. Nothing of its
    /// backlog is held meanwhile.
    async fn close_stuck(&self, grace: std::time::Duration) {
        crate::metrics::metrics()
            .terminated_watchers
            .with_label_values(&[&self.r.qualified_plural()])
            .inc();
        tracing::info!(
            resource = self.r.plural,
            "closing a watch whose client stopped reading"
        );
        // The closing event holds one permit of its own, so that the budget
        // is whole again exactly when it has been taken: waited for, not
        // polled (thousands of watchers may be closing at once).
        self.budget.add_permits(1);
        let permit = self.budget.clone().try_acquire_owned().ok();
        let _ = self.tx.try_send(held(
            error_line(ApiError::from(crate::store::StoreError::TooSlow)),
            permit,
        ));
        let whole = WATCH_BUFFER_BYTES as u32 + 1;
        let drained = async {
            tokio::select! {
                _ = self.budget.acquire_many(whole) => {}
                _ = self.tx.closed() => {}
            }
        };
        if tokio::time::timeout(grace, drained).await.is_err() {
            if let Some(control) = &self.connection_control {
                control.hang_up();
            }
        }
    }

    async fn run(mut self, initial: Option<ListCursor>, after: u64, mut feed: Subscription) {
        let deadline = self.timeout.map(|t| tokio::time::Instant::now() + t);
        // The initial events go out as they are read, a chunk at a time: a
        // client that takes them slowly holds a cursor, not the list.
        let mut chunk = Vec::new();
        let mut events = 0;
        for (read, object) in initial.into_iter().flatten().enumerate() {
            // A filter may pass over many objects between two it keeps:
            // the other tasks get their turn meanwhile.
            if read % YIELD_EVERY == YIELD_EVERY - 1 {
                tokio::task::yield_now().await;
            }
            // An object that does not decode matches nothing, as in a list.
            if !self.filter.is_empty()
                && !object
                    .value()
                    .is_ok_and(|v| self.filter.matches(&self.r, &v))
            {
                continue;
            }
            self.event_into(&mut chunk, EventType::Added, &object.json, object.revision);
            events += 1;
            if chunk.len() >= MAX_CHUNK {
                self.events.inc_by(std::mem::take(&mut events));
                if !self.send(Bytes::from(std::mem::take(&mut chunk))).await {
                    return;
                }
            }
        }
        if !chunk.is_empty() {
            self.events.inc_by(events);
            if !self.send(Bytes::from(chunk)).await {
                return;
            }
        }
        let mut last_bookmark = after;
        if self.initial_events_end && !self.send(bookmark(&self.r, after, true)).await {
            return;
        }
        let mut ticker = tokio::time::interval(self.bookmark_every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            let expired = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.tx.closed() => return,
                _ = self.shutdown.cancelled() => return,
                _ = expired => return,
                _ = ticker.tick(), if self.allow_bookmarks => {
                    if let Some(revision) = feed.progress() {
                        if revision > last_bookmark {
                            last_bookmark = revision;
                            if !self.send(bookmark(&self.r, revision, false)).await {
                                return;
                            }
                        }
                    }
                }
                next = feed.next() => {
                    // Events already waiting go out in one chunk: a watcher
                    // that is behind costs one write, not one per event.
                    let mut chunk = Vec::new();
                    let mut size = 0;
                    // Counted once per chunk: one shared counter written per
                    // event by every watcher would be a hot cache line.
                    let mut events = 0;
                    // Taken in this go, kept by the filter or not.
                    let mut taken = 0;
                    let mut next = next;
                    let ended = loop {
                        let line = match next {
                            Next::History(event) => translate(&self.r, &self.filter, &event)
                                .map(|kind| self.event(kind, &event.object, event.revision)),
                            Next::Live(kind, d) => Some(self.shared_event(kind, &d)),
                            Next::End(e) => break Some(e),
                        };
                        if let Some(line) = line {
                            size += line.len();
                            chunk.push(line);
                            events += 1;
                        }
                        taken += 1;
                        if size >= MAX_CHUNK || taken >= YIELD_EVERY {
                            break None;
                        }
                        match feed.try_next() {
                            Some(more) => next = more,
                            None => break None,
                        }
                    };
                    self.events.inc_by(events);
                    // One event goes out as its line; several in one write
                    // (the lines let go before it waits for room).
                    let chunk = match chunk.len() {
                        0 => None,
                        1 => chunk.pop(),
                        _ => Some(Bytes::from(std::mem::take(&mut chunk).concat())),
                    };
                    if let Some(chunk) = chunk {
                        if !self.send(chunk).await {
                            return;
                        }
                    }
                    match ended {
                        None => {}
                        Some(None) => return,
                        Some(Some(crate::store::StoreError::TooSlow)) => {
                            // Fell behind its backlog: as for a client that
                            // took nothing for its time budget.
                            self.close_stuck(self.stuck_after).await;
                            return;
                        }
                        Some(Some(e)) => {
                            tracing::info!(resource = self.r.plural, error = %e, "watch ended with an error");
                            let _ = self.send(error_line(ApiError::from(e))).await;
                            return;
                        }
                    }
                }
            }
        }
    }
}

impl Drop for WatchTask {
    fn drop(&mut self) {
        if let Some(control) = &self.connection_control {
            control.cap_send_buffer(SOCKET_SEND_BUFFER_AFTER);
        }
    }
}

/// Which encoding of an event a watcher wants (`Dispatched::form`).
fn form(kind: EventType, table: Option<TableRequest>) -> u32 {
    let kind = match kind {
        EventType::Added => 0,
        EventType::Modified => 1,
        EventType::Deleted => 2,
        EventType::Bookmark => 3,
        EventType::Error => 4,
    };
    let table = match table {
        None => 0,
        Some(t) => {
            let include = match t.include {
                table::Include::None => 1,
                table::Include::Metadata => 2,
                table::Include::Object => 3,
            };
            include + 3 * u32::from(t.api_version != "meta.k8s.io/v1")
        }
    };
    table * 8 + kind
}
