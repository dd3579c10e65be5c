//! `mubectl token`: join tokens for new nodes, kept by the API server as
//! Kubernetes keeps bootstrap tokens (see `mube_apis::join_token`), so
//! creating one is creating a Secret and revoking one deleting it.

use std::io::Read;

use clap::Subcommand;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use mube_apis::join_token;
use mube_apis::resources::SECRETS;
use serde_json::Value;

use crate::client::{Client, CtlError};
use crate::table::Columns;

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a join token and print it (give it to mubelet as MUBELET_TOKEN).
    Create {
        /// How long it is valid, e.g. 1h, 24h; 0 for no expiry.
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// What it is for, shown by `token list`.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List join tokens (by ID; the secret half is not shown).
    List,
    /// Delete (revoke) a join token by its ID (the part before the dot) or whole.
    Delete {
        /// Token ID, or the whole token.
        id: String,
    },
}

fn random_byte() -> Result<impl FnMut() -> u8, CtlError> {
    // The kernel's CSPRNG: a token is a password.
    let mut urandom = std::fs::File::open("/dev/urandom")
        .map_err(|e| CtlError::Other(format!("cannot read /dev/urandom: {e}")))?;
    Ok(move || {
        let mut b = [0u8; 1];
        // /dev/urandom does not fail once open; 0 would only bias, not break.
        let _ = urandom.read_exact(&mut b);
        b[0]
    })
}

/// `23h59m`, `59m30s`: what is left of a token, as kubeadm shows it.
fn left_in_words(left: std::time::Duration) -> String {
    let s = left.as_secs();
    if s >= 3600 {
        format!("{}h{}m", s / 3600, s % 3600 / 60)
    } else {
        format!("{}m{}s", s / 60, s % 60)
    }
}

pub async fn run(client: &Client, command: TokenCommand) -> Result<(), CtlError> {
    let collection = SECRETS.path(Some(join_token::NAMESPACE), None);
    match command {
        TokenCommand::Create { ttl, description } => {
            let ttl = mube_apis::duration::parse(&ttl)
                .map_err(|e| CtlError::Other(format!("--ttl: {e}")))?;
            let expires = if ttl.is_zero() {
                None
            } else {
                let ttl = SignedDuration::try_from(ttl)
                    .map_err(|e| CtlError::Other(format!("--ttl: {e}")))?;
                Some(
                    Timestamp::now()
                        .checked_add(ttl)
                        .map_err(|e| CtlError::Other(format!("--ttl: {e}")))?,
                )
            };
            let mut random = random_byte()?;
            let token = join_token::generate(&mut random);
            let secret = join_token::secret(&token, expires, &description)
                .ok_or_else(|| CtlError::Other("generated a malformed token".into()))?;
            let mut body =
                serde_json::to_value(&secret).map_err(|e| CtlError::Other(e.to_string()))?;
            body["apiVersion"] = Value::from("v1");
            body["kind"] = Value::from("Secret");
            client.post(&collection, &body).await?;
            println!("{token}");
            Ok(())
        }
        TokenCommand::List => {
            let list = client
                .get(&format!(
                    "{collection}?fieldSelector=type%3D{}",
                    join_token::SECRET_TYPE.replace('/', "%2F")
                ))
                .await?;
            let items: Vec<Secret> = serde_json::from_value(list["items"].clone())
                .map_err(|e| CtlError::Other(format!("the server's list is not Secrets: {e}")))?;
            let now = Timestamp::now();
            let header = ["TOKEN ID", "TTL", "EXPIRES", "DESCRIPTION"];
            let mut rows: Vec<Vec<String>> = Vec::new();
            for s in &items {
                let Some(id) = join_token::field(s, "token-id") else {
                    continue;
                };
                let (ttl, expires) = match join_token::expiration(s) {
                    Some(at) if at <= now => ("<expired>".to_string(), at.to_string()),
                    Some(at) => {
                        let left = at.duration_since(now);
                        (left_in_words(left.unsigned_abs()), at.to_string())
                    }
                    None => ("<forever>".to_string(), "<never>".to_string()),
                };
                let description = join_token::field(s, "description")
                    .unwrap_or("")
                    .to_string();
                rows.push(vec![id.to_string(), ttl, expires, description]);
            }
            if rows.is_empty() {
                eprintln!("No join tokens found.");
                return Ok(());
            }
            let mut widths = Columns::default();
            let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
            widths.fit(std::slice::from_ref(&header));
            widths.fit(&rows);
            println!("{}", widths.line(&header));
            for row in &rows {
                println!("{}", widths.line(row));
            }
            Ok(())
        }
        TokenCommand::Delete { id } => {
            let id = id.split('.').next().unwrap_or_default().to_string();
            let path = SECRETS.path(
                Some(join_token::NAMESPACE),
                Some(&join_token::secret_name(&id)),
            );
            client.delete(&path).await?;
            println!("join token {id:?} deleted");
            Ok(())
        }
    }
}
