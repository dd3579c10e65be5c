//! kubectl against mube: the real `kubectl` on PATH (or `MUBE_KUBECTL`),
//! pointed at a real mube-apiserver through the kubeconfig the server
//! writes, checked by its output. Without kubectl these tests are ignored
//! (see build.rs).

use std::time::Duration;

use mube_e2e::{node, table, Api, ApiServer, Kubectl, Options};
use serde_json::{json, Value};

async fn cluster(nodes: &[&'static str], timeout: &'static str) -> (ApiServer, Api, Kubectl) {
    let server = ApiServer::start(Options {
        nodes: nodes.iter().map(|n| node(n)).collect(),
        notready_timeout: timeout,
        // The server's own defaults: kubectl works through the admin
        // kubeconfig it wrote, over HTTPS.
        secure: true,
        ..Default::default()
    })
    .await;
    let api = Api::new(&server);
    let kubectl = Kubectl::new(&server);
    (server, api, kubectl)
}

#[cfg_attr(not(has_kubectl), ignore = "kubectl not found on PATH")]
#[tokio::test]
async fn discovery_lists_exactly_what_mube_serves() {
    let (_server, _api, k) = cluster(&["node-a"], "60s").await;
    let resources = table(&k.ok(&["api-resources"]));
    assert_eq!(
        resources[0],
        ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]
    );
    let mut rows: Vec<Vec<String>> = resources[1..].to_vec();
    rows.sort();
    let rbac = "rbac.authorization.k8s.io/v1";
    let expected: Vec<Vec<String>> = vec![
        vec![
            "certificatesigningrequests",
            "csr",
            "certificates.k8s.io/v1",
            "false",
            "CertificateSigningRequest",
        ],
        vec!["clusterrolebindings", rbac, "false", "ClusterRoleBinding"],
        vec!["clusterroles", rbac, "false", "ClusterRole"],
        vec!["configmaps", "cm", "v1", "true", "ConfigMap"],
        vec![
            "customresourcedefinitions",
            "crd,crds",
            "apiextensions.k8s.io/v1",
            "false",
            "CustomResourceDefinition",
        ],
        vec!["deployments", "deploy", "apps/v1", "true", "Deployment"],
        vec![
            "endpointslices",
            "discovery.k8s.io/v1",
            "true",
            "EndpointSlice",
        ],
        vec!["events", "ev", "v1", "true", "Event"],
        vec!["leases", "coordination.k8s.io/v1", "true", "Lease"],
        vec!["namespaces", "ns", "v1", "false", "Namespace"],
        vec!["nodes", "no", "v1", "false", "Node"],
        vec!["pods", "po", "v1", "true", "Pod"],
        vec!["replicasets", "rs", "apps/v1", "true", "ReplicaSet"],
        vec!["rolebindings", rbac, "true", "RoleBinding"],
        vec!["roles", rbac, "true", "Role"],
        vec!["secrets", "v1", "true", "Secret"],
        vec![
            "selfsubjectaccessreviews",
            "authorization.k8s.io/v1",
            "false",
            "SelfSubjectAccessReview",
        ],
        vec![
            "selfsubjectreviews",
            "authentication.k8s.io/v1",
            "false",
            "SelfSubjectReview",
        ],
        vec!["services", "svc", "v1", "true", "Service"],
    ]
    .into_iter()
    .map(|r| r.into_iter().map(String::from).collect())
    .collect();
    assert_eq!(rows, expected);
    let wide = k.ok(&["api-resources", "-o", "wide"]);
    let nodes_line = wide.lines().find(|l| l.starts_with("nodes")).unwrap();
    assert!(
        nodes_line.contains("create,delete,deletecollection,get,list,patch,update,watch")
            || nodes_line.contains("[create delete deletecollection get list patch update watch]"),
        "{nodes_line}"
    );
    assert_eq!(
        k.ok(&["api-versions"]).lines().collect::<Vec<_>>(),
        [
            "apiextensions.k8s.io/v1",
            "apps/v1",
            "authentication.k8s.io/v1",
            "authentication.k8s.io/v1alpha1",
            "authentication.k8s.io/v1beta1",
            "authorization.k8s.io/v1",
            "certificates.k8s.io/v1",
            "coordination.k8s.io/v1",
            "discovery.k8s.io/v1",
            "rbac.authorization.k8s.io/v1",
            "v1"
        ]
    );
    let version: Value = serde_json::from_str(&k.ok(&["version", "-o", "json"])).unwrap();
    assert_eq!(version["serverVersion"]["major"], "1");
    let raw: Value = serde_json::from_str(&k.ok(&["get", "--raw", "/api/v1/nodes"])).unwrap();
    assert_eq!(raw["kind"], "NodeList");
    let raw: Value =
        serde_json::from_str(&k.ok(&["get", "--raw", "/apis/coordination.k8s.io/v1"])).unwrap();
    assert_eq!(raw["kind"], "APIResourceList");
    let (code, _, err) = k.run(&["get", "statefulsets"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("the server doesn't have a resource type"),
        "{err}"
    );
}

#[cfg_attr(not(has_kubectl), ignore = "kubectl not found on PATH")]
#[tokio::test]
async fn get_prints_the_kubernetes_node_columns_and_every_output_format() {
    let (_server, api, k) = cluster(&["node-a", "node-b", "node-c"], "60s").await;
    assert_eq!(api.heartbeat("node-a").await.code, 202);

    let t = table(&k.ok(&["get", "nodes"]));
    assert_eq!(t[0], ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]);
    assert_eq!(
        (
            t[1][0].as_str(),
            t[1][1].as_str(),
            t[1][2].as_str(),
            t[1][4].as_str()
        ),
        ("node-a", "Ready", "<none>", "0.1.0")
    );
    // node-b never heartbeated: its Ready condition is Unknown, which Kubernetes prints as NotReady.
    assert_eq!((t[2][0].as_str(), t[2][1].as_str()), ("node-b", "NotReady"));

    let wide = table(&k.ok(&["get", "nodes", "-o", "wide"]));
    assert_eq!(
        wide[0],
        [
            "NAME",
            "STATUS",
            "ROLES",
            "AGE",
            "VERSION",
            "INTERNAL-IP",
            "EXTERNAL-IP",
            "OS-IMAGE",
            "KERNEL-VERSION",
            "CONTAINER-RUNTIME"
        ]
    );
    assert_eq!(
        &wide[1][5..],
        [
            "127.0.0.1",
            "<none>",
            "<unknown>",
            "<unknown>",
            "containerd"
        ]
    );

    let json: Value = serde_json::from_str(&k.ok(&["get", "nodes", "-o", "json"])).unwrap();
    assert_eq!(json["items"].as_array().unwrap().len(), 3);
    assert_eq!(json["items"][0]["status"]["state"], "Ready");
    assert!(k
        .ok(&["get", "node", "node-a", "-o", "yaml"])
        .contains("state: Ready"));
    assert_eq!(
        k.ok(&["get", "nodes", "-o", "name"])
            .lines()
            .collect::<Vec<_>>(),
        ["node/node-a", "node/node-b", "node/node-c"]
    );
    assert_eq!(
        k.ok(&[
            "get",
            "node",
            "node-a",
            "-o",
            "jsonpath={.status.nodeInfo.containerRuntimeVersion}"
        ]),
        "containerd"
    );
    let cc = table(&k.ok(&[
        "get",
        "nodes",
        "-o",
        "custom-columns=NAME:.metadata.name,STATE:.status.state",
    ]));
    assert_eq!(cc[1], ["node-a", "Ready"]);
    assert_eq!(cc[2], ["node-b", "Unknown"]);

    k.ok(&["label", "node", "node-b", "tier=web"]);
    let labels = table(&k.ok(&["get", "nodes", "--show-labels"]));
    assert_eq!(labels[0].last().unwrap(), "LABELS");
    assert_eq!(labels[2].last().unwrap(), "tier=web");
    assert_eq!(
        k.ok(&["get", "nodes", "-l", "tier=web", "-o", "name"])
            .trim(),
        "node/node-b"
    );
    assert_eq!(
        k.ok(&["get", "nodes", "-l", "tier notin (web)", "-o", "name"])
            .lines()
            .count(),
        2
    );
    assert_eq!(
        k.ok(&[
            "get",
            "nodes",
            "--field-selector",
            "metadata.name=node-c",
            "-o",
            "name"
        ])
        .trim(),
        "node/node-c"
    );
    assert_eq!(
        k.ok(&[
            "get",
            "nodes",
            "--field-selector",
            "status.state=Ready",
            "-o",
            "name"
        ])
        .trim(),
        "node/node-a"
    );
    let sorted = table(&k.ok(&[
        "get",
        "nodes",
        "--sort-by",
        "{.metadata.labels.tier}",
        "--no-headers",
    ]));
    assert_eq!(sorted.last().unwrap()[0], "node-b");
    // Pagination: pages of one, all three nodes printed.
    let chunked = table(&k.ok(&["get", "nodes", "--chunk-size", "1", "--no-headers"]));
    assert_eq!(
        chunked.iter().map(|r| r[0].as_str()).collect::<Vec<_>>(),
        ["node-a", "node-b", "node-c"]
    );

    let leases = table(&k.ok(&["get", "leases", "-n", "kube-node-lease"]));
    assert_eq!(leases[0], ["NAME", "HOLDER", "AGE"]);
    assert_eq!(&leases[1][..2], ["node-a", "node-a"]);
    let all = table(&k.ok(&["get", "leases", "-A"]));
    assert_eq!(all[0], ["NAMESPACE", "NAME", "HOLDER", "AGE"]);
    assert_eq!(&all[1][..3], ["kube-node-lease", "node-a", "node-a"]);
}

