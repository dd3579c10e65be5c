//! `crash`: like etcd's robustness tests. Writers, watchers and listers run
//! against the server; it is killed with SIGKILL at a random moment and
//! restarted on the same data directory; then what clients were told is
//! checked against what the server holds:
//!
//! - every acknowledged write is there with its resourceVersion (or was
//!   superseded by the one write that was in flight when the server died,
//!   whose outcome the client never learned);
//! - no resourceVersion any client saw (in a write's answer, a list, a list's
//!   own resourceVersion, or a watch event) is later used for other content,
//!   and the server never comes back at a revision older than one a client
//!   has seen;
//! - every watch that resumes from its last resourceVersion sees each change
//!   exactly once, in order: after each restart its view must equal a fresh
//!   list at the same revision;
//! - every page of a paged list is at the first page's revision.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};

use crate::server::Server;
use crate::Report;

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases";

/// A lease's content as clients see it: present with a marker, or deleted.
type Content = (String, Option<String>);

pub struct Options {
    pub cycles: usize,
    pub writers: usize,
    pub watchers: usize,
    pub listers: usize,
    pub keys_per_writer: usize,
    pub min_run: Duration,
    pub max_run: Duration,
    pub seed: u64,
}

/// A small xorshift generator: reproducible runs from `--seed`, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Default)]
struct Counts {
    acked: AtomicU64,
    refused: AtomicU64,
    in_doubt: AtomicU64,
    lost_acks: AtomicU64,
    reused: AtomicU64,
    regressions: AtomicU64,
    watch_events: AtomicU64,
    watch_duplicates: AtomicU64,
    watch_gaps: AtomicU64,
    relists: AtomicU64,
    pages: AtomicU64,
    inconsistent_pages: AtomicU64,
    observations: AtomicU64,
}

/// Every resourceVersion a client has seen, and what it stood for.
struct Observed {
    by_rv: Mutex<HashMap<u64, Content>>,
    /// The resourceVersion of every acknowledged write.
    acked: Mutex<std::collections::BTreeSet<u64>>,
    newest: AtomicU64,
    counts: Arc<Counts>,
    verbose: bool,
}

impl Observed {
    fn content(&self, rv: u64, key: &str, marker: Option<String>, what: &str) {
        self.counts.observations.fetch_add(1, Ordering::Relaxed);
        self.revision(rv);
        let content = (key.to_string(), marker);
        let mut seen = self.by_rv.lock().unwrap_or_else(|p| p.into_inner());
        match seen.get(&rv) {
            Some(before) if *before != content => {
                self.counts.reused.fetch_add(1, Ordering::Relaxed);
                if self.verbose {
                    eprintln!("reused resourceVersion {rv}: {before:?}, now {content:?} ({what})");
                }
            }
            Some(_) => {}
            None => {
                seen.insert(rv, content);
            }
        }
    }

    fn revision(&self, rv: u64) {
        self.newest.fetch_max(rv, Ordering::Relaxed);
    }
}

