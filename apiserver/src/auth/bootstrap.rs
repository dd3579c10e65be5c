//! The default roles and bindings, created at start when missing, as
//! Kubernetes' bootstrap policy: `cluster-admin` for `system:masters`;
//! `admin`, `edit` and `view` to grant to users; discovery, health and
//! self-review for everyone; the node agent's certificate requests; and
//! the roles of the controller manager and the scheduler. An existing
//! object of the same name is left as the cluster's owner changed it.

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use mube_apis::resources;
use serde::Serialize;

use super::user::{AUTHENTICATED, BOOTSTRAPPERS, MASTERS, NODES_GROUP, UNAUTHENTICATED};
use crate::error::ApiError;
use crate::registry::{DryRun, Registry};

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn rule(verbs: &[&str], group: &str, resources: &[&str]) -> PolicyRule {
    PolicyRule {
        verbs: strings(verbs),
        api_groups: Some(vec![group.into()]),
        resources: Some(strings(resources)),
        ..Default::default()
    }
}

fn paths(verbs: &[&str], urls: &[&str]) -> PolicyRule {
    PolicyRule {
        verbs: strings(verbs),
        non_resource_urls: Some(strings(urls)),
        ..Default::default()
    }
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        labels: Some([("kubernetes.io/bootstrapping".into(), "rbac-defaults".into())].into()),
        annotations: Some(
            [(
                "rbac.authorization.kubernetes.io/autoupdate".into(),
                "true".into(),
            )]
            .into(),
        ),
        ..Default::default()
    }
}

fn role(name: &str, rules: Vec<PolicyRule>) -> ClusterRole {
    ClusterRole {
        metadata: meta(name),
        rules: Some(rules),
        ..Default::default()
    }
}

fn all_verbs() -> Vec<&'static str> {
    both(READ, WRITE)
}

fn both(a: &[&'static str], b: &[&'static str]) -> Vec<&'static str> {
    a.iter().chain(b).copied().collect()
}

/// What `view` may read: the namespaced kinds that hold no secrets.
const VIEWABLE: &[&str] = &[
    "pods",
    "pods/log",
    "pods/status",
    "configmaps",
    "events",
    "services",
    "services/status",
];
/// What `edit` may also change, and read (Secrets included).
const EDITABLE: &[&str] = &[
    "pods",
    "pods/exec",
    "pods/attach",
    "pods/portforward",
    "configmaps",
    "secrets",
    "events",
    "services",
];

pub fn cluster_roles() -> Vec<ClusterRole> {
    let rbac = "rbac.authorization.k8s.io";
    let all = both(READ, WRITE);
    vec![
        role(
            "cluster-admin",
            vec![rule(&["*"], "*", &["*"]), paths(&["*"], &["*"])],
        ),
        // As Kubernetes aggregates them: admin holds edit, edit holds view
        // (so an admin may bind either).
        role(
            "admin",
            vec![
                rule(READ, "", VIEWABLE),
                rule(&all, "", EDITABLE),
                rule(&all, rbac, &["roles", "rolebindings"]),
                rule(READ, "coordination.k8s.io", &["leases"]),
                rule(READ, "discovery.k8s.io", &["endpointslices"]),
                rule(
                    &["create"],
                    "authorization.k8s.io",
                    &["localsubjectaccessreviews"],
                ),
            ],
        ),
        role(
            "edit",
            vec![
                rule(READ, "", VIEWABLE),
                rule(&all, "", EDITABLE),
                rule(READ, "coordination.k8s.io", &["leases"]),
                rule(READ, "discovery.k8s.io", &["endpointslices"]),
            ],
        ),
        role(
            "view",
            vec![
                rule(READ, "", VIEWABLE),
                rule(READ, "discovery.k8s.io", &["endpointslices"]),
            ],
        ),
        role(
            "system:basic-user",
            vec![
                rule(
                    &["create"],
                    "authorization.k8s.io",
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                rule(
                    &["create"],
                    "authentication.k8s.io",
                    &["selfsubjectreviews"],
                ),
            ],
        ),
        role(
            "system:discovery",
            vec![paths(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/openapi",
                    "/openapi/*",
                    "/healthz",
                    "/livez",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
        ),
        // Kubernetes' role for scrapers: health and metrics, nothing else.
        role(
            "system:monitoring",
            vec![paths(
                &["get"],
                &[
                    "/healthz",
                    "/healthz/*",
                    "/livez",
                    "/livez/*",
                    "/readyz",
                    "/readyz/*",
                    "/metrics",
                    "/metrics/slis",
                ],
            )],
        ),
        role(
            "system:public-info-viewer",
            vec![paths(
                &["get"],
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
            )],
        ),
        // What Kubernetes' node authorizer allows a node, for a binding
        // made by hand (mube's node authorizer grants it by identity).
        role(
            "system:node",
            vec![
                rule(READ, "", &["nodes"]),
                rule(
                    &["create", "update", "patch"],
                    "",
                    &["nodes", "nodes/status", "events"],
                ),
                rule(
                    &["get", "create", "update", "patch", "delete"],
                    "coordination.k8s.io",
                    &["leases"],
                ),
                rule(
                    &["create", "get", "list", "watch"],
                    "certificates.k8s.io",
                    &["certificatesigningrequests"],
                ),
            ],
        ),
        role(
            "system:node-bootstrapper",
            vec![rule(
                &["create", "get", "list", "watch"],
                "certificates.k8s.io",
                &["certificatesigningrequests"],
            )],
        ),
        role(
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            vec![rule(
                &["create"],
                "certificates.k8s.io",
                &["certificatesigningrequests/nodeclient"],
            )],
        ),
        role(
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            vec![rule(
                &["create"],
                "certificates.k8s.io",
                &["certificatesigningrequests/selfnodeclient"],
            )],
        ),
        role(
            "system:kube-controller-manager",
            vec![
                rule(
                    &both(READ, &["update", "patch", "delete"]),
                    "",
                    &["nodes", "nodes/status", "pods", "pods/status"],
                ),
                rule(&["create", "update", "patch"], "", &["events"]),
                rule(
                    &both(READ, &["create", "update", "patch"]),
                    "coordination.k8s.io",
                    &["leases"],
                ),
                // The endpoint controller.
                rule(READ, "", &["services"]),
                rule(&all_verbs(), "discovery.k8s.io", &["endpointslices"]),
                rule(
                    &both(READ, &["update"]),
                    "certificates.k8s.io",
                    &[
                        "certificatesigningrequests",
                        "certificatesigningrequests/status",
                        "certificatesigningrequests/approval",
                    ],
                ),
            ],
        ),
        // What node agents let a client do (Kubernetes' role of the same
        // name), for operators who bind it.
        role(
            "system:kubelet-api-admin",
            vec![rule(
                &["get", "create", "list", "watch"],
                "",
                &["nodes/proxy", "nodes/log", "nodes/stats", "nodes/metrics"],
            )],
        ),
        // mube-proxy's (Kubernetes' role of the same name, for kube-proxy).
        role(
            "system:node-proxier",
            vec![
                rule(READ, "", &["services", "nodes"]),
                rule(READ, "discovery.k8s.io", &["endpointslices"]),
                rule(&["create", "update", "patch"], "", &["events"]),
            ],
        ),
        role(
            "system:kube-scheduler",
            vec![
                rule(READ, "", &["nodes", "pods"]),
                rule(&["create"], "", &["pods/binding", "events"]),
                rule(&["update", "patch"], "", &["pods/status"]),
                rule(
                    &both(READ, &["create", "update", "patch"]),
                    "coordination.k8s.io",
                    &["leases"],
                ),
            ],
        ),
    ]
}

fn binding(name: &str, role: &str, subjects: &[(&str, &str)]) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta(name),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: role.into(),
        },
        subjects: Some(
            subjects
                .iter()
                .map(|(kind, name)| Subject {
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    kind: kind.to_string(),
                    name: name.to_string(),
                    namespace: None,
                })
                .collect(),
        ),
    }
}

