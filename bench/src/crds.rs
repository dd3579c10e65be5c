//! CustomResourceDefinitions: what many custom kinds cost the server, and
//! what a custom object's schema costs each write.
//!
//! - discovery (`/apis`, and one group's resource list) with no CRDs, then
//!   with K CRDs installed (each its own group, as operators install them);
//! - from a CRD's create to its first object created (the client retries
//!   the create until the kind is served), over N fresh CRDs;
//! - in process: pruning, defaulting and validating a 10 KB custom object
//!   against its structural schema (what every write of one pays).

use std::path::Path;
use std::time::{Duration, Instant};

use mube_apis::schema::Schema;
use serde_json::{json, Value};

use crate::server::Server;
use crate::Report;

pub struct Args {
    pub crds: usize,
    pub first_objects: usize,
    pub validations: usize,
}

fn at(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// The schema of the measured kind: nested objects, a list of objects,
/// maps, enums, patterns, bounds and defaults, as operators write them.
fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "required": ["selector", "pools"],
                "properties": {
                    "selector": {"type": "object", "additionalProperties": {"type": "string"}},
                    "minReady": {"type": "integer", "minimum": 0, "default": 1},
                    "mode": {"type": "string", "enum": ["Spread", "Pack"], "default": "Spread"},
                    "pools": {
                        "type": "array",
                        "maxItems": 1000,
                        "items": {
                            "type": "object",
                            "required": ["name", "size"],
                            "properties": {
                                "name": {"type": "string", "pattern": "^[a-z][a-z0-9-]*$", "maxLength": 63},
                                "size": {"type": "integer", "minimum": 0, "maximum": 10000},
                                "zone": {"type": "string"},
                                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                "port": {"x-kubernetes-int-or-string": true},
                                "spot": {"type": "boolean", "default": false}
                            }
                        }
                    }
                }
            },
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
        }
    })
}

/// An object of about `bytes` bytes of JSON for `schema()`.
fn object(bytes: usize) -> Value {
    let mut pools = Vec::new();
    let mut o = json!({});
    while o.to_string().len() < bytes {
        let i = pools.len();
        pools.push(
            json!({"name": format!("pool-{i}"), "size": i, "zone": format!("zone-{}", i % 3),
            "labels": {"tier": "web", "team": format!("t{}", i % 7)}, "port": "http"}),
        );
        o = json!({"apiVersion": "bench.mube.io/v1", "kind": "Fleet", "metadata": {"name": "fleet"},
            "spec": {"selector": {"role": "worker"}, "pools": pools}});
    }
    o
}

fn crd(i: usize) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("fleets.g{i}.bench.mube.io")},
        "spec": {"group": format!("g{i}.bench.mube.io"), "scope": "Namespaced",
            "names": {"plural": "fleets", "kind": "Fleet"},
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": schema()}}]}
    })
}

