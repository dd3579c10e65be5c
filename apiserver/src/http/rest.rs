//! The one REST handler every resource kind is served by.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use mube_apis::status::Reason;
use serde_json::{json, Value};

use super::options;
use super::path::{self, Target};
use super::response::{json, read_body, read_object};
use super::table::{self, TableRequest};
use super::{discovery, reviews, watch, AppState};
use crate::auth::UserInfo;
use crate::error::ApiError;
use crate::registry::patch::Patch;
use crate::registry::{
    check_fields, parse_resource_version, DryRun, FieldValidation, Filter, Part, Resource,
};
use crate::store::{ReadAt, Revision, StoredObject};

/// Query parameters of get, list, watch and delete.
#[derive(Debug, Default)]
pub struct Params {
    pub watch: bool,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
    pub timeout: Option<Duration>,
    pub allow_bookmarks: bool,
    pub send_initial_events: bool,
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub include_object: Option<String>,
    pub field_validation: Option<String>,
    pub field_manager: Option<String>,
    pub force: Option<bool>,
}

fn flag(name: &str, value: &str) -> Result<bool, ApiError> {
    match value {
        "true" | "1" | "True" => Ok(true),
        "false" | "0" | "False" | "" => Ok(false),
        other => Err(ApiError::bad_request(format!(
            "{name}: invalid boolean {other:?}"
        ))),
    }
}

impl Params {
    pub fn parse(query: Option<&str>) -> Result<Params, ApiError> {
        let pairs: HashMap<String, String> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .into_owned()
            .collect();
        let get = |k: &str| pairs.get(k).map(String::as_str).filter(|v| !v.is_empty());
        let number = |k: &str| -> Result<Option<u64>, ApiError> {
            get(k)
                .map(|s| {
                    s.parse::<u64>()
                        .map_err(|_| ApiError::bad_request(format!("{k}: invalid value {s:?}")))
                })
                .transpose()
        };
        let boolean = |k: &str| {
            get(k)
                .map(|v| flag(k, v))
                .transpose()
                .map(|b| b.unwrap_or(false))
        };
        Ok(Params {
            watch: boolean("watch")?,
            resource_version: get("resourceVersion").map(str::to_string),
            resource_version_match: get("resourceVersionMatch").map(str::to_string),
            timeout: number("timeoutSeconds")?.map(Duration::from_secs),
            allow_bookmarks: boolean("allowWatchBookmarks")?,
            send_initial_events: boolean("sendInitialEvents")?,
            label_selector: get("labelSelector").map(str::to_string),
            field_selector: get("fieldSelector").map(str::to_string),
            limit: number("limit")?.filter(|l| *l > 0).map(|l| l as usize),
            continue_token: get("continue").map(str::to_string),
            include_object: get("includeObject").map(str::to_string),
            field_validation: get("fieldValidation").map(str::to_string),
            field_manager: get("fieldManager").map(str::to_string),
            force: get("force").map(|v| flag("force", v)).transpose()?,
        })
    }

    /// The write's field manager: `fieldManager`, or as Kubernetes defaults
    /// it, the User-Agent up to its first `/` (`kube-rs/1.0` is `kube-rs`).
    /// `options` names the options kind in errors (`PatchOptions`).
    pub fn manager(&self, headers: &HeaderMap, options: &str) -> Result<String, ApiError> {
        let manager = match &self.field_manager {
            Some(m) => m.clone(),
            None => headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .and_then(|ua| ua.split('/').next())
                .unwrap_or("")
                .chars()
                .take(128)
                .collect(),
        };
        if manager.len() > 128 {
            return Err(ApiError::invalid_options(
                options,
                vec![(
                    "fieldManager".into(),
                    "Too long: may not be more than 128 bytes".to_string(),
                    "FieldValueTooLong",
                )],
            ));
        }
        if manager.chars().any(|c| c.is_control()) {
            return Err(ApiError::invalid_options(
                options,
                vec![(
                    "fieldManager".into(),
                    format!("Invalid value: {manager:?}: must only contain printable characters"),
                    "FieldValueInvalid",
                )],
            ));
        }
        Ok(manager)
    }

    /// The label and field selectors of a list, watch or deletecollection.
    pub fn filter(&self, r: &Resource) -> Result<Filter, ApiError> {
        Filter::parse(
            r,
            self.label_selector.as_deref(),
            self.field_selector.as_deref(),
        )
    }

