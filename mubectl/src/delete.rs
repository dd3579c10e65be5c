//! `mubectl delete TYPE NAME... [--wait[=false]] [--dry-run=client|server]`.
//!
//! Each object is deleted, then (with `--wait`, the default, as in kubectl)
//! awaited until a read answers 404: a pod is gone only once its node has
//! stopped its containers. On a terminal a progress bar says how many are
//! gone and which one is being waited for.

use std::time::Duration;

use crate::client::{Client, CtlError};
use crate::{get, progress, DryRun};

/// How often a deleted object is read again while waiting for it to go.
const POLL: Duration = Duration::from_millis(200);

pub async fn run(
    client: &Client,
    resource: &str,
    names: &[String],
    namespace: &str,
    wait: bool,
    dry_run: DryRun,
) -> Result<(), CtlError> {
    let info = get::resource(client, resource).await?;
    let waiting = wait && dry_run == DryRun::None;
    let bar = progress::bar(names.len() as u64, waiting);
    for name in names {
        let path = info.path(Some(namespace), Some(name));
        bar.set_message(format!("deleting {}/{name}", info.singular));
        match dry_run {
            // No write: only make sure there is something to delete.
            DryRun::Client => client.get(&path).await.map(drop)?,
            _ => client.delete(&dry_run.path(&path)).await.map(drop)?,
        }
        if waiting {
            bar.set_message(format!("waiting for {}/{name} to be gone", info.singular));
            loop {
                match client.get(&path).await {
                    Err(e) if e.code() == Some(404) => break,
                    Err(e) => return Err(e),
                    Ok(_) => tokio::time::sleep(POLL).await,
                }
            }
        }
        bar.inc(1);
        bar.suspend(|| println!("{} \"{name}\" deleted{}", info.singular, dry_run.suffix()));
    }
    bar.finish_and_clear();
    Ok(())
}
