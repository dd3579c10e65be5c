//! Watch fan-out: one store watch per served kind, dispatched to the API
//! server's watchers through an index.
//!
//! Kubernetes' watch cache does this job (`cacher.go`): each watcher is
//! filed under the value of the field it selects on (pods by
//! `spec.nodeName`), so an event is offered only to the watchers that can
//! match it, not to every watcher of its kind. Here, per served kind:
//!
//! - one `Dispatcher` task reads the store's watch of the whole kind and,
//!   for each event, looks up the watchers filed under the event's index
//!   values (before and after the change, so that a pod leaving a node
//!   reaches that node's watcher as DELETED), under its namespace, and the
//!   ones that watch everything. Label selectors are matched one by one
//!   among those;
//! - delivering never waits: each watcher has a queue bounded in bytes
//!   (`BACKLOG_BYTES` of events it has not taken), and one that overflows
//!   is ended with `TooSlow` (the client gets 410 and relists, and its
//!   connection is closed if it does not take that), so writers and the
//!   other watchers never wait on a slow one. The dispatcher itself, if
//!   the store's feed overruns it, reads what it missed from history;
//! - an event is shared by all its watchers (`Dispatched`), and so is each
//!   encoding of it (`Dispatched::form`): serialized once per form, not
//!   once per watcher;
//! - a watcher that starts before the dispatcher's position reads that
//!   stretch from the store's history first (`WatchStream::until`), then
//!   takes the feed; one that starts after it skips what it has seen.
//!
//! The dispatcher starts with its kind's first watcher and stops once its
//! kind has had no watcher for two progress ticks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use mube_apis::watch::EventType;
use tokio_util::sync::CancellationToken;

use super::{Filter, Projection, Resource};
use crate::store::{Event, EventKind, Revision, Store, StoreError, WatchStream};

/// Bytes of events a watcher may have waiting for it (shared with the
/// store's history while they wait, so this bounds a backlog, not copies).
/// Past it, the watcher is ended: a burst a reading client takes in well
/// under a second fits; a client that stopped reading does not.
pub const BACKLOG_BYTES: usize = 1024 * 1024;
/// Events taken from the store in one pass of the dispatcher: one lock of
/// the watchers, and one wake-up of each watcher, per pass.
const PASS: usize = 512;

/// What a watcher is told.
pub enum Delivery {
    /// A change, as this watcher sees it (see `translate`).
    Event(EventType, Arc<Dispatched>),
    /// The watch is over: the store ended it, or the watcher fell too far
    /// behind (`TooSlow`). Boxed: a backlog is a queue of these, and the
    /// error would make every slot several times an event's size.
    End(Box<StoreError>),
}

/// A watcher's queue: what the dispatcher has offered it and it has not
/// taken. The dispatcher can empty it, so that a watcher it lets go holds
/// nothing while its client is given time to read the 410.
#[derive(Default)]
struct Backlog {
    items: Mutex<std::collections::VecDeque<Delivery>>,
    /// Bytes the queued events hold (`held_bytes`).
    bytes: AtomicUsize,
    /// Nothing more comes once the queue is empty.
    closed: AtomicBool,
    ready: tokio::sync::Notify,
}