async fn discovery(
    http: &reqwest::Client,
    url: &str,
    group: Option<&str>,
    runs: usize,
) -> Result<Vec<Duration>, String> {
    let mut took = Vec::with_capacity(runs * 2);
    for _ in 0..runs {
        for path in [
            "/apis".to_string(),
            format!("/apis/{}/v1", group.unwrap_or("apps")),
        ] {
            let started = Instant::now();
            let r = http
                .get(format!("{url}{path}"))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let code = r.status();
            let _ = r.bytes().await.map_err(|e| e.to_string())?;
            took.push(started.elapsed());
            if !code.is_success() {
                return Err(format!("GET {path}: {code}"));
            }
        }
    }
    took.sort();
    Ok(took)
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
) -> Result<reqwest::StatusCode, String> {
    let r = http
        .post(url)
        .json(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let code = r.status();
    let _ = r.bytes().await;
    Ok(code)
}

pub async fn run(bin: &Path, args: Args, report: &mut Report) -> Result<(), String> {
    report.add("scenario", "crds");

    // In process first: nothing else runs.
    let compiled = Schema::compile(&schema(), "openAPIV3Schema").map_err(|e| format!("{e:?}"))?;
    let sample = object(10 * 1024);
    report.add("object_bytes", sample.to_string().len());
    // Each step apart (the copy is what the server's canonical form
    // starts from), then all of a write's schema work together.
    let mut copy = Vec::with_capacity(args.validations);
    let mut shape = Vec::with_capacity(args.validations);
    let mut check = Vec::with_capacity(args.validations);
    let mut all = Vec::with_capacity(args.validations);
    for _ in 0..args.validations {
        let started = Instant::now();
        let mut o = sample.clone();
        let copied = Instant::now();
        let mut pruned = Vec::new();
        compiled.prune(&mut o, "", &mut pruned);
        compiled.apply_defaults(&mut o);
        let shaped = Instant::now();
        let mut errors = Vec::new();
        compiled.validate(&o, "", &mut errors);
        let checked = Instant::now();
        copy.push(copied - started);
        shape.push(shaped - copied);
        check.push(checked - shaped);
        all.push(checked - started);
        if !errors.is_empty() {
            return Err(format!("the sample is invalid: {errors:?}"));
        }
    }
    let us = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e6);
    for (what, took) in [
        ("validate", &mut check),
        ("prune_default", &mut shape),
        ("copy", &mut copy),
        ("schema_total", &mut all),
    ] {
        took.sort();
        report.add(&format!("{what}_p50_us"), us(at(took, 0.5)));
        report.add(&format!("{what}_p99_us"), us(at(took, 0.99)));
    }

    let server = Server::start(bin, 0, "").await?;
    let http = reqwest::Client::new();
    let url = server.url.clone();
    let crds_url = format!("{url}/apis/apiextensions.k8s.io/v1/customresourcedefinitions");

    let before = discovery(&http, &url, None, 200).await?;
    report.add("discovery_0_crds_p50_ms", ms(at(&before, 0.5)));
    report.add("discovery_0_crds_p99_ms", ms(at(&before, 0.99)));

    let started = Instant::now();
    for i in 0..args.crds {
        let code = post(&http, &crds_url, &crd(i)).await?;
        if code.as_u16() != 201 {
            return Err(format!("CRD {i}: {code}"));
        }
    }
    // Every kind served: the last group answers.
    let last = format!(
        "{url}/apis/g{}.bench.mube.io/v1",
        args.crds.saturating_sub(1)
    );
    loop {
        if http
            .get(&last)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err("the CRDs were not all served within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    report.add("crds", args.crds);
    report.add("crds_served_ms", ms(started.elapsed()));
    let group = format!("g{}.bench.mube.io", args.crds / 2);
    let after = discovery(&http, &url, Some(&group), 200).await?;
    report.add("discovery_p50_ms", ms(at(&after, 0.5)));
    report.add("discovery_p99_ms", ms(at(&after, 0.99)));

    let mut first = Vec::with_capacity(args.first_objects);
    for n in 0..args.first_objects {
        let i = args.crds + n;
        let object_url = format!("{url}/apis/g{i}.bench.mube.io/v1/namespaces/default/fleets");
        let mut fleet = object(1024);
        fleet["apiVersion"] = json!(format!("g{i}.bench.mube.io/v1"));
        let started = Instant::now();
        let code = post(&http, &crds_url, &crd(i)).await?;
        if code.as_u16() != 201 {
            return Err(format!("CRD {i}: {code}"));
        }
        loop {
            let code = post(&http, &object_url, &fleet).await?;
            if code.as_u16() == 201 {
                break;
            }
            if started.elapsed() > Duration::from_secs(10) {
                return Err(format!(
                    "CRD {i}: its first object still answers {code} after 10 s"
                ));
            }
        }
        first.push(started.elapsed());
    }
    first.sort();
    report.add("crd_to_first_object_p50_ms", ms(at(&first, 0.5)));
    report.add("crd_to_first_object_max_ms", ms(at(&first, 1.0)));
    let rss = crate::server::proc_stats(server.pid()).rss_bytes;
    report.add(
        "apiserver_rss_mib",
        format!("{:.1}", rss as f64 / (1024.0 * 1024.0)),
    );
    Ok(())
}