fn rv_of(object: &Value) -> u64 {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn marker_of(object: &Value) -> Option<String> {
    object
        .pointer("/spec/holderIdentity")
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn name_of(object: &Value) -> String {
    object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// What a writer knows of one of its keys.
#[derive(Clone, Debug, PartialEq)]
enum Known {
    Absent,
    Present { rv: u64, marker: String },
}

#[derive(Clone, Debug)]
enum Op {
    Put(String),
    Delete,
}

struct Writer {
    id: usize,
    keys: Vec<Known>,
    /// The write in flight when the server died: its outcome is unknown.
    doubt: Option<(usize, Op)>,
    seq: u64,
}

impl Writer {
    fn name(&self, j: usize) -> String {
        format!("crash-w{}-k{j}", self.id)
    }

    /// Writes until `stop` or until a request fails (the server is gone).
    async fn run(
        &mut self,
        client: &reqwest::Client,
        url: &str,
        observed: &Observed,
        rng: &mut Rng,
        stop: &AtomicBool,
    ) {
        while !stop.load(Ordering::Relaxed) {
            let j = rng.below(self.keys.len() as u64) as usize;
            self.seq += 1;
            let marker = format!("w{}-{}", self.id, self.seq);
            let name = self.name(j);
            let body = json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"holderIdentity": marker},
            });
            let (op, request) = match &self.keys[j] {
                Known::Absent => (
                    Op::Put(marker.clone()),
                    client.post(format!("{url}{LEASES}")).json(&body),
                ),
                Known::Present { .. } if rng.below(5) == 0 => {
                    (Op::Delete, client.delete(format!("{url}{LEASES}/{name}")))
                }
                Known::Present { .. } => (
                    Op::Put(marker.clone()),
                    client.put(format!("{url}{LEASES}/{name}")).json(&body),
                ),
            };
            self.doubt = Some((j, op.clone()));
            let answer = match request.send().await {
                Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
                // A definite refusal: nothing was written. Read the key
                // again and go on.
                Ok(r) if r.status().is_client_error() => {
                    self.doubt = None;
                    observed.counts.refused.fetch_add(1, Ordering::Relaxed);
                    match self.read(client, url, j, observed).await {
                        Ok(known) => {
                            self.keys[j] = known;
                            continue;
                        }
                        Err(_) => return,
                    }
                }
                // Cut off, or failed on the server's side: the server is
                // going or gone; what happened is settled after the restart.
                _ => return,
            };
            let Some(answer) = answer else { return };
            self.doubt = None;
            observed.counts.acked.fetch_add(1, Ordering::Relaxed);
            let rv = rv_of(&answer);
            observed
                .acked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(rv);
            match op {
                Op::Put(marker) => {
                    observed.content(rv, &name, Some(marker.clone()), "write answer");
                    self.keys[j] = Known::Present { rv, marker };
                }
                Op::Delete => {
                    observed.content(rv, &name, None, "delete answer");
                    self.keys[j] = Known::Absent;
                }
            }
        }
    }

    /// What the server holds for key `j`.
    async fn read(
        &self,
        client: &reqwest::Client,
        url: &str,
        j: usize,
        observed: &Observed,
    ) -> Result<Known, String> {
        let name = self.name(j);
        let r = client
            .get(format!("{url}{LEASES}/{name}"))
            .send()
            .await
            .map_err(|e| format!("GET {name}: {e}"))?;
        match r.status().as_u16() {
            404 => Ok(Known::Absent),
            200 => {
                let v: Value = r.json().await.map_err(|e| e.to_string())?;
                let rv = rv_of(&v);
                let marker = marker_of(&v).unwrap_or_default();
                observed.content(rv, &name, Some(marker.clone()), "get");
                Ok(Known::Present { rv, marker })
            }
            s => Err(format!("GET {name}: {s}")),
        }
    }

    /// After a restart: each key must be as last acknowledged, or as the
    /// write in doubt left it. Adopts what the server holds.
    async fn settle(
        &mut self,
        client: &reqwest::Client,
        url: &str,
        observed: &Observed,
    ) -> Result<(), String> {
        let doubt = self.doubt.take();
        if doubt.is_some() {
            observed.counts.in_doubt.fetch_add(1, Ordering::Relaxed);
        }
        for j in 0..self.keys.len() {
            let name = self.name(j);
            let actual = self.read(client, url, j, observed).await?;
            let expected = &self.keys[j];
            let doubt_explains = match (&doubt, &actual) {
                (Some((k, Op::Put(m))), Known::Present { rv, marker }) if *k == j => {
                    marker == m
                        && match expected {
                            Known::Present { rv: before, .. } => rv > before,
                            Known::Absent => true,
                        }
                }
                (Some((k, Op::Delete)), Known::Absent) => *k == j,
                _ => false,
            };
            if actual != *expected && !doubt_explains {
                observed.counts.lost_acks.fetch_add(1, Ordering::Relaxed);
                if observed.verbose {
                    eprintln!(
                        "lost acknowledged write: {name} was {expected:?}, is {actual:?} (in doubt: {doubt:?})"
                    );
                }
            }
            self.keys[j] = actual;
        }
        Ok(())
    }
}

/// A watcher's view, carried across restarts.
struct Watcher {
    last: u64,
    view: HashMap<String, (u64, String)>,
    /// Revisions delivered after `since`, the last point checked.
    since: u64,
    delivered: std::collections::HashSet<u64>,
}

impl Watcher {
    /// Applies one event line; false at an ERROR (the watcher must relist).
    fn apply(&mut self, line: &[u8], observed: &Observed) -> bool {
        let Ok(event) = serde_json::from_slice::<Value>(line) else {
            return true;
        };
        let kind = event.get("type").and_then(Value::as_str).unwrap_or("");
        let object = event.get("object").cloned().unwrap_or(Value::Null);
        if kind == "ERROR" {
            return false;
        }
        let rv = rv_of(&object);
        if kind == "BOOKMARK" {
            self.last = self.last.max(rv);
            return true;
        }
        observed.counts.watch_events.fetch_add(1, Ordering::Relaxed);
        if rv <= self.last {
            observed
                .counts
                .watch_duplicates
                .fetch_add(1, Ordering::Relaxed);
            if observed.verbose {
                eprintln!(
                    "watch event {kind} at {rv} after {}: {}",
                    self.last,
                    String::from_utf8_lossy(line).trim()
                );
            }
            return true;
        }
        self.last = rv;
        self.delivered.insert(rv);
        let name = name_of(&object);
        if kind == "DELETED" {
            observed.content(rv, &name, None, "watch event");
            self.view.remove(&name);
        } else {
            let marker = marker_of(&object).unwrap_or_default();
            observed.content(rv, &name, Some(marker.clone()), "watch event");
            self.view.insert(name, (rv, marker));
        }
        true
    }

