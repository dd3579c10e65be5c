//! The options of writes, read and checked at the edge as Kubernetes does:
//! `dryRun` on every write (`CreateOptions`, `UpdateOptions`,
//! `PatchOptions`), and `DeleteOptions` on deletes. Past this module the
//! registry sees only its typed `DryRun` and the store's `Preconditions`.

use crate::error::ApiError;
use crate::registry::{DryRun, Propagation};
use crate::store::Preconditions;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions;

/// The only `dryRun` value Kubernetes defines.
const DRY_RUN_ALL: &str = "All";

/// Every value of a query parameter that may repeat (`dryRun=All&dryRun=All`).
/// An empty value is kept: `?dryRun=` is a value, and not "All".
fn all_values(query: Option<&str>, name: &str) -> Vec<String> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .collect()
}

/// Whether the query names `dryRun` at all, with any value.
pub fn asks_dry_run(query: Option<&str>) -> bool {
    !all_values(query, "dryRun").is_empty()
}

/// Go's `%#v` of a `[]string`, which Kubernetes' message prints.
fn go_strings(values: &[String]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
    format!("[]string{{{}}}", quoted.join(", "))
}

/// `dryRun` as `ValidateDryRun` checks it: absent, or only "All".
fn parse_dry_run(values: &[String]) -> Result<DryRun, (String, String, &'static str)> {
    if values.is_empty() {
        Ok(DryRun::No)
    } else if values.iter().all(|v| v == DRY_RUN_ALL) {
        Ok(DryRun::All)
    } else {
        Err((
            "dryRun".to_string(),
            format!(
                "Unsupported value: {}: supported values: \"{DRY_RUN_ALL}\"",
                go_strings(values)
            ),
            "FieldValueNotSupported",
        ))
    }
}

/// `dryRun` of a create, update or patch, named by its options kind
/// (`CreateOptions`, ...) in the 422 for a bad value, as Kubernetes does.
pub fn dry_run(query: Option<&str>, options_kind: &str) -> Result<DryRun, ApiError> {
    parse_dry_run(&all_values(query, "dryRun"))
        .map_err(|cause| ApiError::invalid_options(options_kind, vec![cause]))
}

/// What a delete (or a delete of a collection) asks for.
#[derive(Debug, Default)]
pub struct Deletion {
    pub preconditions: Preconditions,
    /// `gracePeriodSeconds`: for pods on a node (graceful deletion).
    pub grace: Option<i64>,
    /// `propagationPolicy` (or the older `orphanDependents`).
    pub propagation: Propagation,
    pub dry_run: DryRun,
}