pub fn cluster_role_bindings() -> Vec<ClusterRoleBinding> {
    vec![
        binding("cluster-admin", "cluster-admin", &[("Group", MASTERS)]),
        binding(
            "system:basic-user",
            "system:basic-user",
            &[("Group", AUTHENTICATED)],
        ),
        binding(
            "system:discovery",
            "system:discovery",
            &[("Group", AUTHENTICATED)],
        ),
        binding(
            "system:monitoring",
            "system:monitoring",
            &[("Group", "system:monitoring")],
        ),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            &[("Group", AUTHENTICATED), ("Group", UNAUTHENTICATED)],
        ),
        // kubeadm's names for the bindings of TLS bootstrapping.
        binding(
            "kubeadm:kubelet-bootstrap",
            "system:node-bootstrapper",
            &[("Group", BOOTSTRAPPERS)],
        ),
        binding(
            "kubeadm:node-autoapprove-bootstrap",
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            &[("Group", BOOTSTRAPPERS)],
        ),
        binding(
            "kubeadm:node-autoapprove-certificate-rotation",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            &[("Group", NODES_GROUP)],
        ),
        binding(
            "system:kube-controller-manager",
            "system:kube-controller-manager",
            &[("User", "system:kube-controller-manager")],
        ),
        binding(
            "system:kube-scheduler",
            "system:kube-scheduler",
            &[("User", "system:kube-scheduler")],
        ),
        binding(
            "system:node-proxier",
            "system:node-proxier",
            &[("User", "system:kube-proxy")],
        ),
    ]
}

/// Creates each default role and binding that does not exist yet.
pub async fn ensure(registry: &Registry) -> Result<usize, ApiError> {
    let mut created = 0;
    for role in cluster_roles() {
        created += create_missing(registry, &resources::CLUSTER_ROLES, role).await?;
    }
    for binding in cluster_role_bindings() {
        created += create_missing(registry, &resources::CLUSTER_ROLE_BINDINGS, binding).await?;
    }
    Ok(created)
}

async fn create_missing(
    registry: &Registry,
    kind: &resources::ResourceInfo,
    object: impl Serialize,
) -> Result<usize, ApiError> {
    let r = registry.resource(kind)?;
    let mut value = serde_json::to_value(object)
        .map_err(|e| ApiError::bad_request(format!("encoding the bootstrap policy: {e}")))?;
    if let Some(obj) = value.as_object_mut() {
        obj.insert("apiVersion".into(), r.api_version().into());
        obj.insert("kind".into(), r.kind.into());
    }
    match registry
        .create(
            &r,
            None,
            value,
            crate::registry::managed::APISERVER,
            DryRun::No,
        )
        .await
    {
        Ok(_) => Ok(1),
        Err(e) if e.is_already_exists() => Ok(0),
        Err(e) => Err(e),
    }
}