    /// Watches from `last` until `until` (or the connection ends).
    async fn follow(
        &mut self,
        client: &reqwest::Client,
        url: &str,
        observed: &Observed,
        until: Option<u64>,
    ) -> Result<(), String> {
        let r = client
            .get(format!(
                "{url}{LEASES}?watch=true&allowWatchBookmarks=true&resourceVersion={}",
                self.last
            ))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("watch: {}", r.status()));
        }
        let mut stream = r.bytes_stream();
        let mut buffer = Vec::new();
        while until.is_none_or(|u| self.last < u) {
            let Some(Ok(chunk)) = stream.next().await else {
                break;
            };
            buffer.extend_from_slice(&chunk);
            while let Some(pos) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=pos).collect();
                if !self.apply(&line, observed) {
                    return Err("watch ended with an ERROR event".into());
                }
            }
        }
        Ok(())
    }
}

async fn list_all(
    client: &reqwest::Client,
    url: &str,
    limit: Option<usize>,
    observed: &Observed,
) -> Result<(u64, Vec<Value>), String> {
    let mut items = Vec::new();
    let mut token: Option<String> = None;
    let mut first_rv = None;
    loop {
        let mut q = String::new();
        if let Some(l) = limit {
            q.push_str(&format!("limit={l}&"));
        }
        if let Some(t) = &token {
            q.push_str(&format!("continue={t}"));
        }
        let r = client
            .get(format!("{url}{LEASES}?{q}"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("list: {}", r.status()));
        }
        let page: Value = r.json().await.map_err(|e| e.to_string())?;
        let rv = rv_of(&page);
        observed.revision(rv);
        observed.counts.pages.fetch_add(1, Ordering::Relaxed);
        let first = *first_rv.get_or_insert(rv);
        for item in page
            .get("items")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            let item_rv = rv_of(&item);
            if rv != first || item_rv > first {
                observed
                    .counts
                    .inconsistent_pages
                    .fetch_add(1, Ordering::Relaxed);
                if observed.verbose {
                    eprintln!("page at {rv} (first page at {first}) holds an object at {item_rv}");
                }
            }
            observed.content(item_rv, &name_of(&item), marker_of(&item), "list item");
            items.push(item);
        }
        token = page
            .pointer("/metadata/continue")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        if token.is_none() {
            return Ok((first, items));
        }
    }
}