/// `DeleteOptions` from the body, or from the query when the body is empty
/// (as Kubernetes reads them). One difference, on the safe side: a
/// `dryRun` in the query counts when the body names none (Kubernetes would
/// ignore it and delete). Every option is either honoured or refused:
///
/// - `preconditions.uid` / `.resourceVersion`: checked by the store, atomically
///   with the delete;
/// - `dryRun`;
/// - `propagationPolicy`: `Background` (kubectl's default) deletes the
///   object now and the garbage collector its dependents; `Foreground` and
///   `Orphan` (or `orphanDependents: true`) add their finalizer, and the
///   garbage collector finishes the delete (see `Registry::delete_with_grace`);
/// - `gracePeriodSeconds`: how long a pod on a node gets to stop (its
///   node agent finishes the delete); every other kind is removed at once,
///   as in Kubernetes (Nodes, Leases and Events have no graceful deletion).
pub fn deletion(query: Option<&str>, body: &[u8]) -> Result<Deletion, ApiError> {
    let options = if body.iter().all(u8::is_ascii_whitespace) {
        from_query(query)?
    } else {
        let mut options = from_body(body)?;
        let in_query = all_values(query, "dryRun");
        if options.dry_run.is_none() && !in_query.is_empty() {
            options.dry_run = Some(in_query);
        }
        options
    };
    let mut causes = Vec::new();
    let dry_run =
        parse_dry_run(options.dry_run.as_deref().unwrap_or_default()).unwrap_or_else(|cause| {
            causes.push(cause);
            DryRun::No
        });
    if options.orphan_dependents.is_some() && options.propagation_policy.is_some() {
        causes.push((
            "propagationPolicy".into(),
            format!(
                "Invalid value: {:?}: orphanDependents and deletionPropagation cannot be both set",
                options.propagation_policy.as_deref().unwrap_or_default()
            ),
            "FieldValueInvalid",
        ));
    }
    let propagation = match (
        options.propagation_policy.as_deref(),
        options.orphan_dependents,
    ) {
        (Some("Background"), _) | (None, None | Some(false)) => Propagation::Background,
        (Some("Foreground"), _) => Propagation::Foreground,
        (Some("Orphan"), _) | (None, Some(true)) => Propagation::Orphan,
        (Some(other), _) => {
            causes.push((
                "propagationPolicy".into(),
                format!("Unsupported value: {other:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""),
                "FieldValueNotSupported",
            ));
            Propagation::Background
        }
    };
    if options.ignore_store_read_error_with_cluster_breaking_potential == Some(true) {
        causes.push((
            "ignoreStoreReadErrorWithClusterBreakingPotential".into(),
            "Forbidden: not supported: mube never serves an object it cannot read".into(),
            "FieldValueForbidden",
        ));
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid_options("DeleteOptions", causes));
    }
    // Kept exactly as sent: an empty uid is a precondition too (one no
    // object meets), as in Kubernetes.
    let preconditions = options.preconditions.unwrap_or_default();
    Ok(Deletion {
        preconditions: Preconditions {
            uid: preconditions.uid,
            resource_version: preconditions.resource_version,
        },
        grace: options.grace_period_seconds,
        propagation,
        dry_run,
    })
}

fn from_body(body: &[u8]) -> Result<DeleteOptions, ApiError> {
    let options: DeleteOptions = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("the body is not a valid DeleteOptions: {e}"))
    })?;
    match options.kind.as_deref() {
        None | Some("") | Some("DeleteOptions") => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "the body of a delete must be a DeleteOptions, not a {other}"
            )))
        }
    }
    // Any apiVersion: client-go's typed clients send DeleteOptions in the
    // group version of the resource (`coordination.k8s.io/v1`), and
    // Kubernetes accepts every group's.
    Ok(options)
}

