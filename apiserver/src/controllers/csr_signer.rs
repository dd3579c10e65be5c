//! Approves and signs node client certificates, as kube-controller-manager's
//! `csrapproving` and `csrsigning` controllers do for TLS bootstrapping.
//!
//! A CertificateSigningRequest for the signer
//! `kubernetes.io/kube-apiserver-client-kubelet` that asks for exactly
//! `CN=system:node:<name>, O=system:nodes` with client-auth usages is
//! approved when its requester may `create certificatesigningrequests/
//! nodeclient` (a join token's holder: a new node), or
//! `.../selfnodeclient` for its own name (a node renewing), by the same
//! authorizer as every request; then it is signed by the cluster CA. A
//! request that is well formed but not allowed stays pending; a malformed
//! one is marked `Failed` with the reason.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::ByteString;
use mube_apis::resources::CERTIFICATE_SIGNING_REQUESTS as CSRS;
use mube_apis::watch::EventType;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::client::ApiClient;
use crate::auth::{Attributes, Authorizer, Decision, ResourceAttributes, UserInfo};
use crate::error::ApiError;
use crate::pki::Signer;

/// The signer whose requests this controller handles.
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// Usages a node client certificate may ask for (one must be client auth).
const ALLOWED_USAGES: &[&str] = &["digital signature", "key encipherment", "client auth"];

pub struct CsrSigner {
    client: Arc<dyn ApiClient>,
    authorizer: Arc<Authorizer>,
    signer: Signer,
    ttl: Duration,
}

/// What to do with one request.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Not this controller's, or already decided.
    Skip,
    /// Well formed, but the requester may not have it (left pending).
    Pending(String),
    Fail(String),
    /// Approved: sign for exactly this subject (CN, [O]).
    Sign((String, Vec<String>)),
}

impl CsrSigner {
    pub fn new(
        client: Arc<dyn ApiClient>,
        authorizer: Arc<Authorizer>,
        signer: Signer,
        ttl: Duration,
    ) -> CsrSigner {
        CsrSigner {
            client,
            authorizer,
            signer,
            ttl,
        }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        super::relist_until("certificate signer", &shutdown, || {
            self.list_and_watch(&shutdown)
        })
        .await
    }

