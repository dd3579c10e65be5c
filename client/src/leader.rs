//! Leader election through a `coordination.k8s.io/v1` Lease, as client-go's
//! `leaderelection` package does it for kube-controller-manager and
//! kube-scheduler (kube-rs has none; this is that algorithm, written once
//! for every mube component that runs as several copies):
//!
//! - Every `retry_period`, a candidate reads the Lease. It takes it when the
//!   Lease is missing, or when the record has not changed for
//!   `lease_duration` as measured by the candidate's own clock (so clock
//!   skew between machines does not matter), writing with the Lease's
//!   resourceVersion as a precondition: of two candidates, one wins.
//!   Unlike client-go, a candidate also watches the Lease, so that it sees
//!   each renewal when it happens rather than at its next read, and tries
//!   again the moment the holder's lease runs out: a dead leader is
//!   replaced within the lease duration of its last renewal.
//! - The leader renews every `retry_period`. If no renewal has succeeded for
//!   `renew_deadline` (shorter than `lease_duration`), it stops acting
//!   before any other candidate may take over.
//! - On a clean stop, the leader releases the Lease (an empty holder and a
//!   1 s duration), so that another copy takes over at once.

use std::future::Future;
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::StreamExt;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
#[cfg(feature = "kube")]
use kube::Client;
use tokio_util::sync::CancellationToken;

/// The election's Lease, however it is reached: through the API (a
/// `kube::Client`, for components that are API clients) or in process
/// (the API server's own controllers, which run once across servers).
#[async_trait::async_trait]
pub trait LeaseApi: Send + Sync + 'static {
    /// The Lease, or `None` if there is none.
    async fn get(&self) -> Result<Option<Lease>, String>;
    /// Creates it; `false` if another candidate did first.
    async fn create(&self, lease: Lease) -> Result<bool, String>;
    /// Replaces it with the read's resourceVersion as a precondition:
    /// `None` when it changed since (another candidate wrote).
    async fn replace(&self, lease: Lease) -> Result<Option<Lease>, String>;
    /// The Lease's record each time it changes, so that a candidate sees
    /// renewals as they happen (an API without watches may never yield:
    /// candidates then read it every retry period, as client-go does).
    fn changes(&self) -> BoxStream<'static, LeaseSpec>;
}

