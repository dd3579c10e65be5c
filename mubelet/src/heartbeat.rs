//! The heartbeat client: tells the API server this node is alive.
//!
//! One kept-alive connection, a per-request timeout shorter than the
//! interval, and while the server is unreachable (or answers 5xx) retries
//! with capped exponential backoff and jitter. The cap is the interval
//! itself, so the agent is back on its normal beat within one interval of the
//! server's return. Each outage is logged once when it starts and once when
//! it ends, not once per try.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use mube_apis::heartbeat::Heartbeat;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// What the last heartbeat achieved; shown by `GET /status`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LastHeartbeat {
    pub time: Timestamp,
    /// `accepted`, `rejected` (the server refused it: 4xx) or `unreachable`
    /// (no answer, timeout, or 5xx).
    pub result: &'static str,
    /// HTTP status code, when the server answered.
    pub code: Option<u16>,
    pub message: String,
}

/// Heartbeat state shared with the health server.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatStatus {
    pub last_heartbeat: Option<LastHeartbeat>,
    pub consecutive_failures: u32,
}

pub type SharedStatus = Arc<Mutex<HeartbeatStatus>>;

enum Outcome {
    Accepted,
    /// A 4xx: retrying sooner would not help.
    Rejected {
        code: u16,
        message: String,
    },
    /// No answer or a 5xx: back off and try again.
    Unavailable {
        code: Option<u16>,
        message: String,
    },
}

pub struct Heartbeater {
    /// The current client: a new one arrives when the node's certificate
    /// is renewed.
    client: tokio::sync::watch::Receiver<reqwest::Client>,
    servers: crate::servers::ApiServers,
    body: Heartbeat,
    interval: Duration,
    status: SharedStatus,
    /// The runtime's own name and version, once it answered, for the
    /// body's `runtime` (when MUBELET_RUNTIME does not say).
    runtime_name: Option<crate::node_status::RuntimeName>,
}

const PATH: &str = "api/v1/nodes/heartbeat";

/// First retry after this, doubling up to the heartbeat interval.
const BACKOFF_BASE: Duration = Duration::from_millis(200);

impl Heartbeater {
    /// The per-request timeout: shorter than the interval.
    pub fn timeout(config: &Config) -> Duration {
        (config.heartbeat_interval / 2).clamp(Duration::from_millis(50), Duration::from_secs(5))
    }

    pub fn new(
        config: &Config,
        client: tokio::sync::watch::Receiver<reqwest::Client>,
        status: SharedStatus,
        runtime_name: Option<crate::node_status::RuntimeName>,
    ) -> Result<Heartbeater, String> {
        // Every server's URL must be good now, not at the first failover.
        for server in config.api_servers.all() {
            server
                .join(PATH)
                .map_err(|e| format!("MUBE_API_SERVER: {e}"))?;
        }
        Ok(Heartbeater {
            client,
            servers: config.api_servers.clone(),
            body: Heartbeat {
                name: config.node_name.clone(),
                runtime: config.runtime.clone(),
                version: config.version.clone(),
                capacity: config.capacity,
                system: crate::system::info(),
            },
            interval: config.heartbeat_interval,
            status,
            runtime_name,
        })
    }