impl Backlog {
    fn lock(&self) -> MutexGuard<'_, std::collections::VecDeque<Delivery>> {
        self.items.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, delivery: Delivery) {
        self.lock().push_back(delivery);
        self.ready.notify_one();
    }

    /// Drops what is queued; `error` is what the watcher is told last.
    fn end(&self, error: Option<StoreError>) {
        {
            let mut items = self.lock();
            // Its room too: a backlog near its budget is a thousand slots.
            *items = std::collections::VecDeque::new();
            if let Some(e) = error {
                items.push_back(Delivery::End(Box::new(e)));
            }
            self.bytes.store(0, Ordering::Release);
            self.closed.store(true, Ordering::Release);
        }
        self.ready.notify_one();
    }

    /// The next delivery if one is queued; `Some(None)` once it is over.
    fn try_take(&self) -> Option<Option<Delivery>> {
        let mut items = self.lock();
        match items.pop_front() {
            Some(Delivery::Event(kind, d)) => {
                self.bytes.fetch_sub(held_bytes(&d.event), Ordering::AcqRel);
                Some(Some(Delivery::Event(kind, d)))
            }
            Some(end) => Some(Some(end)),
            None if self.closed.load(Ordering::Acquire) => Some(None),
            None => {
                // A burst taken: give back the room it needed.
                if items.capacity() > 64 {
                    items.shrink_to(8);
                }
                None
            }
        }
    }

    async fn take(&self) -> Option<Delivery> {
        loop {
            if let Some(taken) = self.try_take() {
                return taken;
            }
            // `notify_one` keeps a permit when no one waits: no wake-up is
            // lost between the look above and this wait.
            self.ready.notified().await;
        }
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// One event, shared by every watcher it is delivered to, with the
/// encodings made of it so far.
pub struct Dispatched {
    pub event: Arc<Event>,
    /// (form, encoding): a handful at most (a type of event, plain or as a
    /// Table), made by the first watcher that needs each.
    forms: Mutex<Vec<(u32, Bytes)>>,
}

impl Dispatched {
    pub fn new(event: Arc<Event>) -> Dispatched {
        Dispatched {
            event,
            forms: Mutex::new(Vec::new()),
        }
    }

    /// The encoding `form` of this event, made once for all its watchers.
    pub fn form(&self, form: u32, make: impl FnOnce(&Event) -> Bytes) -> Bytes {
        let mut forms = self.forms.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, bytes)) = forms.iter().find(|(f, _)| *f == form) {
            return bytes.clone();
        }
        // Made under the lock: a second watcher wanting the same form
        // waits for it rather than making it again.
        let bytes = make(&self.event);
        forms.push((form, bytes.clone()));
        bytes
    }
}

/// The event a filtered watcher sees: an object that starts matching its
/// selector is ADDED for it, one that stops matching is DELETED.
pub fn translate(r: &Resource, filter: &Filter, event: &Event) -> Option<EventType> {
    let plain = match event.kind {
        EventKind::Added => EventType::Added,
        EventKind::Modified => EventType::Modified,
        EventKind::Deleted => EventType::Deleted,
    };
    if filter.is_empty() {
        return Some(plain);
    }
    let (now, before) = projections(r, event);
    let now = now.as_ref().is_some_and(|p| filter.matches_projection(p));
    let before = before
        .as_ref()
        .is_some_and(|p| filter.matches_projection(p));
    match (event.kind, before, now) {
        (EventKind::Deleted, b, n) => (b || n).then_some(EventType::Deleted),
        (_, true, true) => Some(EventType::Modified),
        (_, false, true) => Some(EventType::Added),
        (_, true, false) => Some(EventType::Deleted),
        (_, false, false) => None,
    }
}

type Projections = (Option<Projection>, Option<Projection>);

/// What selectors read of an event, after and before it: decoded once per
/// event for all its watchers (kept in `Event::derived`); an object that
/// does not decode matches nothing.
fn projections<'e>(r: &Resource, event: &'e Event) -> &'e Projections {
    static NONE: Projections = (None, None);
    let derived = event.derived.get_or_init(|| {
        let project = |bytes: &Bytes| {
            serde_json::from_slice::<serde_json::Value>(bytes)
                .ok()
                .map(|v| Projection::of(r, &v))
        };
        Arc::new((
            project(&event.object),
            event.previous.as_ref().and_then(project),
        ))
    });
    derived.downcast_ref::<Projections>().unwrap_or(&NONE)
}

/// Every served kind's dispatcher.
pub struct Fanout {
    store: Arc<dyn Store>,
    /// By `apiVersion`, plural and the `Resource` itself: a custom kind
    /// redefined gets a new one.
    kinds: Mutex<HashMap<String, Arc<Dispatcher>>>,
    /// How often a dispatcher records its progress for bookmarks, and
    /// looks whether it still has watchers.
    tick: Duration,
}

impl Fanout {
    pub fn new(store: Arc<dyn Store>, tick: Duration) -> Fanout {
        Fanout {
            store,
            kinds: Mutex::new(HashMap::new()),
            tick,
        }
    }