#[cfg_attr(not(has_kubectl), ignore = "kubectl not found on PATH")]
#[tokio::test]
async fn writes_label_annotate_cordon_patch_apply_create_replace_delete() {
    let (server, api, k) = cluster(&["node-a"], "60s").await;
    assert_eq!(api.heartbeat("node-a").await.code, 202);

    assert_eq!(
        k.ok(&["label", "node", "node-a", "env=prod"]).trim(),
        "node/node-a labeled"
    );
    // kubectl 1.27 prints "annotate", later versions "annotated".
    assert!(k
        .ok(&["annotate", "node", "node-a", "note=hello"])
        .starts_with("node/node-a annotate"));
    assert_eq!(k.ok(&["cordon", "node-a"]).trim(), "node/node-a cordoned");
    let t = table(&k.ok(&["get", "nodes"]));
    assert_eq!(t[1][1], "Ready,SchedulingDisabled");
    assert_eq!(
        k.ok(&["uncordon", "node-a"]).trim(),
        "node/node-a uncordoned"
    );
    k.ok(&[
        "patch",
        "node",
        "node-a",
        "--type",
        "merge",
        "-p",
        r#"{"metadata":{"labels":{"m":"1"}}}"#,
    ]);
    k.ok(&[
        "patch",
        "node",
        "node-a",
        "--type",
        "json",
        "-p",
        r#"[{"op":"add","path":"/metadata/labels/j","value":"2"}]"#,
    ]);
    k.ok(&[
        "patch",
        "node",
        "node-a",
        "-p",
        r#"{"metadata":{"labels":{"s":"3","env":null}}}"#,
    ]);
    let node = api.get("/api/v1/nodes/node-a").await.body;
    assert_eq!(
        node["metadata"]["labels"],
        json!({"m": "1", "j": "2", "s": "3"})
    );
    assert_eq!(node["metadata"]["annotations"]["note"], "hello");
    assert_ne!(node["spec"]["unschedulable"], json!(true), "uncordoned");
    assert_eq!(
        node["status"]["state"], "Ready",
        "writes to the main resource keep the status"
    );
    let (code, _, err) = k.run(&[
        "patch",
        "node",
        "node-a",
        "--type",
        "json",
        "-p",
        r#"[{"op":"remove","path":"/spec/nope"}]"#,
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("the JSON patch cannot be applied"), "{err}");

    // apply / create / replace / delete with the example manifest.
    let (manifest, edited, _) = manifests(server.dir.path());
    let manifest = manifest.as_str();
    assert_eq!(
        k.ok(&["apply", "-f", manifest]).trim(),
        "node/mube-node-2 created"
    );
    let before =
        api.get("/api/v1/nodes/mube-node-2").await.body["metadata"]["resourceVersion"].clone();
    assert_eq!(
        k.ok(&["apply", "-f", manifest]).trim(),
        "node/mube-node-2 unchanged"
    );
    let after =
        api.get("/api/v1/nodes/mube-node-2").await.body["metadata"]["resourceVersion"].clone();
    assert_eq!(
        before, after,
        "re-applying an unchanged manifest changes nothing"
    );
    assert_eq!(
        k.ok(&["apply", "-f", &edited]).trim(),
        "node/mube-node-2 configured"
    );
    assert_eq!(
        api.get("/api/v1/nodes/mube-node-2").await.body["metadata"]["labels"]["mube.io/pool"],
        "edited"
    );
    assert_eq!(
        k.ok(&["delete", "node", "mube-node-2"]).trim(),
        "node \"mube-node-2\" deleted"
    );
    assert_eq!(
        k.ok(&["create", "-f", manifest]).trim(),
        "node/mube-node-2 created"
    );
    let (code, _, err) = k.run(&["create", "-f", manifest]);
    assert_ne!(code, 0);
    assert!(err.contains("AlreadyExists"), "{err}");
    let current = server.dir.path().join("current.json");
    std::fs::write(
        &current,
        k.ok(&["get", "node", "mube-node-2", "-o", "json"]),
    )
    .unwrap();
    assert_eq!(
        k.ok(&["replace", "-f", current.to_str().unwrap()]).trim(),
        "node/mube-node-2 replaced"
    );

    // kubectl's default validation is done by the server: unknown fields are refused.
    let bad = server.dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: bad-node\nspec:\n  bogus: 1\n",
    )
    .unwrap();
    let (code, _, err) = k.run(&["apply", "-f", bad.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown field \"spec.bogus\""), "{err}");
    assert_eq!(api.get("/api/v1/nodes/bad-node").await.code, 404);
}