/// How a component elects its leader (kube-controller-manager's flags
/// `--leader-elect-lease-duration`, `-renew-deadline`, `-retry-period`).
#[derive(Debug, Clone)]
pub struct Election {
    pub namespace: String,
    /// The Lease's name: the component's (`kube-controller-manager`).
    pub name: String,
    /// This copy's identity: host name and a random suffix.
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Election {
    /// Kubernetes' defaults: lease 15 s, renew 10 s, retry 2 s, in
    /// `kube-system`.
    pub fn new(name: &str) -> Election {
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        Election {
            namespace: "kube-system".into(),
            name: name.into(),
            identity: format!("{host}_{}", uuid::Uuid::new_v4()),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// The durations must leave room for a renewal, as client-go requires,
    /// and a leader must have stopped before anyone may take over: it acts
    /// for at most the renew deadline and one retry period after its last
    /// renewal was sent.
    pub fn check(&self) -> Result<(), String> {
        if self.lease_duration <= self.renew_deadline + self.retry_period {
            return Err(
                "the lease duration must be longer than the renew deadline plus the retry period"
                    .into(),
            );
        }
        if self.renew_deadline <= self.retry_period {
            return Err("the renew deadline must be longer than the retry period".into());
        }
        if self.retry_period.is_zero() {
            return Err("the retry period must not be zero".into());
        }
        Ok(())
    }
}

/// Why `lead` returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `shutdown` was cancelled; the Lease was released if held.
    Stopped,
    /// This copy led, then could not renew within the renew deadline. As
    /// Kubernetes' components do, the caller should exit: a fresh start
    /// runs for leadership again with empty caches.
    Lost,
}

/// Waits to be elected, then runs `work` until `shutdown` or until the
/// lease is lost; `work` gets a token that is cancelled at either.
#[cfg(feature = "kube")]
pub async fn lead<W, F>(
    client: Client,
    election: Election,
    shutdown: CancellationToken,
    work: W,
) -> Result<Outcome, String>
where
    W: FnOnce(CancellationToken) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let leases = kube_lease::KubeLease::new(client, &election);
    lead_with(leases, election, shutdown, work).await
}

/// `lead`, with the Lease reached through `leases`.
pub async fn lead_with<L, W, F>(
    leases: L,
    election: Election,
    shutdown: CancellationToken,
    work: W,
) -> Result<Outcome, String>
where
    L: LeaseApi,
    W: FnOnce(CancellationToken) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    election.check()?;
    let mut changes = leases.changes();
    let mut candidate = Candidate {
        leases,
        election,
        observed: None,
    };
    // Campaign.
    loop {
        // Bounded, and given up at shutdown: an API server that does not
        // answer must not keep this copy from stopping.
        let attempt = tokio::time::timeout(
            candidate.election.renew_deadline,
            candidate.try_acquire_or_renew(),
        );
        let result = tokio::select! {
            _ = shutdown.cancelled() => return Ok(Outcome::Stopped),
            r = attempt => r,
        };
        let answered = match result {
            Ok(Ok(true)) => break,
            Ok(Ok(false)) => true,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "leader election: cannot reach the Lease");
                false
            }
            Err(_) => {
                tracing::debug!("leader election: the Lease read timed out");
                false
            }
        };
        // Again after a retry period, or as soon as the holder's lease runs
        // out by this copy's clock (or is released) if that is sooner;
        // renewals seen on the watch meanwhile move that moment. After a
        // failed attempt, a whole retry period: an API server that is down
        // or overloaded is not asked again every few milliseconds.
        let retry = candidate.election.retry_period;
        let started = tokio::time::Instant::now();
        let next = |candidate: &Candidate<L>| {
            let until_retry = retry.saturating_sub(started.elapsed());
            let wait = match candidate.expires_in() {
                Some(left) if answered => left.min(until_retry),
                _ => until_retry,
            };
            tokio::time::Instant::now() + wait.max(Duration::from_millis(10))
        };
        let sleep = tokio::time::sleep_until(next(&candidate));
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(Outcome::Stopped),
                _ = &mut sleep => break,
                Some(record) = changes.next() => {
                    candidate.saw(record);
                    sleep.as_mut().reset(next(&candidate));
                }
            }
        }
    }
    drop(changes);
    tracing::info!(
        lease = %format!("{}/{}", candidate.election.namespace, candidate.election.name),
        identity = %candidate.election.identity,
        "became the leader"
    );
    let acting = shutdown.child_token();
    let mut worker = tokio::spawn(work(acting.clone()));
    let mut finished = false;
    let mut renewed = Instant::now();
    let outcome = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Outcome::Stopped,
            _ = &mut worker => {
                finished = true;
                tracing::error!("leader election: the work stopped by itself");
                break Outcome::Stopped;
            }
            _ = tokio::time::sleep(candidate.election.retry_period) => {}
        }
        // Each attempt is bounded by what is left of the deadline, so that
        // a hung request cannot keep a leader acting past it.
        let left = candidate
            .election
            .renew_deadline
            .saturating_sub(renewed.elapsed());
        // Stamped when sent: the others measure from no earlier than that.
        let sent = Instant::now();
        match tokio::time::timeout(left, candidate.try_acquire_or_renew()).await {
            Ok(Ok(true)) => renewed = sent,
            Ok(Ok(false)) => {
                tracing::error!("leader election: another copy holds the Lease");
                break Outcome::Lost;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "leader election: renewal failed"),
            Err(_) => {}
        }
        if renewed.elapsed() >= candidate.election.renew_deadline {
            tracing::error!(
                deadline = ?candidate.election.renew_deadline,
                "leader election lost: no renewal within the renew deadline"
            );
            break Outcome::Lost;
        }
    };
    acting.cancel();
    if outcome == Outcome::Lost {
        // Aborted and awaited: the work's future (and what it holds, such
        // as tasks it aborts when dropped) is gone when this returns.
        worker.abort();
        let _ = (&mut worker).await;
        return Ok(outcome);
    }
    // The work stops on its token, within a bound (a stopped API server
    // must not hold the process), and is aborted before the Lease is
    // given up: nothing of it runs once another copy may lead.
    let bound = candidate.election.retry_period.max(Duration::from_secs(2));
    if !finished {
        let _ = tokio::time::timeout(bound, &mut worker).await;
        worker.abort();
    }
    let _ = tokio::time::timeout(bound, candidate.release()).await;
    Ok(outcome)
}