    async fn send(&self, url: reqwest::Url) -> Outcome {
        let client = self.client.borrow().clone();
        let reported = self
            .runtime_name
            .as_ref()
            .and_then(|n| n.lock().unwrap_or_else(|p| p.into_inner()).clone());
        let body = match reported {
            Some(runtime) => std::borrow::Cow::Owned(Heartbeat {
                runtime,
                ..self.body.clone()
            }),
            None => std::borrow::Cow::Borrowed(&self.body),
        };
        let response = match client.post(url).json(&*body).send().await {
            Ok(r) => r,
            Err(e) => {
                let message = if e.is_timeout() {
                    format!(
                        "no answer within the request timeout: {}",
                        mube_apis::errors::chain(&e)
                    )
                } else {
                    mube_apis::errors::chain(&e)
                };
                return Outcome::Unavailable {
                    code: None,
                    message,
                };
            }
        };
        let code = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        // A Status body's message says what went wrong; fall back to the text.
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| {
                v.get("message")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .unwrap_or(text);
        match code {
            200..=299 => Outcome::Accepted,
            500..=599 => Outcome::Unavailable {
                code: Some(code),
                message,
            },
            _ => Outcome::Rejected { code, message },
        }
    }

    fn backoff(&self, failures: u32) -> Duration {
        let exp = BACKOFF_BASE.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
        let capped = exp.min(self.interval);
        // Full jitter over the upper half: spread agents out, never stall.
        capped.mul_f64(0.5 + fastrand::f64() / 2.0)
    }

    fn record(
        &self,
        result: &'static str,
        code: Option<u16>,
        message: String,
        failed: bool,
    ) -> u32 {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status.last_heartbeat = Some(LastHeartbeat {
            time: Timestamp::now(),
            result,
            code,
            message,
        });
        status.consecutive_failures = if failed {
            status.consecutive_failures + 1
        } else {
            0
        };
        status.consecutive_failures
    }

    /// Beats until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        // Which kind of trouble was last logged, so each streak logs once.
        let mut logged: Option<u16> = None;
        // Servers that did not answer since the last accepted heartbeat:
        // the next one is tried at once, and only when every one has
        // failed does the agent back off.
        let mut silent = 0usize;
        loop {
            let server = self.servers.current().clone();
            let Ok(url) = server.join(PATH) else {
                // Checked in `new`: not reached.
                return;
            };
            let server = server.origin().ascii_serialization();
            let sent = std::time::Instant::now();
            let outcome = self.send(url.clone()).await;
            let result = match &outcome {
                Outcome::Accepted => "accepted",
                Outcome::Rejected { .. } => "rejected",
                Outcome::Unavailable { .. } => "unreachable",
            };
            let m = crate::metrics::metrics();
            m.heartbeat_duration
                .with_label_values(&[result])
                .observe(sent.elapsed().as_secs_f64());
            if result != "accepted" {
                m.heartbeat_failures.with_label_values(&[result]).inc();
            }
            let wait = match outcome {
                Outcome::Accepted => {
                    silent = 0;
                    self.record("accepted", Some(202), "accepted".into(), false);
                    if logged.take().is_some() {
                        tracing::info!(api_server = %server, "heartbeats accepted again");
                    } else {
                        tracing::debug!("heartbeat accepted");
                    }
                    self.interval
                }
                Outcome::Rejected { code, message } => {
                    self.record("rejected", Some(code), message.clone(), true);
                    if logged != Some(code) {
                        logged = Some(code);
                        if code == 401 {
                            tracing::error!(
                                node = %self.body.name,
                                %message,
                                "the API server does not know who this agent is: join with a token (MUBELET_TOKEN, from `mubectl token create`) and the cluster CA (MUBELET_CA_FILE); retrying every {:?}",
                                self.interval
                            );
                        } else if code == 403 {
                            tracing::error!(
                                node = %self.body.name,
                                %message,
                                "configuration error: the API server refused this node's heartbeat (its credential is another node's, or the node is not in nodes in configs/apiserver.yaml); retrying every {:?}",
                                self.interval
                            );
                        } else {
                            tracing::error!(code, %message, "the API server rejected the heartbeat; retrying every {:?}", self.interval);
                        }
                    }
                    self.interval
                }
                Outcome::Unavailable { code, message } => {
                    let failures = self.record("unreachable", code, message.clone(), true);
                    silent += 1;
                    if self.servers.len() > 1 {
                        self.servers.failed(&url);
                    }
                    if silent < self.servers.len() {
                        // Another server may answer: try it now, so that
                        // this node's heartbeats go on within its deadline.
                        Duration::ZERO
                    } else {
                        if logged != Some(0) {
                            logged = Some(0);
                            tracing::warn!(api_server = %server, error = %message, "API server unavailable; retrying with backoff (logged once per outage)");
                        }
                        silent = 0;
                        self.backoff(failures)
                    }
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}