/// The query form: `?dryRun=All&propagationPolicy=...&gracePeriodSeconds=N`
/// (preconditions have no query form).
fn from_query(query: Option<&str>) -> Result<DeleteOptions, ApiError> {
    // An empty value of these is taken as absent (only dryRun is strict).
    let one = |name: &str| all_values(query, name).pop().filter(|v| !v.is_empty());
    let dry_run = all_values(query, "dryRun");
    let grace_period_seconds = one("gracePeriodSeconds")
        .map(|s| {
            s.parse::<i64>().map_err(|_| {
                ApiError::bad_request(format!("gracePeriodSeconds: invalid value {s:?}"))
            })
        })
        .transpose()?;
    let boolean = |name: &str| -> Result<Option<bool>, ApiError> {
        one(name)
            .map(|s| match s.as_str() {
                "true" | "True" | "1" => Ok(true),
                "false" | "False" | "0" => Ok(false),
                _ => Err(ApiError::bad_request(format!(
                    "{name}: invalid boolean {s:?}"
                ))),
            })
            .transpose()
    };
    Ok(DeleteOptions {
        dry_run: Some(dry_run).filter(|d| !d.is_empty()),
        grace_period_seconds,
        orphan_dependents: boolean("orphanDependents")?,
        propagation_policy: one("propagationPolicy"),
        ignore_store_read_error_with_cluster_breaking_potential: boolean(
            "ignoreStoreReadErrorWithClusterBreakingPotential",
        )?,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(e: ApiError) -> String {
        e.status.message.clone().unwrap_or_default()
    }

    #[test]
    fn dry_run_accepts_only_all() {
        assert_eq!(dry_run(None, "CreateOptions").unwrap(), DryRun::No);
        assert_eq!(
            dry_run(Some("dryRun=All"), "CreateOptions").unwrap(),
            DryRun::All
        );
        assert_eq!(
            dry_run(Some("dryRun=All&dryRun=All"), "PatchOptions").unwrap(),
            DryRun::All
        );
        assert_eq!(
            dry_run(Some("dryRun="), "UpdateOptions")
                .unwrap_err()
                .code(),
            422
        );
        let e = dry_run(Some("dryRun=All&dryRun=Bogus"), "CreateOptions").unwrap_err();
        assert_eq!(e.code(), 422);
        assert_eq!(
            message(e),
            r#"CreateOptions.meta.k8s.io "" is invalid: dryRun: Unsupported value: []string{"All", "Bogus"}: supported values: "All""#
        );
    }

    #[test]
    fn delete_options_come_from_the_body_else_the_query() {
        let d = deletion(
            Some("dryRun=Bogus"),
            br#"{"kind":"DeleteOptions","apiVersion":"v1","dryRun":["All"],"propagationPolicy":"Background","preconditions":{"uid":"u","resourceVersion":"7"}}"#,
        )
        .unwrap();
        assert_eq!(d.dry_run, DryRun::All);
        assert_eq!(d.preconditions.uid.as_deref(), Some("u"));
        assert_eq!(d.preconditions.resource_version.as_deref(), Some("7"));
        let d = deletion(Some("dryRun=All&gracePeriodSeconds=0"), b"  ").unwrap();
        assert_eq!(d.dry_run, DryRun::All);
        assert_eq!(d.preconditions, Preconditions::default());
    }

    #[test]
    fn delete_options_refuse_what_mube_cannot_honour() {
        for (query, body, field) in [
            (
                None,
                r#"{"propagationPolicy":"Orphan","orphanDependents":true}"#,
                "propagationPolicy",
            ),
            (
                None,
                r#"{"propagationPolicy":"Sideways"}"#,
                "propagationPolicy",
            ),
            (None, r#"{"dryRun":["Some"]}"#, "dryRun"),
        ] {
            let e = deletion(query, body.as_bytes()).unwrap_err();
            assert_eq!(e.code(), 422, "{body}");
            let m = message(e);
            assert!(
                m.starts_with("DeleteOptions.meta.k8s.io \"\" is invalid: "),
                "{m}"
            );
            assert!(m.contains(field), "{m}");
        }
        let e = deletion(None, br#"{"kind":"Node"}"#).unwrap_err();
        assert_eq!(e.code(), 400);
        assert!(deletion(None, br#"{"orphanDependents":false}"#).is_ok());
        for (query, body, policy) in [
            (
                None,
                r#"{"propagationPolicy":"Foreground"}"#,
                Propagation::Foreground,
            ),
            (Some("propagationPolicy=Orphan"), "", Propagation::Orphan),
            (None, r#"{"orphanDependents":true}"#, Propagation::Orphan),
            (None, "", Propagation::Background),
        ] {
            assert_eq!(
                deletion(query, body.as_bytes()).unwrap().propagation,
                policy,
                "{body}"
            );
        }
        let e = deletion(Some("dryRun="), b"").unwrap_err();
        assert_eq!(e.code(), 422);
    }

    #[test]
    fn delete_options_keep_what_was_sent() {
        // Empty preconditions are preconditions (no object meets them).
        let d = deletion(
            None,
            br#"{"preconditions":{"uid":"","resourceVersion":"x"}}"#,
        )
        .unwrap();
        assert_eq!(d.preconditions.uid.as_deref(), Some(""));
        assert_eq!(d.preconditions.resource_version.as_deref(), Some("x"));
        // A group's own DeleteOptions version, as client-go's typed clients send.
        let d = deletion(
            None,
            br#"{"kind":"DeleteOptions","apiVersion":"coordination.k8s.io/v1"}"#,
        )
        .unwrap();
        assert_eq!(d.dry_run, DryRun::No);
        // The query's dryRun counts when the body names none.
        let d = deletion(Some("dryRun=All"), br#"{"propagationPolicy":"Background"}"#).unwrap();
        assert_eq!(d.dry_run, DryRun::All);
        let e = deletion(
            Some("dryRun=Bogus"),
            br#"{"propagationPolicy":"Background"}"#,
        )
        .unwrap_err();
        assert_eq!(e.code(), 422);
    }
}