struct Candidate<L> {
    leases: L,
    election: Election,
    /// The record as last read, and when this copy first saw it so.
    observed: Option<(LeaseSpec, Instant)>,
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

impl<L: LeaseApi> Candidate<L> {
    fn spec(&self, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.election.identity.clone()),
            // Whole seconds, rounded up: never shorter than this copy assumes.
            lease_duration_seconds: Some(
                self.election
                    .lease_duration
                    .as_millis()
                    .div_ceil(1000)
                    .clamp(1, i32::MAX as u128) as i32,
            ),
            acquire_time: Some(acquired.unwrap_or_else(now)),
            renew_time: Some(now()),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// Notes the record as read now; a changed one restarts its clock.
    fn saw(&mut self, record: LeaseSpec) {
        if self.observed.as_ref().map(|(r, _)| r) != Some(&record) {
            self.observed = Some((record, Instant::now()));
        }
    }

    /// How long until the Lease, as last read, may be taken by this copy's
    /// clock: when another holder's lease runs out, or now if it was
    /// released; `None` when this copy holds it or has not read it.
    fn expires_in(&self) -> Option<Duration> {
        let (record, seen) = self.observed.as_ref()?;
        let holder = record.holder_identity.as_deref().unwrap_or_default();
        if holder.is_empty() {
            return Some(Duration::ZERO);
        }
        if holder == self.election.identity {
            return None;
        }
        let duration =
            Duration::from_secs(record.lease_duration_seconds.unwrap_or(0).max(0) as u64);
        Some(duration.saturating_sub(seen.elapsed()))
    }

    /// One round: `true` when this copy holds the Lease afterwards.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, String> {
        let current = match self.leases.get().await? {
            Some(lease) => lease,
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.election.name.clone()),
                        namespace: Some(self.election.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(self.spec(None, 0)),
                };
                return self.leases.create(lease).await;
            }
        };
        let record = current.spec.clone().unwrap_or_default();
        let holder = record.holder_identity.clone().unwrap_or_default();
        let mine = holder == self.election.identity;
        self.saw(record.clone());
        if !mine && !holder.is_empty() {
            let duration =
                Duration::from_secs(record.lease_duration_seconds.unwrap_or(0).max(0) as u64);
            let seen = self
                .observed
                .as_ref()
                .map_or_else(Instant::now, |(_, at)| *at);
            if seen.elapsed() < duration {
                return Ok(false);
            }
        }
        let transitions = record.lease_transitions.unwrap_or(0);
        let spec = if mine {
            self.spec(record.acquire_time.clone(), transitions)
        } else {
            self.spec(None, transitions + 1)
        };
        let mut lease = current;
        lease.spec = Some(spec);
        // The read's resourceVersion makes this a compare-and-swap.
        match self.leases.replace(lease).await? {
            Some(written) => {
                self.observed = written.spec.map(|s| (s, Instant::now()));
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Gives the Lease up so that another copy need not wait it out.
    async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.leases.get().await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(&self.election.identity) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now());
        match self.leases.replace(lease).await {
            Ok(Some(_)) => tracing::info!("released the leader Lease"),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot release the leader Lease"),
        }
    }
}

/// The leader-election flags of kube-controller-manager and kube-scheduler
/// (`--leader-elect`, `--leader-elect-lease-duration`, ...), for every
/// mube component that runs as copies.
#[derive(clap::Args, Debug, Clone)]
pub struct Flags {
    /// Elect a leader among the copies through a Lease (only the leader
    /// acts). Turn off only when a single copy runs.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// How long a leader's Lease holds without renewal.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub leader_elect_lease_duration: Duration,
    /// How long a leader keeps trying to renew before it stops acting.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub leader_elect_renew_deadline: Duration,
    /// How often candidates try to take the Lease, and leaders renew it.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub leader_elect_retry_period: Duration,
    /// The Lease's namespace.
    #[arg(long, default_value = "kube-system")]
    pub leader_elect_resource_namespace: String,
    /// The Lease's name (default: the component's, as Kubernetes names it).
    #[arg(long)]
    pub leader_elect_resource_name: Option<String>,
}