    fn lock_kinds(&self) -> MutexGuard<'_, HashMap<String, Arc<Dispatcher>>> {
        self.kinds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A watch of `r` in `namespace` (all when `None`) through `filter`,
    /// of every change after `after`.
    pub fn subscribe(
        self: &Arc<Self>,
        r: &Arc<Resource>,
        namespace: Option<&str>,
        filter: Filter,
        after: Revision,
    ) -> Result<Subscription, StoreError> {
        // A custom kind redefined is a new `Resource`: it gets its own
        // dispatcher, and the old one's watchers keep theirs until they go.
        let name = format!("{}/{}@{:p}", r.api_version(), r.plural, Arc::as_ptr(r));
        let prefix = r.prefix(namespace);
        loop {
            let dispatcher = self.dispatcher(&name, r, after)?;
            let slot = match (
                dispatcher.index_field.and_then(|f| filter.equals(f)),
                namespace.filter(|_| r.namespaced),
            ) {
                (Some(value), _) => Slot::Indexed(value.to_string()),
                (None, Some(ns)) => Slot::Namespace(ns.to_string()),
                (None, None) => Slot::Everywhere,
            };
            // History for what came before the dispatcher's position, opened
            // outside its lock (the position only moves on).
            let behind = after < dispatcher.lock().dispatched;
            let mut history = match behind {
                true => Some(self.store.watch(&prefix, after)?),
                false => None,
            };
            let mut watchers = dispatcher.lock();
            // One that ended after it was looked up takes no one: look again.
            if dispatcher.ended.load(Ordering::Acquire) {
                continue;
            }
            let dispatched = watchers.dispatched;
            // The catch-up reads history up to the dispatcher's position; the
            // feed brings the rest.
            let catch_up = if after < dispatched {
                let history = match history.take() {
                    Some(history) => history,
                    // It moved past `after` just now.
                    None => self.store.watch(&prefix, after)?,
                };
                Some(history.until(dispatched))
            } else {
                None
            };
            let backlog = Arc::new(Backlog::default());
            let overflowed = CancellationToken::new();
            let id = watchers.next_id;
            watchers.next_id += 1;
            watchers.file(
                id,
                Watcher {
                    backlog: backlog.clone(),
                    filter,
                    prefix: prefix.clone(),
                    after,
                    overflowed: overflowed.clone(),
                    slot,
                },
            );
            drop(watchers);
            return Ok(Subscription {
                catch_up,
                backlog,
                overflowed,
                registration: Registration {
                    dispatcher: Arc::downgrade(&dispatcher),
                    id,
                },
                last: after.max(dispatched),
            });
        }
    }

    /// `r`'s dispatcher, started (at `from`) if it has none.
    fn dispatcher(
        self: &Arc<Self>,
        name: &str,
        r: &Arc<Resource>,
        from: Revision,
    ) -> Result<Arc<Dispatcher>, StoreError> {
        let mut kinds = self.lock_kinds();
        if let Some(d) = kinds
            .get(name)
            .filter(|d| Arc::ptr_eq(&d.r, r) && !d.ended.load(Ordering::Acquire))
        {
            return Ok(d.clone());
        }
        // It starts where the first watcher does, or earlier, where history
        // surely holds everything (etcd's cache may not have reached a
        // revision read from etcd itself): its position is where later
        // watchers' catch-up from history ends.
        let stream = self.store.watch(&r.prefix(None), from)?;
        let (start, stream) = match stream.published_at_start() {
            held if held < from => (held, self.store.watch(&r.prefix(None), held)?),
            _ => (from, stream),
        };
        let d = Arc::new(Dispatcher::new(r.clone(), start));
        kinds.insert(name.to_string(), d.clone());
        let ending = Ending {
            dispatcher: d.clone(),
            fanout: Arc::downgrade(self),
            name: name.to_string(),
        };
        tokio::spawn(d.clone().run(stream, ending, self.tick));
        Ok(d)
    }
}

/// A watcher's end of the fan-out: its catch-up from history, then its
/// feed. Dropping it leaves the dispatcher.
pub struct Subscription {
    catch_up: Option<WatchStream>,
    backlog: Arc<Backlog>,
    overflowed: CancellationToken,
    registration: Registration,
    /// The newest revision delivered or known to hold nothing for it.
    last: Revision,
}

/// What a watcher takes next.
pub enum Next {
    /// From its catch-up: a raw event, to be filtered by the watcher.
    History(Arc<Event>),
    /// From the feed, already filtered.
    Live(EventType, Arc<Dispatched>),
    End(Option<StoreError>),
}

impl Subscription {
    pub async fn next(&mut self) -> Next {
        if let Some(history) = &mut self.catch_up {
            match history.next().await {
                Some(Ok(event)) => return Next::History(event),
                Some(Err(e)) => return Next::End(Some(e)),
                None => self.catch_up = None,
            }
        }
        let delivery = self.backlog.take().await;
        self.take_delivery(delivery)
    }