    async fn list_and_watch(&self, shutdown: &CancellationToken) -> Result<(), ApiError> {
        let (items, rv) = self.client.list(&CSRS, None).await?;
        for item in items {
            self.handle(item?).await;
        }
        let mut events = self.client.watch(&CSRS, None, &rv).await?;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                event = events.next() => match event {
                    Some(Ok(e)) if matches!(e.type_, EventType::Added | EventType::Modified) => {
                        self.handle(e.object).await
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e),
                    None => return Err(ApiError::bad_request("the watch ended")),
                },
            }
        }
    }

    async fn handle(&self, object: Value) {
        let Ok(csr) = serde_json::from_value::<CertificateSigningRequest>(object) else {
            return;
        };
        let name = csr.metadata.name.clone().unwrap_or_default();
        let verdict = self.judge(&csr).await;
        let result = match verdict {
            Verdict::Skip => return,
            Verdict::Pending(why) => {
                tracing::info!(csr = %name, reason = %why, "certificate request left pending");
                return;
            }
            Verdict::Fail(why) => self.finish(csr, Err(why)).await,
            Verdict::Sign(subject) => {
                let pem = request_pem(&csr);
                let lifetime = csr
                    .spec
                    .expiration_seconds
                    .filter(|s| *s > 0)
                    .map(|s| Duration::from_secs(s as u64).min(self.ttl))
                    .unwrap_or(self.ttl);
                match self.signer.sign_client(&pem, &subject, lifetime) {
                    Ok(cert) => self.finish(csr, Ok(cert)).await,
                    Err(e) => self.finish(csr, Err(e)).await,
                }
            }
        };
        match result {
            Ok(()) => tracing::info!(csr = %name, "certificate request decided"),
            // A conflict means someone else wrote it; the watch brings it again.
            Err(e) if e.is_conflict() || e.is_not_found() => {}
            Err(e) => {
                tracing::warn!(csr = %name, error = %e, "cannot write a certificate request's status")
            }
        }
    }

    async fn judge(&self, csr: &CertificateSigningRequest) -> Verdict {
        if csr.spec.signer_name != KUBELET_CLIENT_SIGNER {
            return Verdict::Skip;
        }
        if let Some(status) = &csr.status {
            let decided = status.certificate.is_some()
                || status
                    .conditions
                    .iter()
                    .flatten()
                    .any(|c| matches!(c.type_.as_str(), "Denied" | "Failed"));
            if decided {
                return Verdict::Skip;
            }
        }
        let (cn, orgs) = match crate::pki::request_subject(&request_pem(csr)) {
            Ok(subject) => subject,
            Err(e) => return Verdict::Fail(e),
        };
        let Some(node) = cn
            .strip_prefix(crate::auth::user::NODE_PREFIX)
            .filter(|n| !n.is_empty())
        else {
            return Verdict::Fail(format!(
                "the subject's common name must be system:node:<name>, not {cn:?}"
            ));
        };
        if orgs != [crate::auth::user::NODES_GROUP] {
            return Verdict::Fail(format!(
                "the subject's organization must be exactly system:nodes, not {orgs:?}"
            ));
        }
        let usages = csr.spec.usages.clone().unwrap_or_default();
        if !usages.iter().any(|u| u == "client auth")
            || usages.iter().any(|u| !ALLOWED_USAGES.contains(&u.as_str()))
        {
            return Verdict::Fail(format!(
                "usages must include \"client auth\" and be among {ALLOWED_USAGES:?}, not {usages:?}"
            ));
        }
        let user = UserInfo::authenticated(
            csr.spec.username.clone().unwrap_or_default(),
            csr.spec.groups.clone().unwrap_or_default(),
        );
        let renewal = user.username == cn;
        let subresource = if renewal {
            "selfnodeclient"
        } else {
            "nodeclient"
        };
        let asks = Attributes {
            user: &user,
            verb: "create",
            resource: Some(ResourceAttributes {
                api_group: "certificates.k8s.io",
                resource: "certificatesigningrequests",
                subresource,
                ..Default::default()
            }),
            path: "",
        };
        match self.authorizer.authorize(&asks).await {
            Ok(Decision::Allow) => Verdict::Sign((cn.clone(), orgs.clone())),
            Ok(_) => Verdict::Pending(format!(
                "{} may not create certificatesigningrequests/{subresource} (for node {node:?})",
                user.username
            )),
            Err(e) => Verdict::Pending(e.to_string()),
        }
    }

    /// Writes the outcome: approved and issued, or failed with the reason.
    async fn finish(
        &self,
        mut csr: CertificateSigningRequest,
        outcome: Result<String, String>,
    ) -> Result<(), ApiError> {
        let now = Some(Time(jiff::Timestamp::now()));
        let condition =
            |type_: &str, reason: &str, message: String| CertificateSigningRequestCondition {
                type_: type_.into(),
                status: "True".into(),
                reason: Some(reason.into()),
                message: Some(message),
                last_update_time: now.clone(),
                last_transition_time: now.clone(),
            };
        let status = csr.status.get_or_insert_with(Default::default);
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        match outcome {
            Ok(cert) => {
                conditions.push(condition(
                    "Approved",
                    "AutoApproved",
                    "Auto approving node client certificate after SubjectAccessReview.".into(),
                ));
                status.certificate = Some(ByteString(cert.into_bytes()));
            }
            Err(why) => conditions.push(condition("Failed", "SignerValidationFailure", why)),
        }
        let name = csr.metadata.name.clone().unwrap_or_default();
        let mut object =
            serde_json::to_value(&csr).map_err(|e| ApiError::bad_request(e.to_string()))?;
        if let Some(obj) = object.as_object_mut() {
            obj.insert("apiVersion".into(), CSRS.api_version().into());
            obj.insert("kind".into(), CSRS.kind.into());
        }
        self.client
            .update_status(&CSRS, None, &name, object)
            .await?;
        Ok(())
    }
}

fn request_pem(csr: &CertificateSigningRequest) -> String {
    String::from_utf8_lossy(&csr.spec.request.0).into_owned()
}