#[cfg_attr(not(has_kubectl), ignore = "kubectl not found on PATH")]
#[tokio::test]
async fn describe_shows_the_node_and_its_events() {
    let (_server, api, k) = cluster(&["node-a"], "1s").await;
    // The lifecycle controller reports transitions it sees, not the state
    // it finds a node in at its first list (a restart must not repeat
    // them): wait until it counts node-a as Unknown, then make it Ready.
    let mut listed = false;
    for _ in 0..100 {
        let body = api.get("/metrics").await.body;
        let text = body.as_str().unwrap_or_default();
        if mube_e2e::metric(text, "mube_nodes", &[("state", "Unknown")]) == 1.0 {
            listed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(listed, "the lifecycle controller never listed node-a");
    assert_eq!(api.heartbeat("node-a").await.code, 202);
    // Let it go NotReady so there are two transitions to show.
    let mut gone = false;
    for _ in 0..60 {
        if mube_e2e::state(&api.get("/api/v1/nodes/node-a").await.body) == "NotReady" {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone);
    let (code, out, err) = k.run(&["describe", "node", "node-a"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.is_empty(), "describe must not report errors: {err}");
    for want in [
        "Name:               node-a",
        "InternalIP:  127.0.0.1",
        "Ready",
        "Capacity:",
        "pods:",
        "Container Runtime Version:  containerd",
        "Non-terminated Pods:          (0 in total)",
        "NodeReady",
        "NodeNotReady",
        "node-lifecycle-controller",
    ] {
        assert!(out.contains(want), "describe lacks {want:?}:\n{out}");
    }
    let events = table(&k.ok(&["get", "events", "-A"]));
    assert_eq!(&events[0][..4], ["NAMESPACE", "LAST", "SEEN", "TYPE"]);
    assert!(events.iter().any(|r| r.contains(&"NodeReady".to_string()) && r.contains(&"node/node-a".to_string())), "{events:?}");
    assert!(
        events
            .iter()
            .any(|r| r.contains(&"NodeNotReady".to_string())),
        "{events:?}"
    );
}

#[cfg_attr(not(has_kubectl), ignore = "kubectl not found on PATH")]
// Multi-threaded: kubectl runs blocking while a task deletes the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_and_wait() {
    let (_server, api, k) = cluster(&["node-a", "node-b"], "60s").await;
    let (mut watch, mut lines) = k.follow(&["get", "nodes", "-w"]);
    assert!(lines
        .wait_for(Duration::from_secs(10), |l| l.starts_with("NAME"))
        .is_some());
    assert!(lines
        .wait_for(Duration::from_secs(5), |l| l.starts_with("node-b "))
        .is_some());
    let (mut only, mut only_lines) = k.follow(&["get", "nodes", "--watch-only"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    assert_eq!(api.heartbeat("node-a").await.code, 202);
    let row = lines
        .wait_for(Duration::from_secs(5), |l| {
            l.starts_with("node-a ") && l.contains(" Ready ")
        })
        .expect("the Ready change");
    assert!(row.1.contains("0.1.0"), "{}", row.1);
    assert!(only_lines
        .wait_for(Duration::from_secs(5), |l| l.starts_with("node-a ")
            && l.contains(" Ready "))
        .is_some());
    let printed_by_only = only_lines.collect(Duration::from_millis(300));
    assert!(
        !printed_by_only.iter().any(|l| l.starts_with("node-b")),
        "--watch-only must not list first: {printed_by_only:?}"
    );
    let _ = watch.kill();
    let _ = only.kill();

    k.ok(&[
        "wait",
        "--for=condition=Ready",
        "node/node-a",
        "--timeout=5s",
    ]);
    let (code, _, _) = k.run(&[
        "wait",
        "--for=condition=Ready",
        "node/node-b",
        "--timeout=1s",
    ]);
    assert_ne!(code, 0, "node-b is not Ready: wait must time out");

    let deleter = {
        let api = api.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            api.delete("/api/v1/nodes/node-b").await.code
        })
    };
    let out = k.ok(&["wait", "--for=delete", "node/node-b", "--timeout=10s"]);
    assert!(
        out.contains("node/node-b condition met") || out.contains("deleted"),
        "{out}"
    );
    assert_eq!(deleter.await.unwrap(), 200);
}

/// The list's resourceVersion and every node, to compare before and after.
async fn nodes_snapshot(api: &Api) -> (String, Value) {
    let list = api.get("/api/v1/nodes").await.body;
    (
        list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string(),
        list["items"].clone(),
    )
}

/// Asserts that nothing was written since `before`: every node and its
/// resourceVersion are the same, the next event a watch from `before` sees
/// is a real write made now, and every revision in between went to a write
/// of the server's own (the node lifecycle controller's Events).
async fn assert_unchanged(api: &Api, before: &(String, Value), watch: &mut mube_e2e::Watch) {
    assert_eq!(
        nodes_snapshot(api).await.1,
        before.1,
        "a dry run changed nodes"
    );
    let real = api
        .post(
            "/api/v1/nodes",
            &json!({"metadata": {"name": "after-dry-runs"}}),
        )
        .await;
    assert_eq!(real.code, 201);
    let first = watch
        .next(Duration::from_secs(10))
        .await
        .expect("the real write's event");
    assert_eq!(first.object["metadata"]["name"], "after-dry-runs");
    // Counting revisions needs a store this server owns: on an etcd that
    // other tests' servers write to at once (MUBE_E2E_ETCD), they take
    // revisions too, and only the checks above hold.
    if std::env::var_os("MUBE_E2E_ETCD").is_none() {
        let (from, to) = (before.0.parse::<u64>().unwrap(), mube_e2e::rv(&real.body));
        assert_eq!(
            (to - from - 1) as usize,
            api.objects_written_between(from, to).await,
            "a dry run used a revision"
        );
    }
}

/// The example manifest (`manifests/node.yaml`, node mube-node-2), the same
/// with its pool label edited, and a manifest of a node that does not exist,
/// as paths under `dir`.
fn manifests(dir: &std::path::Path) -> (String, String, String) {
    let original = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/node.yaml");
    let edited = dir.join("edited.yaml");
    std::fs::write(
        &edited,
        std::fs::read_to_string(&original)
            .unwrap()
            .replace("pool: example", "pool: edited"),
    )
    .unwrap();
    let fresh = dir.join("fresh.yaml");
    std::fs::write(
        &fresh,
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-fresh\n  labels:\n    a: b\n",
    )
    .unwrap();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    (path(&original), path(&edited), path(&fresh))
}

#[cfg_attr(not(has_kubectl), ignore = "kubectl not found on PATH")]
#[tokio::test]
async fn server_dry_runs_of_every_write_command_change_nothing() {
    let (server, api, k) = cluster(&["node-a", "node-b"], "60s").await;
    assert_eq!(api.heartbeat("node-a").await.code, 202);
    let dir = server.dir.path();
    let (manifest, edited, fresh) = manifests(dir);
    let (manifest, edited, fresh) = (manifest.as_str(), edited.as_str(), fresh.as_str());
    k.ok(&["apply", "-f", manifest]);
    let replaced = dir.join("replaced.json");
    let mut node_a: Value =
        serde_json::from_str(&k.ok(&["get", "node", "node-a", "-o", "json"])).unwrap();
    node_a["metadata"]["labels"] = json!({"replaced": "yes"});
    std::fs::write(&replaced, node_a.to_string()).unwrap();
    let replaced = replaced.to_str().unwrap();

    let before = nodes_snapshot(&api).await;
    let mut watch = api
        .watch("/api/v1/nodes", &format!("resourceVersion={}", before.0))
        .await;
    let dry = "--dry-run=server";
    let commands: Vec<Vec<&str>> = vec![
        vec!["label", "node", "node-a", "env=prod", dry],
        vec!["label", "node", "--all", "fleet=x", dry],
        vec!["annotate", "node", "node-a", "note=hello", dry],
        vec!["apply", "-f", edited, dry],
        vec!["apply", "-f", fresh, dry],
        vec!["create", "-f", fresh, dry],
        vec!["replace", "-f", replaced, dry],
        vec![
            "patch",
            "node",
            "node-a",
            "--type",
            "merge",
            "-p",
            r#"{"metadata":{"labels":{"m":"1"}}}"#,
            dry,
        ],
        vec![
            "patch",
            "node",
            "node-a",
            "--type",
            "json",
            "-p",
            r#"[{"op":"add","path":"/metadata/labels","value":{"j":"2"}}]"#,
            dry,
        ],
        vec![
            "patch",
            "node",
            "node-a",
            "-p",
            r#"{"spec":{"unschedulable":true}}"#,
            dry,
        ],
        vec![
            "patch",
            "node",
            "node-a",
            "--subresource=status",
            "--type",
            "merge",
            "-p",
            r#"{"status":{"capacity":{"pods":"7"}}}"#,
            dry,
        ],
        vec!["cordon", "node-a", dry],
        vec!["delete", "node", "node-b", dry],
        vec!["delete", "-f", manifest, dry],
    ];
    for args in &commands {
        let (code, out, err) = k.run(args);
        // kubectl before 1.28 has no --subresource on patch.
        if code != 0 && err.contains("unknown flag: --subresource") {
            continue;
        }
        assert_eq!(code, 0, "kubectl {args:?} failed:\n{err}\n{out}");
        // `kubectl patch` prints no dry-run suffix (kubectl's own choice).
        if args[0] != "patch" {
            assert!(out.contains("(server dry run)"), "kubectl {args:?}: {out}");
        }
    }
    // A dry run still checks: an existing name is refused, a bad object too.
    let (code, _, err) = k.run(&["create", "-f", manifest, dry]);
    assert_ne!(code, 0);
    assert!(err.contains("AlreadyExists"), "{err}");
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: Bad_Name\n",
    )
    .unwrap();
    let (code, _, err) = k.run(&["apply", "-f", bad.to_str().unwrap(), dry]);
    assert_ne!(code, 0);
    assert!(err.contains("is invalid"), "{err}");

    assert_unchanged(&api, &before, &mut watch).await;
}

#[cfg_attr(not(has_kubectl), ignore = "kubectl not found on PATH")]
#[tokio::test]
async fn diff_shows_the_change_with_its_exit_code_and_changes_nothing() {
    let (server, api, k) = cluster(&["node-a"], "60s").await;
    let (manifest, edited, fresh) = manifests(server.dir.path());
    k.ok(&["apply", "-f", &manifest]);
    let before = nodes_snapshot(&api).await;
    let mut watch = api
        .watch("/api/v1/nodes", &format!("resourceVersion={}", before.0))
        .await;

    let (code, out, err) = k.run(&["diff", "-f", &manifest]);
    assert_eq!(code, 0, "no difference: exit 0\n{out}\n{err}");
    assert_eq!(out.trim(), "");

    let (code, out, err) = k.run(&["diff", "-f", &edited]);
    assert_eq!(code, 1, "a difference: exit 1\n{out}\n{err}");
    assert!(out.contains("-    mube.io/pool: example"), "{out}");
    assert!(out.contains("+    mube.io/pool: edited"), "{out}");

    let (code, out, err) = k.run(&["diff", "-f", &fresh]);
    assert_eq!(code, 1, "a new object: exit 1\n{out}\n{err}");
    assert!(out.contains("+  name: node-fresh"), "{out}");

    assert_unchanged(&api, &before, &mut watch).await;
}

#[cfg_attr(not(has_kubectl), ignore = "kubectl not found on PATH")]
#[tokio::test]
async fn delete_options_kubectl_sends_are_honoured_or_refused() {
    let (_server, api, k) = cluster(&["node-a", "node-b", "node-c", "node-d"], "60s").await;
    // --cascade=orphan: Nodes are not garbage-collected (nothing owned by
    // one is watched), so the policy means what Background means.
    k.ok(&["delete", "node", "node-a", "--cascade=orphan"]);
    assert_eq!(api.get("/api/v1/nodes/node-a").await.code, 404);
    // A finalizer holds an object until it is removed.
    k.ok(&["create", "configmap", "held"]);
    k.ok(&[
        "patch",
        "configmap",
        "held",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/hold"]}}"#,
    ]);
    k.ok(&["delete", "configmap", "held", "--wait=false"]);
    let held = api
        .get("/api/v1/namespaces/default/configmaps/held")
        .await
        .body;
    assert!(held["metadata"]["deletionTimestamp"].is_string(), "{held}");
    k.ok(&[
        "patch",
        "configmap",
        "held",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    assert_eq!(
        api.get("/api/v1/namespaces/default/configmaps/held")
            .await
            .code,
        404
    );
    // --now and --grace-period: nodes have no graceful deletion; removed at once.
    k.ok(&["delete", "node", "node-b", "--now"]);
    k.ok(&["delete", "node", "node-c", "--grace-period=0", "--force"]);
    k.ok(&[
        "delete",
        "node",
        "node-d",
        "--cascade=background",
        "--wait=false",
    ]);
    assert_eq!(api.get("/api/v1/nodes").await.body["items"], json!([]));
}

/// `kubectl explain` renders the schemas served at `/openapi/v3` (generated
/// from k8s-openapi's types), field paths and `--recursive` included, and
/// `--validate=strict` refuses a field the schema does not have, as with
/// Kubernetes: kubectl sees in the same document that the server validates
/// fields itself and asks it to, so nothing is created.
#[cfg_attr(not(has_kubectl), ignore = "kubectl not found on PATH")]
#[tokio::test]
async fn explain_and_strict_validation_use_the_served_schemas() {
    let (server, api, k) = cluster(&["node-a"], "60s").await;

    let conditions = k.ok(&["explain", "nodes.status.conditions"]);
    assert!(conditions.contains("KIND:       Node"), "{conditions}");
    assert!(
        conditions.contains("FIELD: conditions <[]NodeCondition>"),
        "{conditions}"
    );
    for field in ["lastHeartbeatTime", "lastTransitionTime", "reason"] {
        assert!(conditions.contains(field), "{field} missing:\n{conditions}");
    }
    assert!(
        conditions.contains("type\t<string> -required-"),
        "{conditions}"
    );

    let leases = k.ok(&["explain", "leases", "--recursive"]);
    assert!(
        leases.contains("GROUP:      coordination.k8s.io"),
        "{leases}"
    );
    for field in [
        "holderIdentity\t<string>",
        "renewTime\t<string>",
        "leaseDurationSeconds\t<integer>",
        "managedFields\t<[]ManagedFieldsEntry>",
    ] {
        assert!(leases.contains(field), "{field} missing:\n{leases}");
    }
    // A path the schema does not have is the client's error, as kubectl words it.
    let (code, _, err) = k.run(&["explain", "nodes.spec.nosuchfield"]);
    assert_ne!(code, 0);
    assert!(err.contains("nosuchfield"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("lease.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {name: strict, namespace: default}\nspec: {holderIdentity: x, bogus: 1}\n",
    )
    .unwrap();
    let path = manifest.to_str().unwrap();
    let (code, _, err) = k.run(&["create", "--validate=strict", "-f", path]);
    assert_ne!(code, 0);
    assert!(
        err.contains(r#"unknown field "spec.bogus""#),
        "kubectl must refuse the unknown field: {err}"
    );
    let lease = "/apis/coordination.k8s.io/v1/namespaces/default/leases/strict";
    assert_eq!(api.get(lease).await.code, 404, "nothing may be created");
    // Without validation the same manifest goes in, stored as Kubernetes'
    // Lease type has it: the unknown field is dropped.
    k.ok(&["create", "--validate=false", "-f", path]);
    let stored = api.get(lease).await;
    assert_eq!(stored.code, 200);
    assert_eq!(stored.body["spec"], json!({"holderIdentity": "x"}));
    drop(server);
}

/// `kubectl apply --server-side` as Kubernetes answers it: it creates and
/// updates, records each manager in managedFields (shown with
/// `--show-managed-fields`), refuses a field another manager owns with
/// Kubernetes' conflict message, takes it with `--force-conflicts`, and
/// removes a field its manager stops applying once nobody owns it. A field
/// set by an ordinary write (`kubectl label`) is that writer's, and
/// client-side `kubectl apply` keeps working beside it.
#[cfg_attr(not(has_kubectl), ignore = "kubectl not found on PATH")]
#[tokio::test]
async fn server_side_apply_with_managers_conflicts_and_force() {
    let (_server, api, k) = cluster(&["node-a"], "60s").await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = |file: &str, labels: &str, spec: &str| -> String {
        let path = dir.path().join(file);
        std::fs::write(
            &path,
            format!("apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: ssa\n  namespace: default\n  labels: {{{labels}}}\nspec: {{{spec}}}\n"),
        )
        .unwrap();
        path.to_str().unwrap().to_string()
    };
    let path = "/apis/coordination.k8s.io/v1/namespaces/default/leases/ssa";
    let managers = |lease: &Value| -> Vec<(String, String)> {
        lease["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["manager"].as_str().unwrap().to_string(),
                    m["operation"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };

    let first = manifest(
        "a.yaml",
        "app: web, tier: front",
        "holderIdentity: alice, leaseDurationSeconds: 30",
    );
    let out = k.ok(&["apply", "--server-side", "-f", &first]);
    assert!(
        out.contains("lease.coordination.k8s.io/ssa serverside-applied"),
        "{out}"
    );
    let lease = api.get(path).await.body;
    assert_eq!(
        managers(&lease),
        [("kubectl".to_string(), "Apply".to_string())]
    );
    let fields = &lease["metadata"]["managedFields"][0]["fieldsV1"];
    assert_eq!(
        fields,
        &json!({"f:metadata": {"f:labels": {"f:app": {}, "f:tier": {}}},
                "f:spec": {"f:holderIdentity": {}, "f:leaseDurationSeconds": {}}})
    );
    let shown = k.ok(&["get", "lease", "ssa", "-o", "yaml", "--show-managed-fields"]);
    assert!(
        shown.contains("manager: kubectl") && shown.contains("operation: Apply"),
        "{shown}"
    );
    let hidden = k.ok(&["get", "lease", "ssa", "-o", "yaml"]);
    assert!(!hidden.contains("managedFields"), "{hidden}");

    // Another manager wants a different holder: a conflict, nothing changes.
    let theirs = manifest("b.yaml", "app: web", "holderIdentity: bob");
    let (code, _, err) = k.run(&[
        "apply",
        "--server-side",
        "--field-manager=other",
        "-f",
        &theirs,
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains(
            r#"Apply failed with 1 conflict: conflict with "kubectl": .spec.holderIdentity"#
        ),
        "{err}"
    );
    assert_eq!(api.get(path).await.body["spec"]["holderIdentity"], "alice");
    k.ok(&[
        "apply",
        "--server-side",
        "--field-manager=other",
        "--force-conflicts",
        "-f",
        &theirs,
    ]);
    let lease = api.get(path).await.body;
    assert_eq!(lease["spec"]["holderIdentity"], "bob");
    let kubectl_fields = &lease["metadata"]["managedFields"][0]["fieldsV1"];
    assert!(
        kubectl_fields.pointer("/f:spec/f:holderIdentity").is_none(),
        "{lease}"
    );

    // kubectl stops applying the labels: `tier` is nobody's and goes,
    // `app` is still applied by `other` and stays.
    let fewer = manifest("c.yaml", "", "leaseDurationSeconds: 30");
    k.ok(&["apply", "--server-side", "-f", &fewer]);
    let lease = api.get(path).await.body;
    assert_eq!(lease["metadata"]["labels"], json!({"app": "web"}));
    assert_eq!(
        lease["spec"],
        json!({"holderIdentity": "bob", "leaseDurationSeconds": 30})
    );

    // An ordinary write owns what it set, with the version it used.
    k.ok(&["label", "lease", "ssa", "app=api", "--overwrite"]);
    let (code, _, err) = k.run(&[
        "apply",
        "--server-side",
        "--field-manager=other",
        "-f",
        &theirs,
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains(
            r#"conflict with "kubectl-label" using coordination.k8s.io/v1: .metadata.labels.app"#
        ),
        "{err}"
    );

    // Client-side apply still works beside it.
    let other = dir.path().join("csa.yaml");
    std::fs::write(&other, "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {name: csa, namespace: default}\nspec: {holderIdentity: a}\n").unwrap();
    let out = k.ok(&["apply", "-f", other.to_str().unwrap()]);
    assert!(out.contains("created"), "{out}");
    std::fs::write(&other, "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {name: csa, namespace: default}\nspec: {holderIdentity: b}\n").unwrap();
    let out = k.ok(&["apply", "-f", other.to_str().unwrap()]);
    assert!(out.contains("configured"), "{out}");
}

/// ConfigMap, the kind added as the example of "one file and one line":
/// kubectl finds it through discovery, prints the server's Table, explains
/// its schema, applies it both ways, and gets Kubernetes' validation.
#[cfg_attr(not(has_kubectl), ignore = "kubectl not found on PATH")]
#[tokio::test]
async fn configmaps_are_served_like_any_kind() {
    let (_server, api, k) = cluster(&["node-a"], "60s").await;
    let resources = k.ok(&["api-resources"]);
    assert!(
        table(&resources)
            .iter()
            .any(|r| r.first().map(String::as_str) == Some("configmaps")
                && r.get(1).map(String::as_str) == Some("cm")),
        "{resources}"
    );
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("cm.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app, namespace: default}\ndata: {a: \"1\", b: \"2\"}\n",
    )
    .unwrap();
    let path = manifest.to_str().unwrap();
    assert!(k
        .ok(&["apply", "-f", path])
        .contains("configmap/app created"));
    let rows = table(&k.ok(&["get", "cm"]));
    assert_eq!(rows[0], ["NAME", "DATA", "AGE"]);
    assert_eq!(rows[1][..2], ["app".to_string(), "2".to_string()]);
    assert!(k
        .ok(&["apply", "--server-side", "--force-conflicts", "-f", path])
        .contains("serverside-applied"));
    let explained = k.ok(&["explain", "configmap.data"]);
    assert!(
        explained.contains("FIELD: data <map[string]string>"),
        "{explained}"
    );

    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bad, namespace: default}\ndata: {\"a b\": \"1\"}\n",
    )
    .unwrap();
    let (code, _, err) = k.run(&["create", "-f", path]);
    assert_ne!(code, 0);
    assert!(
        err.contains("ConfigMap \"bad\" is invalid: data[a b]: Invalid value"),
        "{err}"
    );
    assert_eq!(
        api.get("/api/v1/namespaces/default/configmaps/bad")
            .await
            .code,
        404
    );

    // kubectl's generators send protobuf; the server reads it.
    assert!(k
        .ok(&["create", "configmap", "lit", "--from-literal=k=v"])
        .contains("configmap/lit created"));
    assert!(k
        .ok(&["create", "secret", "generic", "s", "--from-literal=p=q"])
        .contains("secret/s created"));
    let cm = api.get("/api/v1/namespaces/default/configmaps/lit").await;
    assert_eq!(cm.body["data"]["k"], "v");
    let secret = api.get("/api/v1/namespaces/default/secrets/s").await;
    assert_eq!(secret.body["data"]["p"], "cQ==");
    assert_eq!(secret.body["type"], "Opaque");
}

/// With TLS on, the kubeconfig the server writes points at https and
/// carries the cluster CA: kubectl trusts it as is, and a kubeconfig
/// without the CA is refused by kubectl's certificate check.
#[cfg_attr(not(has_kubectl), ignore = "kubectl not found on PATH")]
#[tokio::test]
async fn kubectl_speaks_tls_through_the_written_kubeconfig() {
    let server = ApiServer::start(Options {
        nodes: vec![node("node-a")],
        tls: true,
        ..Default::default()
    })
    .await;
    let k = Kubectl::new(&server);
    let rows = table(&k.ok(&["get", "nodes"]));
    assert_eq!(rows[1][0], "node-a");
    let explained = k.ok(&["explain", "leases.spec.holderIdentity"]);
    assert!(explained.contains("holderIdentity"), "{explained}");

    let text = std::fs::read_to_string(&k.kubeconfig).unwrap();
    let stripped: String = text
        .lines()
        .filter(|l| !l.contains("certificate-authority-data"))
        .map(|l| format!("{l}\n"))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let untrusting = Kubectl {
        kubeconfig: dir.path().join("kubeconfig"),
        cache: tempfile::tempdir().unwrap(),
    };
    std::fs::write(&untrusting.kubeconfig, stripped).unwrap();
    let (code, _, err) = untrusting.run(&["get", "nodes"]);
    assert_ne!(code, 0);
    assert!(err.contains("certificate"), "{err}");
}

/// `kubectl auth whoami` and `auth can-i`, as the admin and (through
/// impersonation) as a user of a group bound to `view`.
#[tokio::test]
async fn auth_whoami_and_can_i_answer_for_the_caller() {
    let (_server, _api, k) = cluster(&["node-a"], "60s").await;
    let me = k.ok(&["auth", "whoami", "-o", "json"]);
    let me: Value = serde_json::from_str(&me).unwrap();
    assert_eq!(me["status"]["userInfo"]["username"], "system:admin");
    assert!(me["status"]["userInfo"]["groups"]
        .as_array()
        .unwrap()
        .contains(&json!("system:masters")));
    assert_eq!(k.ok(&["auth", "can-i", "delete", "nodes"]).trim(), "yes");
    let as_viewer = ["--as", "viewer", "--as-group", "viewers"];
    let (code, out, _) =
        k.run(&[&["auth", "can-i", "list", "configmaps"][..], &as_viewer].concat());
    assert_eq!((code, out.trim()), (1, "no"));
    // As users grant roles: kubectl's generator (sent as protobuf).
    assert!(k
        .ok(&[
            "create",
            "clusterrolebinding",
            "viewers",
            "--clusterrole=view",
            "--group=viewers"
        ])
        .contains("clusterrolebinding.rbac.authorization.k8s.io/viewers created"));
    let (code, out, _) =
        k.run(&[&["auth", "can-i", "list", "configmaps"][..], &as_viewer].concat());
    assert_eq!((code, out.trim()), (0, "yes"));
    let (code, out, _) =
        k.run(&[&["auth", "can-i", "delete", "configmaps"][..], &as_viewer].concat());
    assert_eq!((code, out.trim()), (1, "no"));
    let (code, _, err) = k.run(&[&["delete", "configmap", "nothing"][..], &as_viewer].concat());
    assert_ne!(code, 0);
    assert!(
        err.contains("configmaps \"nothing\" is forbidden: User \"viewer\" cannot delete resource \"configmaps\" in API group \"\" in the namespace \"default\""),
        "{err}"
    );
    let who = k.ok(&[&["auth", "whoami", "-o", "json"][..], &as_viewer].concat());
    let who: Value = serde_json::from_str(&who).unwrap();
    assert_eq!(who["status"]["userInfo"]["username"], "viewer");
}

/// Namespaces as Kubernetes has them: the system ones, 404 for content in
/// a missing one, and deleting one deletes what it holds.
#[cfg_attr(not(has_kubectl), ignore = "kubectl not found on PATH")]
#[tokio::test]
async fn namespaces_hold_their_objects_and_go_with_them() {
    let (_server, api, k) = cluster(&["node-a"], "60s").await;
    let names: Vec<String> = table(&k.ok(&["get", "namespaces"]))[1..]
        .iter()
        .map(|r| format!("{} {}", r[0], r[1]))
        .collect();
    assert_eq!(
        names,
        [
            "default Active",
            "kube-node-lease Active",
            "kube-public Active",
            "kube-system Active"
        ]
    );
    let (code, _, err) = k.run(&[
        "create",
        "configmap",
        "c",
        "-n",
        "nope",
        "--from-literal=a=b",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("namespaces \"nope\" not found"), "{err}");
    assert!(k
        .ok(&["create", "namespace", "team"])
        .contains("namespace/team created"));
    k.ok(&[
        "create",
        "configmap",
        "c",
        "-n",
        "team",
        "--from-literal=a=b",
    ]);
    // Only a delete marks a namespace for deletion: a patch cannot.
    k.ok(&[
        "patch",
        "namespace",
        "team",
        "--type",
        "merge",
        "-p",
        r#"{"metadata":{"deletionTimestamp":"2020-01-01T00:00:00Z"}}"#,
    ]);
    let team = api.get("/api/v1/namespaces/team").await.body;
    assert!(team["metadata"]["deletionTimestamp"].is_null(), "{team}");
    assert_eq!(team["status"]["phase"], "Active");
    assert_eq!(
        api.get("/api/v1/namespaces/team/configmaps/c").await.code,
        200
    );
    k.ok(&[
        "create",
        "role",
        "r",
        "-n",
        "team",
        "--verb=get",
        "--resource=pods",
    ]);
    // kubectl waits until the namespace is gone, content first.
    assert!(k
        .ok(&["delete", "namespace", "team", "--timeout=10s"])
        .contains("namespace \"team\" deleted"));
    assert_eq!(api.get("/api/v1/namespaces/team").await.code, 404);
    assert_eq!(
        api.get("/api/v1/namespaces/team/configmaps/c").await.code,
        404
    );
    assert_eq!(
        api.get("/apis/rbac.authorization.k8s.io/v1/namespaces/team/roles/r")
            .await
            .code,
        404
    );
    let (code, _, err) = k.run(&["delete", "namespace", "default"]);
    assert_ne!(code, 0);
    assert!(err.contains("this namespace may not be deleted"), "{err}");
}

/// Pods: what `kubectl run` sends is accepted with Kubernetes' defaults, a
/// field mube does not run is refused by name, and a pod is bound once.
#[cfg_attr(not(has_kubectl), ignore = "kubectl not found on PATH")]
#[tokio::test]
async fn pods_are_validated_defaulted_and_bound_once() {
    let (server, api, k) = cluster(&["node-a"], "60s").await;
    assert!(k
        .ok(&[
            "run",
            "hello",
            "--image=mube.local/busybox",
            "--restart=Never",
            "--",
            "sh",
            "-c",
            "echo hi"
        ])
        .contains("pod/hello created"));
    let pod = api.get("/api/v1/namespaces/default/pods/hello").await.body;
    assert_eq!(pod["status"]["phase"], "Pending");
    assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 30);
    // Untagged, but mube.local/ images exist only where imported.
    assert_eq!(
        pod["spec"]["containers"][0]["imagePullPolicy"],
        "IfNotPresent"
    );
    let rows = table(&k.ok(&["get", "pods", "-o", "wide"]));
    assert_eq!(rows[1][..3], ["hello", "0/1", "Pending"]);
    assert_eq!(rows[1][6], "<none>", "not bound yet: {rows:?}");

    // Only pods/binding assigns a node; an update may not.
    let (code, _, err) = k.run(&[
        "patch",
        "pod",
        "hello",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"nodeName":"node-a"}}"#,
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("a pod is assigned to a node through pods/binding"),
        "{err}"
    );
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "hello"},
                         "target": {"kind": "Node", "name": "node-a"}});
    let bound = api
        .post("/api/v1/namespaces/default/pods/hello/binding", &binding)
        .await;
    assert_eq!(bound.code, 201, "{}", bound.body);
    assert_eq!(bound.body["status"], "Success");
    let again = api
        .post("/api/v1/namespaces/default/pods/hello/binding", &binding)
        .await;
    assert_eq!(again.code, 409, "{}", again.body);
    assert_eq!(
        again.body["message"],
        "Operation cannot be fulfilled on pods/binding \"hello\": pod hello is already assigned to node \"node-a\""
    );
    let rows = table(&k.ok(&["get", "pods", "-o", "wide"]));
    assert_eq!(rows[1][6], "node-a");
    let pod = api.get("/api/v1/namespaces/default/pods/hello").await.body;
    assert_eq!(pod["status"]["conditions"][0]["type"], "PodScheduled");
    let (code, _, err) = k.run(&[
        "patch",
        "pod",
        "hello",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"nodeName":"elsewhere"}}"#,
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("spec.nodeName: Forbidden: pod is already assigned to node \"node-a\""),
        "{err}"
    );

    let file = server.dir.path().join("pod.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: v}\nspec:\n  volumes: [{name: d, emptyDir: {}}]\n  containers: [{name: c, image: i, volumeMounts: [{name: d, mountPath: /d}]}]\n",
    )
    .unwrap();
    let (code, _, err) = k.run(&["create", "-f", file.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains("spec.volumes: Forbidden: not supported by mube"),
        "{err}"
    );
    assert!(
        err.contains("spec.containers[0].volumeMounts: Forbidden: not supported by mube"),
        "{err}"
    );
    assert_eq!(api.get("/api/v1/namespaces/default/pods/v").await.code, 404);
    // Quantities are checked: negative, or not one at all, or too large.
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: q}\nspec:\n  containers: [{name: c, image: i, resources: {requests: {cpu: \"-1\", memory: \"1e40\"}, limits: {cpu: lots}}}]\n",
    )
    .unwrap();
    let (code, _, err) = k.run(&["create", "-f", file.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("spec.containers[0].resources.requests[cpu]: Invalid value: \"-1\": must be greater than or equal to 0"), "{err}");
    assert!(
        err.contains("spec.containers[0].resources.requests[memory]: Invalid value"),
        "{err}"
    );
    assert!(
        err.contains("spec.containers[0].resources.limits[cpu]: Invalid value"),
        "{err}"
    );
}

/// What kubectl sends for Deployments, version by version: `create
/// deployment` (protobuf), `scale` (the scale subresource), `set image` (a
/// strategic merge patch by container name), and the table of `get
/// deploy`. No controller runs here: this is the API's side.
#[cfg_attr(not(has_kubectl), ignore = "kubectl not found on PATH")]
#[tokio::test]
async fn deployments_take_what_kubectl_sends() {
    let (_server, api, k) = cluster(&["node-a"], "60s").await;
    k.ok(&[
        "create",
        "deployment",
        "web",
        "--image=mube.local/busybox",
        "--replicas=2",
        "--",
        "sleep",
        "1d",
    ]);
    let path = "/apis/apps/v1/namespaces/default/deployments/web";
    let d = api.get(path).await.body;
    assert_eq!(d["spec"]["replicas"], 2, "{d}");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["command"],
        json!(["sleep", "1d"])
    );
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
    k.ok(&["scale", "deployment/web", "--replicas=5"]);
    assert_eq!(api.get(path).await.body["spec"]["replicas"], 5);
    let scale: Value =
        serde_json::from_str(&k.ok(&["get", "--raw", &format!("{path}/scale")])).unwrap();
    assert_eq!(
        (scale["kind"].as_str(), scale["spec"]["replicas"].as_i64()),
        (Some("Scale"), Some(5))
    );
    assert_eq!(scale["status"]["selector"], "app=web");
    k.ok(&[
        "set",
        "image",
        "deployment/web",
        "busybox=mube.local/busybox:v2",
    ]);
    let d = api.get(path).await.body;
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "mube.local/busybox:v2"
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["command"],
        json!(["sleep", "1d"])
    );
    assert_eq!(d["metadata"]["generation"], 3, "a spec change counts: {d}");
    let rows = table(&k.ok(&["get", "deploy", "-o", "wide"]));
    assert_eq!(
        &rows[0][..5],
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    );
    assert_eq!(&rows[1][..2], ["web", "0/5"]);
    let (code, _, err) = k.run(&["scale", "deployment/web", "--replicas=-1"]);
    assert_ne!(code, 0);
    assert!(err.contains("replicas"), "{err}");
}

/// The status of a refused kubectl command: its stderr.
fn refused(k: &Kubectl, args: &[&str]) -> String {
    let (code, out, err) = k.run(args);
    assert_ne!(code, 0, "kubectl {args:?} should fail: {out}");
    err
}

#[cfg_attr(not(has_kubectl), ignore = "kubectl not found on PATH")]
#[tokio::test]
async fn services_get_a_cluster_ip_and_node_ports_once_and_give_them_back() {
    let (mut server, api, k) = cluster(&["node-a"], "60s").await;
    // The API server's own Service, and its slice.
    let rows = table(&k.ok(&["get", "svc", "kubernetes"]));
    assert_eq!(
        rows[0],
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ]
    );
    assert_eq!(
        &rows[1][..5],
        ["kubernetes", "ClusterIP", "10.96.0.1", "<none>", "443/TCP"]
    );
    let slice = api
        .get("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes")
        .await
        .body;
    let port = server.url().rsplit(':').next().unwrap().to_string();
    assert_eq!(slice["ports"][0]["port"].to_string(), port, "{slice}");
    assert_eq!(
        slice["endpoints"][0]["addresses"][0], "127.0.0.1",
        "{slice}"
    );

    // kubectl's generators: expose (JSON) and create service (protobuf).
    k.ok(&[
        "create",
        "deployment",
        "web",
        "--image=mube.local/busybox",
        "--",
        "sleep",
        "1d",
    ]);
    k.ok(&[
        "expose",
        "deployment",
        "web",
        "--port",
        "80",
        "--target-port",
        "8080",
    ]);
    let web = api
        .get("/api/v1/namespaces/default/services/web")
        .await
        .body;
    let ip = web["spec"]["clusterIP"].as_str().unwrap().to_string();
    assert!(ip.starts_with("10.96.") && ip != "10.96.0.1", "{web}");
    assert_eq!(web["spec"]["clusterIPs"], json!([ip]));
    assert_eq!(web["spec"]["selector"], json!({"app": "web"}));
    assert_eq!(web["spec"]["ports"][0]["targetPort"], 8080);
    k.ok(&[
        "create",
        "service",
        "nodeport",
        "np",
        "--tcp=80:8080",
        "--node-port=30080",
    ]);
    k.ok(&[
        "create",
        "service",
        "clusterip",
        "fixed",
        "--tcp=81:81",
        "--clusterip=10.96.7.7",
    ]);
    k.ok(&[
        "create",
        "service",
        "clusterip",
        "headless",
        "--tcp=82:82",
        "--clusterip=None",
    ]);
    let rows = table(&k.ok(&["get", "svc", "np", "fixed", "headless"]));
    assert_eq!(
        &rows[1][1..5],
        ["NodePort", rows[1][2].as_str(), "<none>", "80:30080/TCP"]
    );
    assert_eq!(
        &rows[2][1..5],
        ["ClusterIP", "10.96.7.7", "<none>", "81/TCP"]
    );
    assert_eq!(&rows[3][1..3], ["ClusterIP", "None"]);

    // Taken, outside the range, changed: 422 with the field, as Kubernetes.
    let cases: [(&[&str], &str); 5] = [
        (
            &["create", "service", "clusterip", "again", "--tcp=80:80", "--clusterip=10.96.7.7"],
            "spec.clusterIPs: Invalid value: []string{\"10.96.7.7\"}: failed to allocate IP 10.96.7.7: provided IP is already allocated",
        ),
        (
            &["create", "service", "clusterip", "outside", "--tcp=80:80", "--clusterip=10.0.0.1"],
            "The range of valid IPs is 10.96.0.0/16",
        ),
        (
            &["create", "service", "nodeport", "np2", "--tcp=80:80", "--node-port=30080"],
            "spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated",
        ),
        (
            &["create", "service", "nodeport", "np3", "--tcp=80:80", "--node-port=80"],
            "The range of valid ports is 30000-32767",
        ),
        (
            &["patch", "svc", "fixed", "-p", r#"{"spec":{"clusterIP":"10.96.7.8","clusterIPs":["10.96.7.8"]}}"#],
            "may not change once set",
        ),
    ];
    for (args, expected) in cases {
        let err = refused(&k, args);
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    let r = api
        .post(
            "/api/v1/namespaces/default/services",
            &json!({"metadata": {"name": "bad"}, "spec": {"type": "Weird", "ports": [{"port": 0}]}}),
        )
        .await;
    assert_eq!(r.code, 422, "{}", r.body);
    let causes = mube_e2e::cause_fields(&r.body);
    // (targetPort defaults to the port, as in Kubernetes, and is as wrong.)
    assert_eq!(
        causes,
        [
            "spec.type",
            "spec.ports[0].port",
            "spec.ports[0].targetPort"
        ],
        "{}",
        r.body
    );

    // A change of type gives node ports and takes them back; an apply
    // without the allocated values keeps them.
    k.ok(&[
        "patch",
        "svc",
        "web",
        "-p",
        r#"{"spec":{"type":"NodePort"}}"#,
    ]);
    let node_port = api
        .get("/api/v1/namespaces/default/services/web")
        .await
        .body["spec"]["ports"][0]["nodePort"]
        .clone();
    assert!(
        node_port
            .as_u64()
            .is_some_and(|p| (30000..=32767).contains(&p)),
        "{node_port}"
    );
    k.ok(&[
        "patch",
        "svc",
        "web",
        "-p",
        r#"{"spec":{"type":"ClusterIP"}}"#,
    ]);
    let web = api
        .get("/api/v1/namespaces/default/services/web")
        .await
        .body;
    assert!(web["spec"]["ports"][0].get("nodePort").is_none(), "{web}");
    assert_eq!(web["spec"]["clusterIP"], ip.as_str());
    let manifest = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "applied"},
        "spec": {"type": "NodePort", "selector": {"app": "web"}, "ports": [{"port": 80}]}});
    let file = k.cache.path().join("applied.json");
    std::fs::write(&file, manifest.to_string()).unwrap();
    k.ok(&["apply", "-f", file.to_str().unwrap()]);
    let first = api
        .get("/api/v1/namespaces/default/services/applied")
        .await
        .body;
    k.ok(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        file.to_str().unwrap(),
    ]);
    let second = api
        .get("/api/v1/namespaces/default/services/applied")
        .await
        .body;
    assert_eq!(first["spec"]["clusterIP"], second["spec"]["clusterIP"]);
    assert_eq!(
        first["spec"]["ports"][0]["nodePort"],
        second["spec"]["ports"][0]["nodePort"]
    );

    // A dry run holds nothing; a delete gives its address and port back.
    k.ok(&[
        "create",
        "service",
        "clusterip",
        "dry",
        "--tcp=80:80",
        "--clusterip=10.96.9.9",
        "--dry-run=server",
    ]);
    k.ok(&["delete", "svc", "np", "fixed"]);
    let back = |name: &'static str| async move {
        // The allocator hears of the delete through its watch: poll.
        for _ in 0..50 {
            let r = api
                .post(
                    "/api/v1/namespaces/default/services",
                    &json!({"metadata": {"name": name}, "spec": {"type": "NodePort", "clusterIP": "10.96.7.7",
                            "ports": [{"port": 80, "nodePort": 30080}]}}),
                )
                .await;
            if r.code == 201 {
                return;
            }
            assert_eq!(r.code, 422, "{}", r.body);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("10.96.7.7 and 30080 were never free again");
    };
    back("reused").await;
    k.ok(&[
        "create",
        "service",
        "clusterip",
        "dry",
        "--tcp=80:80",
        "--clusterip=10.96.9.9",
    ]);

    // A restarted server knows what is held.
    assert!(server.terminate().success());
    server.restart().await;
    let err = refused(
        &k,
        &[
            "create",
            "service",
            "clusterip",
            "after",
            "--tcp=80:80",
            "--clusterip=10.96.7.7",
        ],
    );
    assert!(err.contains("provided IP is already allocated"), "{err}");
    let rows = table(&k.ok(&["get", "svc", "-o", "wide"]));
    assert_eq!(rows[0].last().map(String::as_str), Some("SELECTOR"));
    assert_eq!(rows.len(), 1 + 6, "{rows:?}");
}

/// The example CRD (`examples/nodegroup/crd.yaml`): what the README shows.
const NODEGROUP_CRD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/nodegroup/crd.yaml"
);

/// Applies the example CRD and waits until it is established.
fn define_nodegroups(k: &Kubectl) {
    k.ok(&["apply", "-f", NODEGROUP_CRD]);
    k.ok(&[
        "wait",
        "--for",
        "condition=established",
        "crd/nodegroups.example.mube.io",
        "--timeout=10s",
    ]);
}

/// `kubectl get ng workers -o jsonpath=PATH`.
fn workers_at(k: &Kubectl, path: &str) -> String {
    k.ok(&["get", "ng", "workers", "-o", &format!("jsonpath={path}")])
}

/// The arguments of `kubectl patch ng workers --type=merge -p PATCH`,
/// after `extra`.
fn patch_workers<'a>(extra: &[&'a str], patch: &'a str) -> Vec<&'a str> {
    let mut args = vec!["patch", "ng", "workers"];
    args.extend_from_slice(extra);
    args.extend(["--type=merge", "-p", patch]);
    args
}

/// Writes `text` to a file in `dir` and returns its path.
fn manifest(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[cfg_attr(not(has_kubectl), ignore = "kubectl not found on PATH")]
// Multi-threaded: a `kubectl get -w` runs while the test writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_are_served_from_their_definition() {
    let (_server, api, k) = cluster(&["node-a"], "60s").await;
    let dir = tempfile::tempdir().unwrap();
    define_nodegroups(&k);
    let crd = &api
        .get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/nodegroups.example.mube.io")
        .await
        .body;
    let conditions = crd["status"]["conditions"].as_array().expect("conditions");
    for want in ["NamesAccepted", "Established"] {
        assert!(
            conditions
                .iter()
                .any(|c| c["type"] == want && c["status"] == "True"),
            "{conditions:?}"
        );
    }
    assert_eq!(crd["status"]["acceptedNames"]["shortNames"], json!(["ng"]));

    // Discovery: the plural, short name, singular and category all work.
    let resources = k.ok(&["api-resources", "--api-group=example.mube.io"]);
    assert!(
        table(&resources).iter().any(|r| r
            == &[
                "nodegroups",
                "ng",
                "example.mube.io/v1",
                "false",
                "NodeGroup"
            ]),
        "{resources}"
    );

    // Create (kubectl's default is Strict validation: unknown fields refused).
    let workers = manifest(&dir, "workers.yaml", "apiVersion: example.mube.io/v1\nkind: NodeGroup\nmetadata:\n  name: workers\n  labels: {tier: core}\nspec:\n  selector: {role: worker}\n");
    let (mut watch, mut lines) = k.follow(&["get", "ng", "-w", "--output-watch-events"]);
    k.ok(&["apply", "-f", &workers]);
    for name in [
        "ng",
        "nodegroup",
        "nodegroups",
        "nodegroups.example.mube.io",
        "mube",
    ] {
        let out = k.ok(&["get", name]);
        assert!(
            out.lines().any(|l| l.starts_with("workers ")),
            "get {name}: {out}"
        );
    }
    // Defaulting from the schema.
    assert_eq!(workers_at(&k, "{.spec.minReady}"), "1");
    assert!(lines
        .wait_for(Duration::from_secs(10), |l| l.starts_with("ADDED")
            && l.contains("workers"))
        .is_some());

    // Printer columns: NAME, then the CRD's.
    let rows = table(&k.ok(&["get", "ng"]));
    assert_eq!(rows[0], ["NAME", "MIN-READY", "READY", "HEALTHY", "AGE"]);
    assert_eq!(&rows[1][..2], ["workers", "1"]);

    // Merge patch, and the watch sees it.
    k.ok(&patch_workers(&[], r#"{"spec":{"minReady":2}}"#));
    assert!(lines
        .wait_for(Duration::from_secs(10), |l| l.starts_with("MODIFIED")
            && l.contains("workers"))
        .is_some());
    assert_eq!(
        workers_at(&k, "{.spec.minReady} {.metadata.generation}"),
        "2 2"
    );

    // A schema violation: 422 with the field path.
    let (code, _, err) = k.run(&patch_workers(&[], r#"{"spec":{"minReady":-1}}"#));
    assert_ne!(code, 0);
    assert!(err.contains(r#"The NodeGroup "workers" is invalid: spec.minReady: Invalid value: -1: spec.minReady in body should be greater than or equal to 0"#), "{err}");
    let bad = api
        .post(
            "/apis/example.mube.io/v1/nodegroups",
            &json!({
        "apiVersion": "example.mube.io/v1", "kind": "NodeGroup", "metadata": {"name": "bad"},
        "spec": {"minReady": "many"}}),
        )
        .await;
    assert_eq!(bad.code, 422, "{}", bad.body);
    assert_eq!(
        mube_e2e::cause_fields(&bad.body),
        ["spec.selector", "spec.minReady"],
        "{}",
        bad.body
    );

    // Pruning: Strict refuses an unknown field, Ignore drops it.
    let extra = manifest(&dir, "extra.yaml", "apiVersion: example.mube.io/v1\nkind: NodeGroup\nmetadata:\n  name: extra\nspec:\n  selector: {role: x}\n  colour: blue\nhint: 1\n");
    let (code, _, err) = k.run(&["create", "-f", &extra]);
    assert_ne!(code, 0);
    assert!(err.contains(r#"unknown field "spec.colour""#), "{err}");
    k.ok(&["create", "-f", &extra, "--validate=false"]);
    let stored = api
        .get("/apis/example.mube.io/v1/nodegroups/extra")
        .await
        .body;
    assert_eq!(
        stored["spec"],
        json!({"selector": {"role": "x"}, "minReady": 1}),
        "{stored}"
    );
    assert!(stored.get("hint").is_none(), "{stored}");

    // Server-side apply, with its field manager, a label selector and pages.
    let edge = manifest(&dir, "edge.yaml", "apiVersion: example.mube.io/v1\nkind: NodeGroup\nmetadata:\n  name: edge\n  labels: {tier: edge}\nspec:\n  selector: {role: edge}\n  minReady: 3\n");
    k.ok(&["apply", "--server-side", "--field-manager=ops", "-f", &edge]);
    let managers = k.ok(&[
        "get",
        "ng",
        "edge",
        "-o",
        "jsonpath={.metadata.managedFields[*].manager}",
    ]);
    assert_eq!(managers, "ops");
    let conflict = manifest(&dir, "edge2.yaml", "apiVersion: example.mube.io/v1\nkind: NodeGroup\nmetadata:\n  name: edge\nspec:\n  selector: {role: edge}\n  minReady: 4\n");
    let (code, _, err) = k.run(&[
        "apply",
        "--server-side",
        "--field-manager=other",
        "-f",
        &conflict,
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("conflict") && err.contains(".spec.minReady"),
        "{err}"
    );
    let rows = table(&k.ok(&["get", "ng", "-l", "tier=edge", "--no-headers"]));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][0], "edge");
    let page = api
        .get("/apis/example.mube.io/v1/nodegroups?limit=2")
        .await
        .body;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let next = page["metadata"]["continue"]
        .as_str()
        .expect("a continue token");
    let rest = api
        .get(&format!(
            "/apis/example.mube.io/v1/nodegroups?limit=2&continue={next}"
        ))
        .await
        .body;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);

    // The status subresource: spec and status apart; generation moves on spec only.
    k.ok(&patch_workers(
        &["--subresource=status"],
        r#"{"status":{"ready":2,"healthy":true},"spec":{"minReady":9}}"#,
    ));
    assert_eq!(
        workers_at(
            &k,
            "{.spec.minReady} {.status.ready} {.metadata.generation}"
        ),
        "2 2 2"
    );
    k.ok(&patch_workers(&[], r#"{"status":{"ready":7}}"#));
    assert_eq!(
        workers_at(&k, "{.status.ready} {.metadata.generation}"),
        "2 2"
    );
    let rows = table(&k.ok(&["get", "ng", "workers", "--no-headers"]));
    assert_eq!(&rows[0][..4], ["workers", "2", "2", "true"]);

    // The scale subresource.
    k.ok(&["scale", "ng", "workers", "--replicas=3"]);
    let scale = api
        .get("/apis/example.mube.io/v1/nodegroups/workers/scale")
        .await
        .body;
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 3);
    assert_eq!(
        workers_at(&k, "{.spec.replicas} {.metadata.generation}"),
        "3 3"
    );

    // kubectl explain reads the published schema.
    let explained = k.ok(&["explain", "nodegroups.spec"]);
    assert!(
        explained.contains("minReady")
            && explained.contains("How many of the group's nodes must be Ready"),
        "{explained}"
    );

    // Delete one, then the CRD: its objects go, then it stops being served.
    k.ok(&["delete", "ng", "edge"]);
    assert!(lines
        .wait_for(Duration::from_secs(10), |l| l.starts_with("DELETED")
            && l.contains("edge"))
        .is_some());
    let _ = watch.kill();
    k.ok(&[
        "delete",
        "crd",
        "nodegroups.example.mube.io",
        "--timeout=20s",
    ]);
    assert_eq!(
        api.get("/apis/example.mube.io/v1/nodegroups").await.code,
        404
    );
    assert_eq!(
        api.get(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/nodegroups.example.mube.io"
        )
        .await
        .code,
        404
    );
    define_nodegroups(&k);
    let (_, out, err) = k.run(&["get", "nodegroups.example.mube.io"]);
    assert!(
        out.is_empty() && err.contains("No resources found"),
        "{out}{err}"
    );
}