    /// `next`, if something is ready now.
    pub fn try_next(&mut self) -> Option<Next> {
        if self.catch_up.is_some() {
            return self.next().now_or_never();
        }
        let taken = self.backlog.try_take()?;
        Some(self.take_delivery(taken))
    }

    fn take_delivery(&mut self, delivery: Option<Delivery>) -> Next {
        match delivery {
            Some(Delivery::Event(kind, d)) => {
                self.last = self.last.max(d.event.revision);
                Next::Live(kind, d)
            }
            Some(Delivery::End(e)) => Next::End(Some(*e)),
            None => Next::End(None),
        }
    }

    /// A revision this watcher has seen everything up to, for a BOOKMARK:
    /// only when nothing is waiting for it.
    pub fn progress(&self) -> Option<Revision> {
        if self.catch_up.is_some() {
            return None;
        }
        let dispatcher = self.registration.dispatcher.upgrade()?;
        // The dispatcher queues every event up to `progress` before it
        // records it: an empty queue after this load has had them all.
        let progress = dispatcher.progress.load(Ordering::Acquire);
        self.backlog.is_empty().then_some(progress.max(self.last))
    }

    /// Cancelled once this watcher has fallen past its backlog: whatever
    /// it is waiting on, it is over.
    pub fn overflowed(&self) -> CancellationToken {
        self.overflowed.clone()
    }
}

struct Registration {
    dispatcher: Weak<Dispatcher>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(d) = self.dispatcher.upgrade() {
            d.lock().unfile(self.id);
        }
    }
}

/// Where a watcher is filed.
enum Slot {
    /// Under the value its field selector requires of the kind's indexed
    /// field.
    Indexed(String),
    /// Under its namespace.
    Namespace(String),
    /// Offered every event of the kind.
    Everywhere,
}

struct Watcher {
    backlog: Arc<Backlog>,
    filter: Filter,
    /// The watch's key prefix (its namespace, or the whole kind).
    prefix: String,
    /// It has seen every change up to here (its list, or its start).
    after: Revision,
    /// Cancelled when it overflows: its client is then let go at once,
    /// even while the watcher waits on its socket.
    overflowed: CancellationToken,
    slot: Slot,
}

#[derive(Default)]
struct Watchers {
    next_id: u64,
    /// Every event up to here has been offered to every watcher filed.
    dispatched: Revision,
    all: HashMap<u64, Watcher>,
    by_value: HashMap<String, Vec<u64>>,
    by_namespace: HashMap<String, Vec<u64>>,
    everywhere: Vec<u64>,
    /// How many watchers filed `projects` (read without the lock by the
    /// dispatcher, as `Dispatcher::projected`).
    projected: Arc<AtomicUsize>,
}

impl Watchers {
    fn bucket(&mut self, slot: &Slot) -> &mut Vec<u64> {
        match slot {
            Slot::Indexed(v) => self.by_value.entry(v.clone()).or_default(),
            Slot::Namespace(ns) => self.by_namespace.entry(ns.clone()).or_default(),
            Slot::Everywhere => &mut self.everywhere,
        }
    }

    /// Whether a watcher filed so needs what selectors read of events.
    fn projects(&self, filter: &Filter, slot: &Slot) -> bool {
        matches!(slot, Slot::Indexed(_)) || !filter.is_empty()
    }

    fn file(&mut self, id: u64, w: Watcher) {
        if self.projects(&w.filter, &w.slot) {
            self.projected.fetch_add(1, Ordering::AcqRel);
        }
        self.bucket(&w.slot).push(id);
        self.all.insert(id, w);
    }

    fn unfile(&mut self, id: u64) {
        let Some(w) = self.all.remove(&id) else {
            return;
        };
        if self.projects(&w.filter, &w.slot) {
            self.projected.fetch_sub(1, Ordering::AcqRel);
        }
        let bucket = self.bucket(&w.slot);
        bucket.retain(|i| *i != id);
        if bucket.is_empty() {
            match &w.slot {
                Slot::Indexed(v) => {
                    self.by_value.remove(v);
                }
                Slot::Namespace(ns) => {
                    self.by_namespace.remove(ns);
                }
                Slot::Everywhere => {}
            }
        }
    }

