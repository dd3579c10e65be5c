//! `mubectl delete TYPE NAME [--dry-run=client|server]`.

use crate::client::{Client, CtlError};
use crate::{get, DryRun};

pub async fn run(
    client: &Client,
    resource: &str,
    name: &str,
    namespace: &str,
    dry_run: DryRun,
) -> Result<(), CtlError> {
    let info = get::resource(client, resource).await?;
    let path = info.path(Some(namespace), Some(name));
    match dry_run {
        // No write: only make sure there is something to delete.
        DryRun::Client => client.get(&path).await.map(drop)?,
        _ => client.delete(&dry_run.path(&path)).await.map(drop)?,
    }
    println!("{} \"{name}\" deleted{}", info.singular, dry_run.suffix());
    Ok(())
}