    /// `resourceVersion` as a revision; `None` for absent or "0" (any).
    pub fn revision(&self) -> Result<Option<Revision>, ApiError> {
        match self.resource_version.as_deref() {
            None | Some("0") => Ok(None),
            Some(s) => parse_resource_version(s, "resourceVersion").map(Some),
        }
    }
}

/// Serves `/api/...` (the core group) and `/apis/...` (named groups):
/// resources, and the discovery documents between them.
pub async fn handle(
    State(state): State<AppState>,
    user: Option<axum::Extension<UserInfo>>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let (mut parts, body) = request.into_parts();
    let (uri, method, headers) = (parts.uri, parts.method, parts.headers);
    // The connection, for the streams of exec, attach and port-forward.
    let upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    // What a watch may do to its connection (close it, cap its buffer).
    let connection_control = parts.extensions.remove::<super::serve::ConnectionControl>();
    let Some(target) = path::parse(uri.path()) else {
        let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
        let found = match (method == Method::GET, segments.as_slice()) {
            (true, ["api", version]) => discovery::serve(&state, "", Some(version)),
            (true, ["apis", group]) => discovery::serve(&state, group, None),
            (true, ["apis", group, version]) => discovery::serve(&state, group, Some(version)),
            _ => None,
        };
        return found.ok_or_else(|| not_found_path(uri.path()));
    };
    let user = user.map(|u| u.0).unwrap_or_else(UserInfo::anonymous);
    if let Some(review) = reviews::find(&target) {
        return reviews::serve(&state, review, &target, &method, &user, &headers, body).await;
    }
    serve(
        state,
        target,
        method,
        uri.query(),
        headers,
        body,
        &user,
        Connection {
            upgrade,
            connection_control,
        },
    )
    .await
}

/// What a request may need of its connection.
struct Connection {
    /// The streams of exec, attach and port-forward take it over.
    upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// A watch caps its send buffer, and closes it when its client stops
    /// reading.
    connection_control: Option<super::serve::ConnectionControl>,
}

/// Admission for a create, once its body is read: a node creates only its
/// own Node and Lease (Kubernetes' NodeRestriction).
fn admit_create(
    state: &AppState,
    r: &Resource,
    ns: Option<&str>,
    object: &Value,
    user: &UserInfo,
) -> Result<(), ApiError> {
    if state.authz.allows_all() || user.node_name().is_none() {
        return Ok(());
    }
    let name = crate::registry::name_of(object);
    crate::auth::node::admit_create(user, r.plural, name).map_err(|reason| {
        crate::auth::forbidden(
            &crate::auth::Attributes {
                user,
                verb: "create",
                resource: Some(crate::auth::ResourceAttributes {
                    api_group: r.group,
                    resource: r.plural,
                    subresource: "",
                    namespace: ns.unwrap_or(""),
                    name,
                }),
                path: "",
            },
            &reason,
        )
    })
}

/// NodeRestriction for a node's write to a pod (its status, or the final
/// delete): only a pod bound to that node. Returns the UID of the pod that
/// was checked, when a node asked, so that the write can be held to it.
async fn admit_pod_write(
    state: &AppState,
    r: &Resource,
    ns: Option<&str>,
    name: &str,
    verb: &'static str,
    user: &UserInfo,
) -> Result<Option<String>, ApiError> {
    if r.kind != "Pod" || state.authz.allows_all() || user.node_name().is_none() {
        return Ok(None);
    }
    let pod = state.registry.get(r, ns, name).await?.value()?;
    let uid = pod
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .map(str::to_string);
    let bound_to = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or("");
    crate::auth::node::admit_pod_write(user, bound_to)
        .map(|()| uid)
        .map_err(|reason| {
            crate::auth::forbidden(
                &crate::auth::Attributes {
                    user,
                    verb,
                    resource: Some(crate::auth::ResourceAttributes {
                        api_group: r.group,
                        resource: r.plural,
                        subresource: if verb == "delete" { "" } else { "status" },
                        namespace: ns.unwrap_or(""),
                        name,
                    }),
                    path: "",
                },
                &reason,
            )
        })
}