pub async fn run(bin: &Path, o: Options, report: &mut Report) -> Result<(), String> {
    // Small segments and a short history, so that rotation, snapshots and
    // the deletion of old segments all happen during a run.
    let mut server =
        Server::start(bin, 0, "logSegmentBytes: 65536\nhistoryRetention: 20000\n").await?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let counts = Arc::new(Counts::default());
    let observed = Arc::new(Observed {
        by_rv: Mutex::new(HashMap::new()),
        acked: Mutex::new(std::collections::BTreeSet::new()),
        newest: AtomicU64::new(0),
        counts: counts.clone(),
        verbose: std::env::var_os("MUBE_CRASH_VERBOSE").is_some(),
    });
    let mut rng = Rng(o.seed | 1);
    let mut writers: Vec<Writer> = (0..o.writers)
        .map(|id| Writer {
            id,
            keys: vec![Known::Absent; o.keys_per_writer],
            doubt: None,
            seq: 0,
        })
        .collect();
    // resourceVersion=0 would mean "any state, as synthetic ADDED events":
    // start the watchers from a real revision.
    client
        .post(format!("{}{LEASES}", server.url))
        .json(&json!({"metadata": {"name": "crash-start"}, "spec": {"holderIdentity": "start"}}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let (start_rv, items) = list_all(&client, &server.url, None, &observed).await?;
    let start_view: HashMap<String, (u64, String)> = items
        .iter()
        .map(|i| (name_of(i), (rv_of(i), marker_of(i).unwrap_or_default())))
        .collect();
    let mut watchers: Vec<Watcher> = (0..o.watchers)
        .map(|_| Watcher {
            last: start_rv,
            view: start_view.clone(),
            since: start_rv,
            delivered: Default::default(),
        })
        .collect();

    let progress = crate::progress::steps("crash cycles", o.cycles as u64);
    for cycle in 0..o.cycles {
        progress.set_position(cycle as u64);
        let url = server.url.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for mut w in writers.drain(..) {
            let (client, url, observed, stop) =
                (client.clone(), url.clone(), observed.clone(), stop.clone());
            let mut rng = Rng(rng.next() | 1);
            tasks.push(tokio::spawn(async move {
                w.run(&client, &url, &observed, &mut rng, &stop).await;
                w
            }));
        }
        let mut watch_tasks = Vec::new();
        for mut w in watchers.drain(..) {
            let (client, url, observed, stop) =
                (client.clone(), url.clone(), observed.clone(), stop.clone());
            watch_tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if w.follow(&client, &url, &observed, None).await.is_err() {
                        break;
                    }
                }
                w
            }));
        }
        let mut list_tasks = Vec::new();
        for i in 0..o.listers {
            let (client, url, observed, stop) =
                (client.clone(), url.clone(), observed.clone(), stop.clone());
            list_tasks.push(tokio::spawn(async move {
                let limit = if i % 2 == 0 { Some(3) } else { None };
                while !stop.load(Ordering::Relaxed) {
                    if list_all(&client, &url, limit, &observed).await.is_err() {
                        break;
                    }
                }
            }));
        }

        let run_for = o.min_run.as_millis() as u64
            + rng.below((o.max_run.saturating_sub(o.min_run)).as_millis() as u64 + 1);
        tokio::time::sleep(Duration::from_millis(run_for)).await;
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            writers.push(t.await.map_err(|e| e.to_string())?);
        }
        for t in watch_tasks {
            watchers.push(t.await.map_err(|e| e.to_string())?);
        }
        for t in list_tasks {
            let _ = t.await;
        }

        server.spawn()?;
        server.wait_ready(Duration::from_secs(120)).await?;
        let url = server.url.clone();
        let seen = observed.newest.load(Ordering::Relaxed);
        let (now, items) = list_all(&client, &url, None, &observed).await?;
        if now < seen {
            counts.regressions.fetch_add(1, Ordering::Relaxed);
            if observed.verbose {
                eprintln!("cycle {cycle}: restarted at revision {now}, but clients saw {seen}");
            }
        }
        for w in &mut writers {
            w.settle(&client, &url, &observed).await?;
        }
        // Each watcher resumes from its last resourceVersion; once caught up
        // with the list, its view must be the list.
        let listed: HashMap<String, (u64, String)> = items
            .iter()
            .map(|i| (name_of(i), (rv_of(i), marker_of(i).unwrap_or_default())))
            .collect();
        for w in &mut watchers {
            let caught_up = if w.last > now {
                false
            } else if w.last == now {
                true
            } else {
                tokio::time::timeout(
                    Duration::from_secs(10),
                    w.follow(&client, &url, &observed, Some(now)),
                )
                .await
                .map(|r| r.is_ok())
                .unwrap_or(false)
            };
            // Each change exactly once: every acknowledged write since the
            // last check came through this watch.
            let missed = {
                let acked = observed.acked.lock().unwrap_or_else(|p| p.into_inner());
                acked
                    .range(w.since + 1..=w.last)
                    .filter(|rv| !w.delivered.contains(rv))
                    .count()
            };
            if missed > 0 {
                counts.watch_gaps.fetch_add(1, Ordering::Relaxed);
                if observed.verbose {
                    eprintln!("cycle {cycle}: a watcher missed {missed} acknowledged writes");
                }
            }
            w.since = w.last;
            w.delivered.clear();
            if !caught_up || w.view != listed {
                counts.watch_gaps.fetch_add(1, Ordering::Relaxed);
                if observed.verbose {
                    eprintln!(
                        "cycle {cycle}: a watcher at {} does not match the list at {now}",
                        w.last
                    );
                }
                // Start over from the list, as a client would.
                counts.relists.fetch_add(1, Ordering::Relaxed);
                w.view = listed.clone();
                w.last = now;
                w.since = now;
            }
        }
    }

    progress.finish_and_clear();
    report.add("scenario", "crash");
    report.add("seed", o.seed);
    report.add("cycles", o.cycles);
    // What ran, then the six counts that must be 0.
    for (key, count) in [
        ("acknowledged_writes", &counts.acked),
        ("writes_in_doubt_at_kill", &counts.in_doubt),
        ("writes_refused", &counts.refused),
        ("resource_versions_observed", &counts.observations),
        ("watch_events", &counts.watch_events),
        ("list_pages", &counts.pages),
        ("lost_acknowledged_writes", &counts.lost_acks),
        ("reused_resource_versions", &counts.reused),
        ("revision_regressions", &counts.regressions),
        ("watch_gaps", &counts.watch_gaps),
        ("watch_duplicates", &counts.watch_duplicates),
        ("inconsistent_pages", &counts.inconsistent_pages),
    ] {
        report.add(key, count.load(Ordering::Relaxed));
    }
    Ok(())
}
