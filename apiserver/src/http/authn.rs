//! Authentication, with Kubernetes' schemes and identities: a bearer token
//! from the static token file (kube-apiserver's `--token-auth-file` CSV:
//! `token,user,uid,"group1,group2"`), a join token (Kubernetes' bootstrap
//! token, `<id>.<secret>`, kept as the Secret
//! `kube-system/bootstrap-token-<id>`, for `system:bootstrap:<id>` in
//! `system:bootstrappers`), or a client certificate signed by the
//! cluster CA (CN = user, O = groups), or else anonymous
//! (`system:anonymous` in `system:unauthenticated`) when the config allows
//! it. A bearer token that matches no one is 401, never anonymous.
//!
//! The identity travels in the request's extensions (for authorization,
//! later) and the response's (for the audit filter, which sees the request
//! before it is authenticated).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use mube_apis::status::Reason;

use k8s_openapi::api::core::v1::Secret;
use mube_apis::resources;

use mube_apis::join_token;

use crate::auth::UserInfo;
use crate::error::ApiError;
use crate::registry::Registry;

/// The identity a verified client certificate carries, set per connection
/// by the accept loop.
#[derive(Debug, Clone)]
pub struct CertificateUser(pub UserInfo);

pub struct Authenticator {
    tokens: HashMap<String, UserInfo>,
    /// This server's own tokens towards node agents (pods/log).
    nodes: Arc<super::logs::NodeClient>,
    anonymous: bool,
    /// Where join tokens are kept.
    registry: Arc<Registry>,
}

/// Paths anyone may read, as in Kubernetes' defaults.
const OPEN: &[&str] = &["/healthz", "/livez", "/readyz", "/version"];

impl Authenticator {
    /// `admin_token`: the generated admin's bearer token, `system:admin`
    /// in `system:masters` as the admin certificate.
    pub fn new(
        token_file: Option<&Path>,
        admin_token: Option<&str>,
        nodes: Arc<super::logs::NodeClient>,
        anonymous: bool,
        registry: Arc<Registry>,
    ) -> Result<Authenticator, String> {
        let mut tokens = match token_file {
            Some(path) => read_tokens(path)?,
            None => HashMap::new(),
        };
        if let Some(token) = admin_token {
            tokens.insert(
                token.to_string(),
                UserInfo::authenticated("system:admin", vec![crate::auth::user::MASTERS.into()]),
            );
        }
        Ok(Authenticator {
            tokens,
            nodes,
            anonymous,
            registry,
        })
    }

    /// The user a bearer token names, if any.
    async fn token_user(&self, token: &str) -> Option<UserInfo> {
        if let Some(user) = self.tokens.get(token) {
            return Some(user.clone());
        }
        if let Some(node) = self.nodes.node_of(token) {
            return Some(UserInfo::authenticated(
                format!("{}{node}", crate::auth::user::KUBELET_CLIENT_PREFIX),
                vec![],
            ));
        }
        let (id, secret) = join_token::parse(token)?;
        let r = self.registry.resource(&resources::SECRETS).ok()?;
        let stored = self
            .registry
            .get(
                &r,
                Some(join_token::NAMESPACE),
                &join_token::secret_name(id),
            )
            .await
            .ok()?;
        let object: Secret = serde_json::from_slice(&stored.json).ok()?;
        let (user, groups) = join_token::authenticate(&object, id, secret, jiff::Timestamp::now())?;
        Some(UserInfo::authenticated(user, groups))
    }
}

/// Parses a token file: `token,user,uid[,"group1,group2"]` per line.
fn read_tokens(path: &Path) -> Result<HashMap<String, UserInfo>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .comment(Some(b'#'))
        .from_path(path)
        .map_err(|e| {
            format!(
                "authentication.tokenFile: cannot read {}: {e}",
                path.display()
            )
        })?;
    let mut tokens = HashMap::new();
    for (i, record) in reader.records().enumerate() {
        let record =
            record.map_err(|e| format!("authentication.tokenFile {}: {e}", path.display()))?;
        let field = |n: usize| record.get(n).map(str::trim).unwrap_or("");
        let (token, user) = (field(0), field(1));
        if token.is_empty() || user.is_empty() || record.len() < 3 {
            return Err(format!(
                "authentication.tokenFile {}: line {}: expected token,user,uid[,\"group1,group2\"]",
                path.display(),
                i + 1
            ));
        }
        let groups: Vec<String> = field(3)
            .split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(str::to_string)
            .collect();
        tokens.insert(token.to_string(), UserInfo::authenticated(user, groups));
    }
    Ok(tokens)
}

fn unauthorized() -> Response {
    ApiError::new(Reason::Unauthorized, "Unauthorized").into_response()
}

pub async fn authenticate(
    State(auth): State<Arc<Authenticator>>,
    mut request: Request,
    next: Next,
) -> Response {
    // As kube-apiserver's union of authenticators: a verified client
    // certificate first, then a bearer token (the scheme in any case).
    let open = auth.anonymous || OPEN.contains(&request.uri().path());
    let certificate = request
        .extensions()
        .get::<CertificateUser>()
        .map(|c| c.0.clone());
    let user = match certificate {
        Some(user) => user,
        None => match request.headers().get(header::AUTHORIZATION) {
            Some(value) => {
                let Ok(value) = value.to_str() else {
                    return unauthorized();
                };
                match value.trim().split_once(' ') {
                    Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                        let token = token.trim().to_string();
                        match auth.token_user(&token).await {
                            Some(user) => user,
                            None => return unauthorized(),
                        }
                    }
                    // Basic and other schemes are not supported: no identity.
                    _ if open => UserInfo::anonymous(),
                    _ => return unauthorized(),
                }
            }
            None if open => UserInfo::anonymous(),
            None => return unauthorized(),
        },
    };
    request.extensions_mut().insert(user.clone());
    let mut response = next.run(request).await;
    response.extensions_mut().insert(user);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_in_kube_apiserver_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.csv");
        std::fs::write(&path, "# comment\nt1,alice,1\nt2,bob,2,\"viewers,ops\"\n").unwrap();
        let tokens = read_tokens(&path).unwrap();
        assert_eq!(tokens["t1"].username, "alice");
        assert_eq!(tokens["t1"].groups, ["system:authenticated"]);
        assert_eq!(
            tokens["t2"].groups,
            ["viewers", "ops", "system:authenticated"]
        );
        std::fs::write(&path, "only-a-token\n").unwrap();
        let err = read_tokens(&path).unwrap_err();
        assert!(err.contains("line 1"), "{err}");
    }
}