/// `POST .../pods/{name}/binding`: assigns the pod to the Binding's
/// target node, once (a second binding is 409), and marks it scheduled;
/// answered as Kubernetes does, `201` with a success Status.
async fn bind(
    state: &AppState,
    pods: &Resource,
    ns: Option<&str>,
    name: &str,
    binding: Value,
    dry_run: DryRun,
) -> Result<Response, ApiError> {
    use k8s_openapi::api::core::v1::Binding;
    let binding: Binding = serde_json::from_value(binding)
        .map_err(|e| ApiError::bad_request(format!("invalid Binding: {e}")))?;
    let node = binding.target.name.clone().unwrap_or_default();
    let kind = binding.target.kind.as_deref().unwrap_or("Node");
    if node.is_empty() || kind != "Node" {
        return Err(ApiError::new(
            Reason::Invalid,
            format!("Binding.core \"{name}\" is invalid: target: Invalid value: a Binding's target must name a Node"),
        ));
    }
    if binding.metadata.name.as_deref().is_some_and(|n| n != name) {
        return Err(ApiError::bad_request(
            "the name of the Binding does not match the name of the pod in the URL",
        ));
    }
    let manager = crate::registry::Manager {
        name: crate::registry::managed::SCHEDULER,
        part: Part::Main,
    };
    let now = crate::registry::now_time();
    state
        .registry
        .bind(pods, ns, name, &manager, dry_run, |_current, mut pod| {
            if pod.pointer("/metadata/deletionTimestamp").is_some() {
                return Err(ApiError::new(
                    Reason::Conflict,
                    format!("Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is being deleted, cannot be assigned to a host"),
                ));
            }
            let assigned = pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("");
            if !assigned.is_empty() {
                return Err(ApiError::new(
                    Reason::Conflict,
                    format!("Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \"{assigned}\""),
                ));
            }
            if let Some(uid) = binding.metadata.uid.as_deref() {
                if pod.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid) {
                    return Err(ApiError::new(
                        Reason::Conflict,
                        format!("Operation cannot be fulfilled on pods/binding \"{name}\": the UID in the precondition does not match the pod's"),
                    ));
                }
            }
            pod["spec"]["nodeName"] = json!(node);
            let conditions = pod["status"]
                .as_object_mut()
                .map(|st| st.entry("conditions").or_insert_with(|| json!([])));
            if let Some(Value::Array(list)) = conditions {
                list.retain(|c| c["type"] != "PodScheduled");
                list.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now}));
            }
            Ok(Some(pod))
        })
        .await?;
    Ok(json(
        StatusCode::CREATED,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})
            .to_string(),
    ))
}

/// Whether writes of `r` are checked for RBAC escalation.
fn is_rbac(state: &AppState, r: &Resource) -> bool {
    r.group == "rbac.authorization.k8s.io" && !state.authz.allows_all()
}

/// RBAC's escalation prevention for a write that would store `object`
/// (see `auth::escalation`).
async fn admit_rbac(
    state: &AppState,
    r: &Resource,
    ns: Option<&str>,
    name: &str,
    object: &Value,
    user: &UserInfo,
) -> Result<(), ApiError> {
    use k8s_openapi::api::rbac::v1::{PolicyRule, RoleRef};
    if !is_rbac(state, r) {
        return Ok(());
    }
    let namespace = ns.unwrap_or("");
    let field = |name: &str| object.get(name).filter(|v| !v.is_null()).cloned();
    match r.kind {
        "Role" | "ClusterRole" => {
            let rules: Vec<PolicyRule> = match field("rules") {
                Some(v) => serde_json::from_value(v)
                    .map_err(|e| ApiError::bad_request(format!("rules: {e}")))?,
                None => Vec::new(),
            };
            crate::auth::escalation::check_role(&state.authz, user, namespace, name, &rules).await
        }
        _ => {
            let Some(role_ref) = field("roleRef") else {
                return Ok(()); // validation refuses it
            };
            let role: RoleRef = serde_json::from_value(role_ref)
                .map_err(|e| ApiError::bad_request(format!("roleRef: {e}")))?;
            let (kind, role_ns) = if role.kind == "ClusterRole" {
                (&mube_apis::resources::CLUSTER_ROLES, None)
            } else {
                (&mube_apis::resources::ROLES, ns)
            };
            let roles = state.registry.resource(kind)?;
            let rules: Option<Vec<PolicyRule>> =
                match state.registry.get(&roles, role_ns, &role.name).await {
                    Ok(stored) => {
                        let v = stored.value()?;
                        Some(
                            serde_json::from_value(v.get("rules").cloned().unwrap_or(Value::Null))
                                .unwrap_or_default(),
                        )
                    }
                    Err(e) if e.is_not_found() => None,
                    Err(e) => return Err(e),
                };
            crate::auth::escalation::check_binding(
                &state.authz,
                user,
                namespace,
                name,
                &role,
                rules.as_deref(),
            )
            .await
        }
    }
}

