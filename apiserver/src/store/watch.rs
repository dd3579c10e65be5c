//! A watch: history first, then the live feed, with no gap or repeat at the seam.
//!
//! As in etcd's watchable store, a new watcher is "unsynced" while it reads
//! history from its start revision up to the revision that was published when
//! it subscribed, and "synced" afterwards, fed from a bounded per-resource
//! broadcast. Writers never wait for watchers: one that falls behind the
//! broadcast buffer goes back to history for what it missed, as an etcd
//! watcher that falls behind becomes unsynced again, and is ended only if
//! history no longer has it (`Compacted`: 410 for the client, which
//! relists).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::broadcast;

use super::{Event, Revision, StoreError};

/// Where a catching-up watcher reads past events from.
pub trait History: Send + Sync {
    /// Up to `max` events with revisions in `(after, upto]`, in order.
    fn read(
        &self,
        after: Revision,
        upto: Revision,
        max: usize,
    ) -> Result<Vec<Arc<Event>>, StoreError>;
    /// The newest revision whose history has been dropped.
    fn compacted(&self) -> Revision;
    /// Whether every revision is in this history (one store's own log), so
    /// that a hole at the front of a read means compaction overtook the
    /// reader. A history of one resource in a store that numbers every
    /// resource's writes together (etcd) has holes, and says `Compacted`
    /// from `read` itself instead.
    fn consecutive(&self) -> bool {
        true
    }
}

const CATCH_UP_BATCH: usize = 256;

pub struct WatchStream {
    prefix: String,
    /// Every revision up to here has been delivered or filtered out.
    last: Revision,
    /// While catching up: read history up to this revision, then go live.
    history_end: Option<Revision>,
    history: Arc<dyn History>,
    buffer: VecDeque<Arc<Event>>,
    live: broadcast::Receiver<Arc<Event>>,
    published: Arc<AtomicU64>,
    /// Set by `until`: the stream ends once history is read up to here.
    stop_at: Option<Revision>,
    /// What was published when this stream subscribed: history holds
    /// every revision up to here.
    subscribed_at: Revision,
    /// The live feed overran this reader: the next live event is taken
    /// only after history fills what was skipped before it.
    lagged: bool,
    /// A live event held while history fills the gap before it.
    held: Option<Arc<Event>>,
}

impl WatchStream {
    pub(crate) fn new(
        prefix: &str,
        after: Revision,
        history_end: Revision,
        history: Arc<dyn History>,
        live: broadcast::Receiver<Arc<Event>>,
        published: Arc<AtomicU64>,
    ) -> WatchStream {
        WatchStream {
            prefix: prefix.to_string(),
            last: after,
            history_end: (history_end > after).then_some(history_end),
            history,
            buffer: VecDeque::new(),
            live,
            published,
            stop_at: None,
            subscribed_at: history_end,
            lagged: false,
            held: None,
        }
    }

    /// This watch's history up to `upto` and nothing after: the catch-up of
    /// a watcher that joins a feed already at `upto` (the API server's
    /// watch fan-out). `upto` must be in history: at most a revision this
    /// store's watches have delivered, or `published_at_start` of one.
    pub fn until(mut self, upto: Revision) -> WatchStream {
        self.stop_at = Some(upto);
        self.history_end = (upto > self.last).then_some(upto);
        self
    }

    /// The next change, `Err` once (history compacted past it), or `None`
    /// when the store shuts down.
    pub async fn next(&mut self) -> Option<Result<Arc<Event>, StoreError>> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                return Some(Ok(event));
            }
            if let Some(end) = self.history_end {
                if let Err(e) = self.catch_up(end) {
                    self.history_end = None;
                    return Some(Err(e));
                }
                continue;
            }
            if self.stop_at.is_some() {
                return None;
            }
            let event = match self.held.take() {
                Some(event) => event,
                None => match self.live.recv().await {
                    Ok(event) => event,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.lagged = true;
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            };
            if event.revision <= self.last {
                continue;
            }
            if std::mem::take(&mut self.lagged) && event.revision > self.last + 1 {
                // Every event is in history before it is sent: read what
                // the overrun skipped, then this one.
                self.history_end = Some(event.revision - 1);
                self.held = Some(event);
                continue;
            }
            self.last = event.revision;
            if event.key.starts_with(&self.prefix) {
                return Some(Ok(event));
            }
        }
    }

    fn catch_up(&mut self, end: Revision) -> Result<(), StoreError> {
        if self.last >= end {
            self.history_end = None;
            return Ok(());
        }
        let batch = self.history.read(self.last, end, CATCH_UP_BATCH)?;
        // Every write records history, so revisions are consecutive: a hole
        // at the front means compaction overtook this reader.
        if self.history.consecutive() && batch.first().map(|e| e.revision) != Some(self.last + 1) {
            return Err(StoreError::Compacted {
                requested: self.last,
                compacted: self.history.compacted(),
            });
        }
        if batch.is_empty() {
            self.last = end;
            self.history_end = None;
            return Ok(());
        }
        for event in batch {
            self.last = event.revision;
            if event.key.starts_with(&self.prefix) {
                self.buffer.push_back(event);
            }
        }
        Ok(())
    }

    /// The revision published when this stream subscribed: everything up
    /// to it is in history, whatever the live feed has reached.
    pub fn published_at_start(&self) -> Revision {
        self.subscribed_at
    }

    /// A revision this watcher has provably seen everything up to, for a
    /// BOOKMARK: only when nothing is buffered or in flight for it.
    pub fn progress(&self) -> Option<Revision> {
        if self.history_end.is_some() || !self.buffer.is_empty() || self.held.is_some() {
            return None;
        }
        // The publisher sends a batch's events before it stores `published`,
        // so an empty queue after this load means all of them were received.
        let published = self.published.load(Ordering::Acquire);
        self.live.is_empty().then_some(published.max(self.last))
    }
}
