//! `mubectl get -w`: list, then follow changes, surviving API server restarts.
//!
//! An explicit state machine, as kube-runtime's watcher is: each state says
//! what happens next, and every disconnect or error moves to a named state.
//! Resuming from the last resourceVersion seen means a restart of the API
//! server loses and repeats nothing; when that version has been compacted
//! (410) the state is rebuilt by a relist, and only real differences against
//! what was already printed are shown.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use mube_apis::resources::ResourceInfo;
use mube_apis::watch::EventType;
use serde_json::Value;

use crate::client::{Client, CtlError};
use crate::get::{selector_query, Printer};
use crate::GetArgs;

/// What a list prints.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Show {
    /// The first list of `get -w`: the whole table.
    Everything,
    /// The first list of `--watch-only`: only the header; it sets the start.
    Nothing,
    /// A relist: only what differs from what was printed.
    Differences,
}

enum State {
    /// Nothing known yet, or history is gone (410): list the current state.
    List { show: Show },
    /// Watch changes after `from`.
    Watch { from: String },
    /// The server could not be reached: wait, then resume (or relist when
    /// nothing was known yet).
    Backoff { from: Option<String>, attempt: u32 },
}

struct Watcher<'a> {
    client: &'a Client,
    info: &'static ResourceInfo,
    collection: String,
    selectors: String,
    printer: Printer,
    /// The objects printed so far, by namespace/name, for relist diffs.
    known: BTreeMap<String, Value>,
    /// Whether a lost connection was reported (reported once per outage).
    reported_outage: bool,
}

fn key(object: &Value) -> String {
    let ns = object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("");
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    format!("{ns}/{name}")
}