pub fn not_found_path(path: &str) -> ApiError {
    ApiError::new(
        Reason::NotFound,
        format!("the server could not find the requested resource ({path})"),
    )
}

fn method_not_allowed(method: &Method, what: &str) -> ApiError {
    ApiError::new(
        Reason::MethodNotAllowed,
        format!(
            "the server does not allow this method on the requested resource: {method} on {what}"
        ),
    )
}

/// One object: as stored, or as a one-row Table.
fn object_response(
    r: &Resource,
    code: StatusCode,
    object: &StoredObject,
    table: Option<TableRequest>,
) -> Result<Response, ApiError> {
    match table {
        None => Ok(json(
            code,
            match r.served(&object.json) {
                std::borrow::Cow::Borrowed(_) => object.json.clone(),
                std::borrow::Cow::Owned(converted) => Bytes::from(converted),
            },
        )),
        Some(t) => {
            let meta = json!({"resourceVersion": object.revision.to_string()});
            Ok(json(
                code,
                table::render(r, t, [&object.json[..]], meta, true)?,
            ))
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    state: AppState,
    target: Target,
    method: Method,
    query: Option<&str>,
    headers: HeaderMap,
    body: Body,
    user: &UserInfo,
    connection: Connection,
) -> Result<Response, ApiError> {
    let Connection {
        upgrade,
        connection_control,
    } = connection;
    let r = state
        .registry
        .lookup(&target.group, &target.version, &target.plural)
        .ok_or_else(|| not_found_path(&target.plural))?;
    if target.namespace.is_some() && !r.namespaced {
        return Err(ApiError::new(
            Reason::NotFound,
            format!("{} are not namespaced", r.plural),
        ));
    }
    let ns = target.namespace.as_deref();
    let registry = &state.registry;
    let params = Params::parse(query)?;
    let table = table::negotiate(&headers, params.include_object.as_deref())?;
    let validation = FieldValidation::parse(params.field_validation.as_deref())?;
    match (&target.name, target.subresource.as_deref()) {
        (None, _) => match method {
            Method::GET => {
                let filter = params.filter(&r)?;
                if params.watch {
                    watch::serve(&state, r, ns, filter, &params, table, connection_control).await
                } else {
                    list(&state, &r, ns, &filter, &params, table).await
                }
            }
            Method::POST if ns.is_some() || !r.namespaced => {
                let dry_run = options::dry_run(query, "CreateOptions")?;
                let manager = params.manager(&headers, "CreateOptions")?;
                let mut object = read_object(&headers, body).await?;
                let warnings = check_fields(&r, &object, validation)?;
                admit_create(&state, &r, ns, &object, user)?;
                admit_rbac(
                    &state,
                    &r,
                    ns,
                    crate::registry::name_of(&object),
                    &object,
                    user,
                )
                .await?;
                r.strategy.set_requester(&mut object, user);
                let created = registry.create(&r, ns, object, &manager, dry_run).await?;
                Ok(with_warnings(
                    object_response(&r, StatusCode::CREATED, &created, None)?,
                    &warnings,
                ))
            }
            // As in Kubernetes, a namespaced kind is deleted one namespace at
            // a time: there is no delete across all namespaces.
            Method::DELETE if ns.is_some() || !r.namespaced => {
                let filter = params.filter(&r)?;
                let deletion = options::deletion(query, &read_body(body).await?)?;
                let (deleted, revision) = registry
                    .delete_collection(
                        &r,
                        ns,
                        &filter,
                        &deletion.preconditions,
                        deletion.grace,
                        deletion.propagation,
                        deletion.dry_run,
                    )
                    .await?;
                Ok(list_body(
                    &r,
                    deleted,
                    json!({"resourceVersion": revision.to_string()}),
                ))
            }
            _ => Err(method_not_allowed(&method, r.plural)),
        },
        (Some(name), sub @ (None | Some("status"))) => {
            let part = if sub.is_some() {
                if !r.status_subresource() {
                    return Err(not_found_path(&format!("{}/{name}/status", r.plural)));
                }
                Part::Status
            } else {
                Part::Main
            };
            match method {
                Method::GET => object_response(
                    &r,
                    StatusCode::OK,
                    &registry.get(&r, ns, name).await?,
                    table,
                ),
                Method::PUT => {
                    let dry_run = options::dry_run(query, "UpdateOptions")?;
                    let manager = params.manager(&headers, "UpdateOptions")?;
                    let object = read_object(&headers, body).await?;
                    let warnings = check_fields(&r, &object, validation)?;
                    admit_pod_write(&state, &r, ns, name, "update", user).await?;
                    admit_rbac(&state, &r, ns, name, &object, user).await?;
                    let updated = registry
                        .update(&r, ns, name, part, object, &manager, dry_run)
                        .await?;
                    Ok(with_warnings(
                        object_response(&r, StatusCode::OK, &updated, None)?,
                        &warnings,
                    ))
                }
                Method::PATCH => {
                    let dry_run = options::dry_run(query, "PatchOptions")?;
                    let content_type = headers
                        .get(header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    let bytes = read_body(body).await?;
                    admit_pod_write(&state, &r, ns, name, "patch", user).await?;
                    if is_apply(content_type) {
                        return apply(
                            &state, &r, ns, name, part, &params, &headers, &bytes, validation,
                            dry_run, user,
                        )
                        .await;
                    }
                    let patch = match Patch::parse(content_type, &bytes) {
                        Some(p) => p.map_err(ApiError::bad_request)?,
                        None => return Err(ApiError::new(
                            Reason::UnsupportedMediaType,
                            format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {content_type:?})"),
                        )),
                    };
                    if params.force.is_some() {
                        return Err(ApiError::invalid_options(
                            "PatchOptions",
                            vec![(
                                "force".into(),
                                "Forbidden: may not be specified for non-apply patch".into(),
                                "FieldValueForbidden",
                            )],
                        ));
                    }
                    let manager = params.manager(&headers, "PatchOptions")?;
                    let warnings = match &patch {
                        Patch::Merge(body) | Patch::Strategic(body) => {
                            check_fields(&r, body, validation)?
                        }
                        Patch::Json(_) => Vec::new(),
                    };
                    if is_rbac(&state, &r) {
                        // What the patch would make is what is checked.
                        let preview = registry
                            .patch(&r, ns, name, part, &patch, &manager, DryRun::All)
                            .await?;
                        admit_rbac(&state, &r, ns, name, &preview.value()?, user).await?;
                    }
                    let patched = registry
                        .patch(&r, ns, name, part, &patch, &manager, dry_run)
                        .await?;
                    Ok(with_warnings(
                        object_response(&r, StatusCode::OK, &patched, None)?,
                        &warnings,
                    ))
                }
                Method::DELETE if part == Part::Main => {
                    let mut deletion = options::deletion(query, &read_body(body).await?)?;
                    let checked = admit_pod_write(&state, &r, ns, name, "delete", user).await?;
                    // The pod that was checked is the one deleted, not one
                    // made under its name meanwhile.
                    if deletion.preconditions.uid.is_none() {
                        deletion.preconditions.uid = checked;
                    }
                    let deleted = registry
                        .delete_with_grace(
                            &r,
                            ns,
                            name,
                            &deletion.preconditions,
                            deletion.grace,
                            deletion.propagation,
                            deletion.dry_run,
                        )
                        .await?;
                    object_response(&r, StatusCode::OK, &deleted, None)
                }
                _ => Err(method_not_allowed(&method, &format!("{}/{name}", r.plural))),
            }
        }
        (Some(name), Some("binding")) if r.kind == "Pod" => match method {
            Method::POST => {
                let dry_run = options::dry_run(query, "CreateOptions")?;
                let binding = read_object(&headers, body).await?;
                bind(&state, &r, ns, name, binding, dry_run).await
            }
            _ => Err(method_not_allowed(&method, &format!("pods/{name}/binding"))),
        },
        (Some(name), Some("scale")) if r.scale_subresource() => {
            super::scale::serve(&state, &r, ns, name, method, query, &params, &headers, body).await
        }
        (Some(name), Some("log")) if r.kind == "Pod" => match method {
            Method::GET => super::logs::serve(&state, &r, ns, name, query).await,
            _ => Err(method_not_allowed(&method, &format!("pods/{name}/log"))),
        },
        (Some(name), Some(sub @ ("exec" | "attach" | "portforward"))) if r.kind == "Pod" => {
            match method {
                Method::GET | Method::POST => {
                    super::streams::serve(
                        &state, &r, ns, name, sub, &method, query, &headers, upgrade,
                    )
                    .await
                }
                _ => Err(method_not_allowed(&method, &format!("pods/{name}/{sub}"))),
            }
        }
        (Some(name), Some(sub)) => Err(not_found_path(&format!("{}/{name}/{sub}", r.plural))),
    }
}

fn is_apply(content_type: &str) -> bool {
    content_type.split(';').next().map(str::trim) == Some("application/apply-patch+yaml")
}

/// Server-side apply (`application/apply-patch+yaml`; JSON is YAML too).
/// `fieldManager` is required, as in Kubernetes; 201 when it created the
/// object.
#[allow(clippy::too_many_arguments)]
async fn apply(
    state: &AppState,
    r: &Resource,
    ns: Option<&str>,
    name: &str,
    part: Part,
    params: &Params,
    headers: &HeaderMap,
    bytes: &[u8],
    validation: FieldValidation,
    dry_run: crate::registry::DryRun,
    user: &UserInfo,
) -> Result<Response, ApiError> {
    if params.field_manager.is_none() {
        return Err(ApiError::invalid_options(
            "PatchOptions",
            vec![(
                "fieldManager".into(),
                "Required value: is required for apply patch".into(),
                "FieldValueRequired",
            )],
        ));
    }
    let manager = params.manager(headers, "PatchOptions")?;
    let config: Value = serde_yaml::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
    let warnings = check_fields(r, &config, validation)?;
    let admit = |object: &mut Value| -> Result<(), ApiError> {
        admit_create(state, r, ns, object, user)?;
        r.strategy.set_requester(object, user);
        Ok(())
    };
    let force = params.force.unwrap_or(false);
    if is_rbac(state, r) {
        // What the apply would make is what is checked.
        let (preview, _) = state
            .registry
            .apply(
                r,
                ns,
                name,
                part,
                config.clone(),
                &manager,
                force,
                DryRun::All,
                &admit,
            )
            .await?;
        admit_rbac(state, r, ns, name, &preview.value()?, user).await?;
    }
    let (object, created) = state
        .registry
        .apply(r, ns, name, part, config, &manager, force, dry_run, &admit)
        .await?;
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(with_warnings(
        object_response(r, code, &object, None)?,
        &warnings,
    ))
}

/// Adds a `Warning` header (code 299, as Kubernetes sends) per warning.
fn with_warnings(mut response: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(value) = header::HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    response
}

/// A continue token: the revision of the list's first page and the last key
/// served. Opaque to clients (base64 of JSON), as in Kubernetes.
fn encode_continue(revision: Revision, last_key: &str) -> String {
    let raw = json!({"rv": revision, "start": last_key}).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_continue(token: &str) -> Result<(Revision, String), ApiError> {
    let bad = || ApiError::bad_request("continue: invalid continue token");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rv = v.get("rv").and_then(Value::as_u64).ok_or_else(bad)?;
    let start = v
        .get("start")
        .and_then(Value::as_str)
        .ok_or_else(bad)?
        .to_string();
    Ok((rv, start))
}

/// `{kind}List` (or a Table) with the revision it was read at, a page of at
/// most `limit` items with a continue token for the rest.
///
/// Every page of a paged list is read at the first page's revision, as
/// Kubernetes on etcd does: the store keeps that view for the pages that
/// follow, or rebuilds it from history. Past the history the store keeps,
/// the token is 410 Expired and the client starts over.
async fn list(
    state: &AppState,
    r: &Arc<Resource>,
    ns: Option<&str>,
    filter: &Filter,
    params: &Params,
    table: Option<TableRequest>,
) -> Result<Response, ApiError> {
    let (at, after_key) = match &params.continue_token {
        Some(token) => {
            let (rv, start) = decode_continue(token)?;
            (ReadAt::Exact(rv), Some(start))
        }
        None => (read_at(state, params).await?, None),
    };
    let (mut items, revision) = match state.registry.list(r, ns, filter, at).await {
        Err(e) if after_key.is_some() && e.is_expired() => {
            return Err(ApiError::new(
                Reason::Expired,
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
            ))
        }
        other => other?,
    };
    if let Some(start) = after_key {
        items.retain(|i| *i.key > *start);
    }
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if let Some(limit) = params.limit {
        if items.len() > limit {
            let remaining = items.len() - limit;
            items.truncate(limit);
            if let Some(last) = items.last() {
                metadata["continue"] = json!(encode_continue(revision, &last.key));
                metadata["remainingItemCount"] = json!(remaining);
            }
        }
    }
    if let Some(t) = table {
        let rows = items.iter().map(|i| &i.json[..]);
        return Ok(json(
            StatusCode::OK,
            table::render(r, t, rows, metadata, true)?,
        ));
    }
    Ok(list_body(r, items, metadata))
}

/// `{kind}List` of `items`: the stored JSON bytes, spliced in without
/// re-encoding, and streamed in chunks of about `LIST_CHUNK` bytes. A list
/// of 100,000 nodes is 60 MB: built as one buffer it cost the server more in
/// page faults than in copying, and held a runtime thread for the whole copy.
fn list_body(r: &Resource, mut items: Vec<StoredObject>, metadata: Value) -> Response {
    if r.converts() {
        for item in &mut items {
            item.json = Bytes::from(r.served(&item.json).into_owned());
        }
    }
    let head = json!({
        "kind": format!("{}List", r.kind),
        "apiVersion": r.api_version(),
        "metadata": metadata,
    })
    .to_string();
    let mut first = Vec::with_capacity(head.len() + 16);
    first.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
    first.extend_from_slice(b",\"items\":[");
    let mut items = items.into_iter().enumerate();
    let mut pending = Some(first);
    let chunks = std::iter::from_fn(move || {
        let mut out = pending.take()?;
        while out.len() < LIST_CHUNK {
            match items.next() {
                Some((i, item)) => {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(&item.json);
                }
                None => {
                    out.extend_from_slice(b"]}");
                    return Some(Bytes::from(out));
                }
            }
        }
        pending = Some(Vec::with_capacity(LIST_CHUNK + 4096));
        Some(Bytes::from(out))
    });
    let stream = futures::stream::iter(chunks.map(Ok::<_, std::convert::Infallible>));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Bytes per chunk of a streamed list.
const LIST_CHUNK: usize = 256 * 1024;

/// Which state a first page is read at, from `resourceVersion` and
/// `resourceVersionMatch`, as Kubernetes: unset or "0" is the newest state;
/// "not older than N" waits (briefly) for N to be durable and reads the
/// newest; "exactly N" reads N itself, inside the history the store keeps.
/// A revision the store does not reach in time is 504 ResourceVersionTooLarge.
async fn read_at(state: &AppState, params: &Params) -> Result<ReadAt, ApiError> {
    let requested = params.revision()?;
    let newest = match params.limit {
        Some(limit) => ReadAt::NewestPaged(limit),
        None => ReadAt::Newest,
    };
    let store = state.registry.store();
    match (params.resource_version_match.as_deref(), requested) {
        (None | Some("NotOlderThan"), Some(n)) => {
            store.wait_for(n, state.read_wait).await?;
            Ok(newest)
        }
        (None | Some("NotOlderThan"), None) => Ok(newest),
        (Some("Exact"), Some(n)) => {
            store.wait_for(n, state.read_wait).await?;
            Ok(ReadAt::Exact(n))
        }
        (Some("Exact"), None) => Err(ApiError::bad_request(
            "resourceVersionMatch=Exact requires a resourceVersion other than 0",
        )),
        (Some(other), _) => Err(ApiError::bad_request(format!(
            "resourceVersionMatch: unsupported value {other:?}: supported values: \"Exact\", \"NotOlderThan\""
        ))),
    }
}