impl Flags {
    /// The election these flags ask for (`None` with `--leader-elect=false`),
    /// on the Lease `lease` unless the flags name another.
    pub fn election(&self, lease: &str) -> Result<Option<Election>, String> {
        if !self.leader_elect {
            return Ok(None);
        }
        let mut e = Election::new(self.leader_elect_resource_name.as_deref().unwrap_or(lease));
        e.namespace = self.leader_elect_resource_namespace.clone();
        e.lease_duration = self.leader_elect_lease_duration;
        e.renew_deadline = self.leader_elect_renew_deadline;
        e.retry_period = self.leader_elect_retry_period;
        e.check().map_err(|m| format!("--leader-elect-*: {m}"))?;
        Ok(Some(e))
    }
}

#[cfg(feature = "kube")]
mod kube_lease {
    use futures::stream::BoxStream;
    use futures::StreamExt;
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    use kube::api::{Api, PostParams};
    use kube::runtime::{watcher, WatchStreamExt};
    use kube::Client;

    use super::Election;

    /// The Lease through the API.
    pub struct KubeLease {
        api: Api<Lease>,
        name: String,
    }

    impl KubeLease {
        pub fn new(client: Client, election: &Election) -> KubeLease {
            KubeLease {
                api: Api::namespaced(client, &election.namespace),
                name: election.name.clone(),
            }
        }
    }

    fn conflict(e: &kube::Error) -> bool {
        matches!(e, kube::Error::Api(e) if e.code == 409)
    }

    #[async_trait::async_trait]
    impl super::LeaseApi for KubeLease {
        async fn get(&self) -> Result<Option<Lease>, String> {
            self.api
                .get_opt(&self.name)
                .await
                .map_err(|e| e.to_string())
        }

        async fn create(&self, lease: Lease) -> Result<bool, String> {
            match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if conflict(&e) => Ok(false),
                Err(e) => Err(e.to_string()),
            }
        }

        async fn replace(&self, lease: Lease) -> Result<Option<Lease>, String> {
            match self
                .api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
            {
                Ok(written) => Ok(Some(written)),
                Err(e) if conflict(&e) => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        }

        fn changes(&self) -> BoxStream<'static, LeaseSpec> {
            let by_name =
                watcher::Config::default().fields(&format!("metadata.name={}", self.name));
            watcher(self.api.clone(), by_name)
                .default_backoff()
                .applied_objects()
                .filter_map(|l| async move { l.ok().map(|l| l.spec.unwrap_or_default()) })
                .boxed()
        }
    }
}

/// Runs `work` until SIGINT/SIGTERM; with an election, only while this
/// copy leads. A leader that loses its Lease returns an error, so that the
/// process exits and starts over, as Kubernetes' components do. Without
/// one, `work` gets `bound` to finish after the signal (its requests may
/// wait on an API server that is gone too).
#[cfg(feature = "kube")]
pub async fn run_until_signal<W, F>(
    client: Client,
    election: Option<Election>,
    bound: Duration,
    work: W,
) -> Result<(), String>
where
    W: FnOnce(Client, CancellationToken) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        mube_process::shutdown_signal().await;
        tracing::info!("shutting down");
        on_signal.cancel();
    });
    match election {
        None => {
            let task = tokio::spawn(work(client, shutdown.clone()));
            shutdown.cancelled().await;
            let _ = tokio::time::timeout(bound, task).await;
            Ok(())
        }
        Some(election) => {
            let for_work = client.clone();
            match lead(client, election, shutdown, move |acting| {
                work(for_work, acting)
            })
            .await?
            {
                Outcome::Stopped => Ok(()),
                Outcome::Lost => Err("leader election lost".into()),
            }
        }
    }
}