    /// The watchers an event can concern: those filed under its index
    /// values (after and before the change) or its namespace, and those
    /// that watch everything. Never the watchers of other nodes.
    fn offered<'a>(
        &'a self,
        r: &Resource,
        index_field: Option<&str>,
        event: &'a Event,
    ) -> impl Iterator<Item = &'a u64> + 'a {
        let in_namespace = match self.by_namespace.is_empty() {
            true => None,
            false => namespace_of(r, &event.key).and_then(|ns| self.by_namespace.get(ns)),
        };
        let mut values: Vec<&'a str> = Vec::new();
        if let (Some(field), false) = (index_field, self.by_value.is_empty()) {
            let (now, before) = projections(r, event);
            values.extend([now, before].into_iter().flatten().map(|p| p.field(field)));
            values.dedup();
        }
        let by_value = &self.by_value;
        self.everywhere
            .iter()
            .chain(in_namespace.into_iter().flatten())
            .chain(
                values
                    .into_iter()
                    .filter_map(move |v| by_value.get(v))
                    .flatten(),
            )
    }

    #[cfg(test)]
    fn candidates(&self, r: &Resource, index_field: Option<&str>, event: &Event) -> Vec<u64> {
        self.offered(r, index_field, event).copied().collect()
    }

    /// Offers one event to the watchers that can match it.
    fn dispatch(&mut self, r: &Resource, index_field: Option<&str>, event: &Arc<Event>) {
        let size = held_bytes(event);
        let mut shared: Option<Arc<Dispatched>> = None;
        let mut overflowed = Vec::new();
        for id in self.offered(r, index_field, event) {
            let Some(w) = self.all.get(id) else { continue };
            if event.revision <= w.after || !event.key.starts_with(w.prefix.as_str()) {
                continue;
            }
            let Some(kind) = translate(r, &w.filter, event) else {
                continue;
            };
            let queued = w.backlog.bytes.load(Ordering::Acquire);
            if queued > 0 && queued + size > BACKLOG_BYTES {
                // Let go: what waited for it goes now, not when its client
                // has had its time to read the 410.
                w.backlog.end(Some(StoreError::TooSlow));
                w.overflowed.cancel();
                overflowed.push(*id);
                continue;
            }
            w.backlog.bytes.fetch_add(size, Ordering::AcqRel);
            let shared = shared
                .get_or_insert_with(|| Arc::new(Dispatched::new(event.clone())))
                .clone();
            w.backlog.push(Delivery::Event(kind, shared));
        }
        for id in overflowed {
            self.unfile(id);
        }
    }

    fn end(&mut self, error: Option<StoreError>) {
        for (_, w) in self.all.drain() {
            w.backlog.end(error.clone());
        }
        self.by_value.clear();
        self.by_namespace.clear();
        self.everywhere.clear();
    }
}

/// What an event waiting for a watcher holds on to: both its states.
fn held_bytes(event: &Event) -> usize {
    event.object.len() + event.previous.as_ref().map_or(0, Bytes::len)
}

/// The namespace in a namespaced kind's key (`{root}/{namespace}/{name}`).
fn namespace_of<'k>(r: &Resource, key: &'k str) -> Option<&'k str> {
    if !r.namespaced {
        return None;
    }
    let root = match r.strategy.storage_root() {
        Some(root) => root.len(),
        None => "/registry/".len() + r.plural.len(),
    };
    key.get(root + 1..)?.split_once('/').map(|(ns, _)| ns)
}

struct Dispatcher {
    r: Arc<Resource>,
    /// The field this kind files watchers under (pods: `spec.nodeName`).
    index_field: Option<&'static str>,
    watchers: Mutex<Watchers>,
    /// Watchers that need what selectors read of an event (filed by index
    /// value, or filtered): while there are any, each pass decodes its
    /// events before it takes the lock, not under it.
    projected: Arc<AtomicUsize>,
    /// Every event up to here is queued to every watcher (for bookmarks).
    progress: AtomicU64,
    ended: AtomicBool,
}