fn resource_version(object: &Value) -> Option<String> {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn revision(object: &Value) -> u64 {
    resource_version(object)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub async fn run(
    client: &Client,
    info: &'static ResourceInfo,
    namespace: Option<&str>,
    args: &GetArgs,
    printer: Printer,
) -> Result<(), CtlError> {
    let mut watcher = Watcher {
        client,
        info,
        collection: info.path(namespace, None),
        selectors: selector_query(args).finish(),
        printer,
        known: BTreeMap::new(),
        reported_outage: false,
    };
    let show = if args.watch_only {
        Show::Nothing
    } else {
        Show::Everything
    };
    let mut state = State::List { show };
    loop {
        state = watcher.step(state).await?;
    }
}

impl Watcher<'_> {
    /// One transition. Returns `Err` only for errors a retry cannot fix.
    async fn step(&mut self, state: State) -> Result<State, CtlError> {
        match state {
            State::List { show } => match self.list(show).await {
                Ok(from) => Ok(State::Watch { from }),
                Err(CtlError::Unreachable { .. }) if show == Show::Differences => {
                    Ok(self.lost(None, 0))
                }
                Err(e) => Err(e),
            },
            State::Watch { from } => self.watch(from).await,
            State::Backoff { from, attempt } => {
                let delay = Duration::from_millis(200u64.saturating_mul(1 << attempt.min(5)))
                    .min(Duration::from_secs(5));
                tokio::time::sleep(delay).await;
                Ok(match from {
                    Some(from) => State::Watch { from },
                    None => State::List {
                        show: Show::Differences,
                    },
                })
            }
        }
    }

    fn lost(&mut self, from: Option<String>, attempt: u32) -> State {
        if !self.reported_outage {
            self.reported_outage = true;
            eprintln!(
                "mubectl: lost the connection to {}; reconnecting",
                self.client.server()
            );
        }
        State::Backoff {
            from,
            attempt: attempt + 1,
        }
    }

    /// Lists, remembers, and prints what `show` asks for; on a relist the
    /// differences are changed, new, and gone objects.
    async fn list(&mut self, show: Show) -> Result<String, CtlError> {
        let path = format!("{}?{}", self.collection, self.selectors);
        let (list, items) = if self.printer.server_tables {
            let table = self.client.get_table(&path).await?;
            self.printer.learn_columns(&table);
            let rows = crate::get::rows_of(&table);
            (table, rows)
        } else {
            let list = self.client.get(&path).await?;
            let items = list["items"].as_array().cloned().unwrap_or_default();
            (list, items)
        };
        let mut current = BTreeMap::new();
        let mut changed = Vec::new();
        for item in items {
            let k = key(&item);
            if show == Show::Everything || self.known.get(&k).map(revision) != Some(revision(&item))
            {
                changed.push(item.clone());
            }
            current.insert(k, item);
        }
        for (k, gone) in &self.known {
            if !current.contains_key(k) {
                changed.push(gone.clone());
            }
        }
        self.known = current;
        // The header comes first in both first lists (for `--watch-only` it
        // says the watch has started); a relist adds rows under it.
        let rows = if show == Show::Nothing {
            &[][..]
        } else {
            &changed[..]
        };
        self.printer
            .print(self.info.kind, rows, show != Show::Differences)?;
        resource_version(&list)
            .ok_or_else(|| CtlError::Other("the list has no resourceVersion".into()))
    }

    async fn watch(&mut self, from: String) -> Result<State, CtlError> {
        let url = format!(
            "{}?watch=true&allowWatchBookmarks=true&resourceVersion={from}&{}",
            self.collection, self.selectors
        );
        let mut events = match self.client.watch(&url, self.printer.server_tables).await {
            Ok(events) => events,
            Err(CtlError::Unreachable { .. }) => return Ok(self.lost(Some(from), 0)),
            Err(CtlError::Server(s)) if s.code == Some(410) => {
                return Ok(State::List {
                    show: Show::Differences,
                })
            }
            Err(e) => return Err(e),
        };
        if self.reported_outage {
            self.reported_outage = false;
            eprintln!("mubectl: reconnected to {}", self.client.server());
        }
        let mut from = from;
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(e) => e,
                Err(CtlError::Unreachable { .. }) => return Ok(self.lost(Some(from), 0)),
                Err(e) => return Err(e),
            };
            // A Table event carries its object as a one-row Table.
            let objects = match event.type_ {
                EventType::Added | EventType::Modified | EventType::Deleted
                    if self.printer.server_tables =>
                {
                    self.printer.learn_columns(&event.object);
                    crate::get::rows_of(&event.object)
                }
                _ => vec![event.object.clone()],
            };
            for object in objects {
                let event = mube_apis::watch::WatchEvent {
                    type_: event.type_,
                    object,
                };
                match event.type_ {
                    EventType::Added | EventType::Modified | EventType::Deleted => {
                        let k = key(&event.object);
                        // Never print a change twice, whatever the server resends.
                        if self
                            .known
                            .get(&k)
                            .map(revision)
                            .is_some_and(|seen| seen >= revision(&event.object))
                        {
                            continue;
                        }
                        self.printer.print(
                            self.info.kind,
                            std::slice::from_ref(&event.object),
                            false,
                        )?;
                        if event.type_ == EventType::Deleted {
                            self.known.remove(&k);
                        } else {
                            self.known.insert(k, event.object.clone());
                        }
                        if let Some(v) = resource_version(&event.object) {
                            from = v;
                        }
                    }
                    EventType::Bookmark => {
                        if let Some(v) = resource_version(&event.object) {
                            from = v;
                        }
                    }
                    EventType::Error => {
                        if event.object.get("code").and_then(Value::as_i64) == Some(410) {
                            return Ok(State::List {
                                show: Show::Differences,
                            });
                        }
                        let message = event
                            .object
                            .get("message")
                            .and_then(Value::as_str)
                            .unwrap_or("watch error");
                        eprintln!("mubectl: watch error: {message}; reconnecting");
                        return Ok(State::Backoff {
                            from: Some(from),
                            attempt: 0,
                        });
                    }
                }
            }
        }
        // The server ended the stream (timeout or shutdown): resume.
        Ok(State::Watch { from })
    }
}