impl Dispatcher {
    fn new(r: Arc<Resource>, from: Revision) -> Dispatcher {
        let watchers = Watchers {
            dispatched: from,
            ..Default::default()
        };
        Dispatcher {
            index_field: r.strategy.indexed_field(),
            r,
            projected: watchers.projected.clone(),
            watchers: Mutex::new(watchers),
            progress: AtomicU64::new(from),
            ended: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Watchers> {
        self.watchers.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn run(self: Arc<Self>, mut stream: WatchStream, ending: Ending, tick: Duration) {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut idle_ticks = 0;
        loop {
            tokio::select! {
                next = stream.next() => {
                    let mut pass = Vec::with_capacity(8);
                    let mut ended = None;
                    let mut next = next;
                    loop {
                        match next {
                            Some(Ok(event)) => pass.push(event),
                            Some(Err(e)) => { ended = Some(Some(e)); break; }
                            None => { ended = Some(None); break; }
                        }
                        if pass.len() >= PASS {
                            break;
                        }
                        match stream.next().now_or_never() {
                            Some(more) => next = more,
                            None => break,
                        }
                    }
                    if self.projected.load(Ordering::Acquire) > 0 {
                        for event in &pass {
                            projections(&self.r, event);
                        }
                    }
                    {
                        let mut watchers = self.lock();
                        for event in &pass {
                            watchers.dispatch(&self.r, self.index_field, event);
                            watchers.dispatched = event.revision;
                        }
                    }
                    if let Some(ended) = ended {
                        if let Some(e) = &ended {
                            tracing::info!(resource = self.r.plural, error = %e, "watch fan-out ended; its watchers relist");
                        }
                        ending.end(ended);
                        return;
                    }
                    if let Some(p) = stream.progress() {
                        self.progress.fetch_max(p, Ordering::AcqRel);
                    }
                }
                _ = ticker.tick() => {
                    if let Some(p) = stream.progress() {
                        self.progress.fetch_max(p, Ordering::AcqRel);
                    }
                    let empty = self.lock().all.is_empty();
                    idle_ticks = if empty { idle_ticks + 1 } else { 0 };
                    if idle_ticks >= 2 && ending.end_if_idle() {
                        return;
                    }
                }
            }
        }
    }
}

/// How a dispatcher leaves its fan-out: on its own (idle, or its store
/// watch ended), or, if its task died, when the task is dropped, so that
/// no watcher is ever filed with a dispatcher that is gone.
struct Ending {
    dispatcher: Arc<Dispatcher>,
    fanout: Weak<Fanout>,
    name: String,
}

impl Ending {
    /// Leaves the fan-out if no watcher is filed; whether it left. Under
    /// both locks, so that no watcher joins meanwhile.
    fn end_if_idle(&self) -> bool {
        let Some(fanout) = self.fanout.upgrade() else {
            return false;
        };
        let mut kinds = fanout.lock_kinds();
        let watchers = self.dispatcher.lock();
        if !watchers.all.is_empty() {
            return false;
        }
        self.dispatcher.ended.store(true, Ordering::Release);
        if kinds
            .get(&self.name)
            .is_some_and(|d| Arc::ptr_eq(d, &self.dispatcher))
        {
            kinds.remove(&self.name);
        }
        true
    }

    /// Leaves the fan-out and ends every watcher (with `error`, if any).
    fn end(&self, error: Option<StoreError>) {
        self.dispatcher.ended.store(true, Ordering::Release);
        if let Some(fanout) = self.fanout.upgrade() {
            let mut kinds = fanout.lock_kinds();
            if kinds
                .get(&self.name)
                .is_some_and(|d| Arc::ptr_eq(d, &self.dispatcher))
            {
                kinds.remove(&self.name);
            }
        }
        self.dispatcher.lock().end(error);
    }
}

impl Drop for Ending {
    fn drop(&mut self) {
        // Already done on every way out but a panic or a runtime shutting
        // down; ending twice is harmless.
        if !self.dispatcher.ended.load(Ordering::Acquire) {
            self.end(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod_event(revision: Revision, ns: &str, node: &str, before: Option<&str>) -> Arc<Event> {
        let pod = |node: &str| {
            Bytes::from(
                json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "p", "namespace": ns},
                    "spec": {"nodeName": node}})
                .to_string(),
            )
        };
        Arc::new(Event {
            revision,
            kind: EventKind::Modified,
            key: format!("/registry/pods/{ns}/p").into(),
            object: pod(node),
            previous: before.map(pod),
            derived: Default::default(),
        })
    }

    fn watcher(slot: Slot) -> (Watcher, Arc<Backlog>) {
        let backlog = Arc::new(Backlog::default());
        let filter = match &slot {
            Slot::Indexed(node) => {
                let pods = crate::registry::pod::resource();
                Filter::parse(&pods, None, Some(&format!("spec.nodeName={node}"))).unwrap()
            }
            _ => Filter::default(),
        };
        let prefix = match &slot {
            Slot::Namespace(ns) => format!("/registry/pods/{ns}/"),
            _ => "/registry/pods/".to_string(),
        };
        let w = Watcher {
            backlog: backlog.clone(),
            filter,
            prefix,
            after: 0,
            overflowed: CancellationToken::new(),
            slot,
        };
        (w, backlog)
    }

    #[test]
    fn an_event_is_offered_only_to_the_watchers_it_can_concern() {
        let pods = crate::registry::pod::resource();
        let field = pods.strategy.indexed_field();
        assert_eq!(field, Some("spec.nodeName"));
        let mut watchers = Watchers::default();
        let mut feeds = Vec::new();
        for i in 0..1000 {
            let (w, rx) = watcher(Slot::Indexed(format!("node-{i}")));
            watchers.file(i, w);
            feeds.push(rx);
        }
        let (w, _everything) = watcher(Slot::Everywhere);
        watchers.file(1000, w);
        let (w, _in_ns) = watcher(Slot::Namespace("kube-system".into()));
        watchers.file(1001, w);
        let (w, _unscheduled) = watcher(Slot::Indexed(String::new()));
        watchers.file(1002, w);

        // One node's event: that node's watcher and the one of everything.
        let on_7 = pod_event(1, "default", "node-7", None);
        let mut offered = watchers.candidates(&pods, field, &on_7);
        offered.sort();
        assert_eq!(offered, vec![7, 1000]);
        // A pod moving: both nodes; in the namespace watched, that too.
        let moved = pod_event(2, "kube-system", "node-9", Some("node-3"));
        let mut offered = watchers.candidates(&pods, field, &moved);
        offered.sort();
        assert_eq!(offered, vec![3, 9, 1000, 1001]);
        // Bound from no node: the unscheduled pods' watcher sees it leave.
        let bound = pod_event(3, "default", "node-1", Some(""));
        let mut offered = watchers.candidates(&pods, field, &bound);
        offered.sort();
        assert_eq!(offered, vec![1, 1000, 1002]);

        watchers.dispatch(&pods, field, &moved);
        let kinds: Vec<_> = [3, 9]
            .iter()
            .map(|i| match feeds[*i].try_take() {
                Some(Some(Delivery::Event(kind, _))) => Some(kind),
                _ => None,
            })
            .collect();
        assert_eq!(
            kinds,
            vec![Some(EventType::Deleted), Some(EventType::Added)]
        );
        assert!(feeds[7].try_take().is_none());

        watchers.unfile(7);
        assert!(watchers.candidates(&pods, field, &on_7) == vec![1000]);
        assert!(!watchers.by_value.contains_key("node-7"));
    }

    #[test]
    fn a_watcher_past_its_backlog_is_ended_and_the_others_are_not() {
        let pods = crate::registry::pod::resource();
        let mut watchers = Watchers::default();
        let (slow, slow_feed) = watcher(Slot::Everywhere);
        let (fast, fast_feed) = watcher(Slot::Everywhere);
        watchers.file(1, slow);
        watchers.file(2, fast);
        let big = "x".repeat(100 * 1024);
        let mut revision = 0;
        let mut taken = 0;
        let ended = loop {
            revision += 1;
            let mut event = pod_event(revision, "default", "n", None);
            Arc::get_mut(&mut event).unwrap().object =
                Bytes::from(format!("{{\"pad\": \"{big}\"}}"));
            watchers.dispatch(&pods, None, &event);
            // The fast one takes everything at once.
            while let Some(Some(Delivery::Event(..))) = fast_feed.try_take() {
                taken += 1;
            }
            if !watchers.all.contains_key(&1) {
                break revision;
            }
            assert!(revision < 100, "never ended");
        };
        // About a MiB of 100 KiB events, then the end.
        assert_eq!(ended as usize, BACKLOG_BYTES / (100 * 1024) + 1);
        // What waited for it is let go at once: only the end is left.
        assert!(matches!(
            slow_feed.try_take(),
            Some(Some(Delivery::End(e))) if matches!(*e, StoreError::TooSlow)
        ));
        assert!(matches!(slow_feed.try_take(), Some(None)));
        assert_eq!(slow_feed.bytes.load(Ordering::Acquire), 0);
        assert_eq!(taken, ended);
        assert!(watchers.all.contains_key(&2));
    }
}
