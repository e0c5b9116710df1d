//! The Kubernetes manifests (`deploy/kubernetes`): the base and the example overlay
//! are built by the real `kubectl kustomize`, every object is validated against the
//! Kubernetes schemas by `kubernetes-validate --strict`, and the properties
//! deploy/kubernetes/README.md promises are checked on the built objects: least
//! privileges (the agent's four capabilities, `drop: [ALL]` everywhere, nothing
//! privileged, hostPID on the agent only, no host paths, no service-account tokens),
//! limits and probes on every container, the database URL from a Secret, the node name
//! from the downward API. The same check must catch each of those promises broken in a
//! mutated copy, and the real `coral` binary must accept the ConfigMaps' settings.
//!
//! Needs `kubectl` (any version with `kubectl kustomize`, 1.20 and up; `$KUBECTL`
//! picks another binary) and `python3 -m kubernetes_validate` (PyPI
//! `kubernetes-validate`, which bundles the schemas: no network). `cargo xtask test`
//! installs both. Missing tools fail the tests, saying how to install them.

use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const NAMESPACE: &str = "coral";
const AGENT: &str = "coral-agent";
const COLONY: &str = "coral-colony";
/// What the agent's container adds after `drop: [ALL]` (base/agent.yaml says why each).
const AGENT_CAPABILITIES: [&str; 4] = ["BPF", "PERFMON", "SYS_PTRACE", "SYSLOG"];
/// Validated against this Kubernetes version and the newest the installed
/// kubernetes-validate bundles.
const OLDEST_SCHEMA: &str = "1.30.0";

const INSTALL_KUBECTL: &str = "install kubectl with `kustomize` (Debian: apt-get install \
     kubernetes-client), or run `cargo xtask test`, which installs it; \
     $KUBECTL names another kubectl";
const INSTALL_VALIDATE: &str = "install it with `python3 -m pip install kubernetes-validate`, \
     or run `cargo xtask test`, which installs it";

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes")
}

/// `kubectl kustomize deploy/kubernetes/<dir>`: the YAML stream.
fn kustomize(dir: &str) -> String {
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let path = deploy_dir().join(dir);
    let out = match Command::new(&kubectl).arg("kustomize").arg(&path).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("`{kubectl}` not found: {INSTALL_KUBECTL}")
        }
        Err(e) => panic!("running `{kubectl} kustomize`: {e}; {INSTALL_KUBECTL}"),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "`{kubectl} kustomize {}` failed ({}):\n{stderr}",
        path.display(),
        out.status
    );
    String::from_utf8(out.stdout).expect("kustomize prints UTF-8")
}

/// The objects of a YAML stream, as JSON values.
fn parse(yaml: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_norway::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("kustomize output is YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// `kubernetes-validate --strict` on a YAML stream, for the oldest Kubernetes version
/// supported here and the newest the tool knows.
fn validate(yaml: &str, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{}.yaml", what.replace('/', "-")));
    std::fs::write(&file, yaml).unwrap();
    for version in [Some(OLDEST_SCHEMA), None] {
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "kubernetes_validate", "--strict", "--quiet"]);
        if let Some(version) = version {
            cmd.args(["--kubernetes-version", version]);
        }
        let out = match cmd.arg(&file).output() {
            Ok(out) => out,
            Err(e) => panic!(
                "running python3: {e}; kubernetes-validate needs Python 3: {INSTALL_VALIDATE}"
            ),
        };
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if text.contains("No module named kubernetes_validate") {
            panic!("kubernetes-validate is not installed for python3: {INSTALL_VALIDATE}");
        }
        let version = version.unwrap_or("the newest it bundles");
        assert!(
            out.status.success(),
            "kubernetes-validate --strict (Kubernetes {version}) refused {what}:\n{text}"
        );
    }
}

/// The example overlay, built once.
fn overlay() -> &'static Vec<Value> {
    static OBJECTS: OnceLock<Vec<Value>> = OnceLock::new();
    OBJECTS.get_or_init(|| parse(&kustomize("overlays/example")))
}

// ---- The property check --------------------------------------------------------

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn kind(o: &Value) -> &str {
    str_at(o, "/kind").unwrap_or("?")
}

fn name(o: &Value) -> &str {
    str_at(o, "/metadata/name").unwrap_or("?")
}

fn id(o: &Value) -> String {
    format!("{}/{}", kind(o), name(o))
}

fn find<'a>(objects: &'a [Value], kind_: &str, name_: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| kind(o) == kind_ && name(o) == name_)
}

/// Kinds without a namespace, among those a deployment like this one could contain.
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "PriorityClass",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
];

/// The pod spec of a workload object, with the JSON pointer it sits at.
fn pod_spec(o: &Value) -> Option<(&Value, &'static str)> {
    let pointer = match kind(o) {
        "Deployment"
        | "DaemonSet"
        | "StatefulSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => "/spec/template/spec",
        "CronJob" => "/spec/jobTemplate/spec/template/spec",
        "Pod" => "/spec",
        _ => return None,
    };
    o.pointer(pointer).map(|spec| (spec, pointer))
}

/// Every path in `v` where a key `privileged` is `true`.
fn privileged_paths(v: &Value, path: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (key, value) in map {
                let here = format!("{path}/{key}");
                if key == "privileged" && value == &Value::Bool(true) {
                    out.push(here.clone());
                }
                privileged_paths(value, &here, out);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                privileged_paths(item, &format!("{path}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// The variables a container's environment defines: its `env` names and the keys of
/// the ConfigMaps it takes with `envFrom` (None for a missing ConfigMap).
fn container_env<'a>(
    objects: &'a [Value],
    container: &'a Value,
    problems: &mut Vec<String>,
    who: &str,
) -> BTreeMap<String, Option<&'a Value>> {
    let mut env = BTreeMap::new();
    for from in container["envFrom"].as_array().into_iter().flatten() {
        let Some(cm) = str_at(from, "/configMapRef/name") else {
            problems.push(format!("{who}: envFrom other than a configMapRef"));
            continue;
        };
        match find(objects, "ConfigMap", cm) {
            Some(map) => {
                for (key, value) in map["data"].as_object().into_iter().flatten() {
                    env.insert(key.clone(), Some(value));
                }
            }
            None => problems.push(format!(
                "{who}: envFrom names ConfigMap {cm}, not in the output"
            )),
        }
    }
    for var in container["env"].as_array().into_iter().flatten() {
        if let Some(n) = str_at(var, "/name") {
            env.insert(n.to_string(), var.get("value"));
        }
    }
    env
}

/// The `$(NAME)` references in a string.
fn var_refs(s: &str) -> Vec<&str> {
    let mut refs = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("$(") {
        let after = &rest[start + 2..];
        match after.find(')') {
            Some(end) => {
                refs.push(&after[..end]);
                rest = &after[end + 1..];
            }
            None => break,
        }
    }
    refs
}

fn is_postgres_url(s: &str) -> bool {
    s.contains("postgres://") || s.contains("postgresql://")
}

/// Whether a probe targets a port the container declares (by name or number).
fn probe_port_declared(probe: &Value, container: &Value) -> bool {
    let port = ["httpGet", "tcpSocket", "grpc"]
        .iter()
        .find_map(|k| probe.get(*k).and_then(|p| p.get("port")));
    let Some(port) = port else {
        return probe.get("exec").is_some();
    };
    container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|p| p.get("name") == Some(port) || p.get("containerPort") == Some(port))
}

/// Everything wrong with a built deployment; empty when it keeps every promise.
/// `with_secret`: the output must contain the database Secret (an overlay's does; the
/// base alone does not).
fn violations(objects: &[Value], with_secret: bool) -> Vec<String> {
    let mut p = Vec::new();

    // Nothing privileged, anywhere.
    for o in objects {
        let mut paths = Vec::new();
        privileged_paths(o, "", &mut paths);
        for path in paths {
            p.push(format!("{}: privileged: true at {path}", id(o)));
        }
    }

    // One namespace, holding everything else.
    if find(objects, "Namespace", NAMESPACE).is_none() {
        p.push(format!("no Namespace {NAMESPACE}"));
    }
    for o in objects {
        let ns = str_at(o, "/metadata/namespace");
        if !CLUSTER_SCOPED.contains(&kind(o)) && ns != Some(NAMESPACE) {
            p.push(format!("{}: namespace {ns:?}, not {NAMESPACE}", id(o)));
        }
    }
    // No database URL (and so no password) in a ConfigMap.
    for cm in objects.iter().filter(|o| kind(o) == "ConfigMap") {
        for (key, value) in cm["data"].as_object().into_iter().flatten() {
            if is_postgres_url(value.as_str().unwrap_or("")) {
                p.push(format!("{}: {key} holds a literal PostgreSQL URL", id(cm)));
            }
        }
    }
    for sa in objects.iter().filter(|o| kind(o) == "ServiceAccount") {
        if sa.get("automountServiceAccountToken") != Some(&json!(false)) {
            p.push(format!(
                "{}: automountServiceAccountToken is not false",
                id(sa)
            ));
        }
    }

    let agent = find(objects, "DaemonSet", AGENT);
    let colony = find(objects, "Deployment", COLONY);
    if agent.is_none() {
        p.push(format!("no DaemonSet {AGENT}"));
    }
    if colony.is_none() {
        p.push(format!("no Deployment {COLONY}"));
    }

    for o in objects {
        let Some((pod, at)) = pod_spec(o) else {
            continue;
        };
        let is_agent = kind(o) == "DaemonSet" && name(o) == AGENT;
        let is_colony = kind(o) == "Deployment" && name(o) == COLONY;
        let w = id(o);

        // Host namespaces and paths.
        let host_pid = pod.get("hostPID") == Some(&json!(true));
        if host_pid != is_agent {
            p.push(format!(
                "{w}: hostPID is {host_pid} (only the agent has it)"
            ));
        }
        for field in ["hostNetwork", "hostIPC"] {
            if pod.get(field) == Some(&json!(true)) {
                p.push(format!("{w}: {field}: true"));
            }
        }
        for volume in pod["volumes"].as_array().into_iter().flatten() {
            if volume.get("hostPath").is_some() {
                p.push(format!("{w}: hostPath volume {}", volume["name"]));
            }
        }

        // No API token; a service account of its own that exists.
        if pod.get("automountServiceAccountToken") != Some(&json!(false)) {
            p.push(format!("{w}: automountServiceAccountToken is not false"));
        }
        match str_at(pod, "/serviceAccountName") {
            Some(sa) if find(objects, "ServiceAccount", sa).is_some() => {}
            sa => p.push(format!(
                "{w}: serviceAccountName {sa:?} is not a ServiceAccount in the output"
            )),
        }
        if str_at(pod, "/securityContext/seccompProfile/type") != Some("RuntimeDefault") {
            p.push(format!("{w}: pod seccompProfile is not RuntimeDefault"));
        }

        let pod_non_root = pod.pointer("/securityContext/runAsNonRoot") == Some(&json!(true));
        let pod_user = pod
            .pointer("/securityContext/runAsUser")
            .and_then(Value::as_i64);
        let lists = ["containers", "initContainers", "ephemeralContainers"];
        for list in lists {
            for c in pod[list].as_array().into_iter().flatten() {
                let who = format!("{w} {list} {}", c["name"]);
                let sc = &c["securityContext"];
                if sc.get("allowPrivilegeEscalation") != Some(&json!(false)) {
                    p.push(format!("{who}: allowPrivilegeEscalation is not false"));
                }
                if sc.get("readOnlyRootFilesystem") != Some(&json!(true)) {
                    p.push(format!("{who}: readOnlyRootFilesystem is not true"));
                }
                if sc.pointer("/capabilities/drop") != Some(&json!(["ALL"])) {
                    p.push(format!("{who}: capabilities.drop is not [ALL]"));
                }
                let added: BTreeSet<&str> = sc
                    .pointer("/capabilities/add")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|c| c.as_str().unwrap_or("?"))
                    .collect();
                let allowed: BTreeSet<&str> = if is_agent && list == "containers" {
                    AGENT_CAPABILITIES.into_iter().collect()
                } else {
                    BTreeSet::new()
                };
                if added != allowed {
                    p.push(format!(
                        "{who}: capabilities.add is {added:?}, must be {allowed:?}"
                    ));
                }
                if !is_agent {
                    let non_root = sc.get("runAsNonRoot") == Some(&json!(true)) || pod_non_root;
                    let user = sc.get("runAsUser").and_then(Value::as_i64).or(pod_user);
                    if !non_root || user == Some(0) {
                        p.push(format!(
                            "{who}: not runAsNonRoot (only the agent runs as root)"
                        ));
                    }
                }
                for field in ["requests", "limits"] {
                    for resource in ["cpu", "memory"] {
                        if c.pointer(&format!("/resources/{field}/{resource}"))
                            .is_none()
                        {
                            p.push(format!("{who}: no resources.{field}.{resource}"));
                        }
                    }
                }
                if list != "containers" {
                    continue;
                }
                for probe in ["livenessProbe", "readinessProbe"] {
                    match c.get(probe) {
                        None => p.push(format!("{who}: no {probe}")),
                        Some(pr) if !probe_port_declared(pr, c) => p.push(format!(
                            "{who}: {probe} targets a port the container does not declare"
                        )),
                        Some(_) => {}
                    }
                }
                // $(VAR) in command and args must be defined, or Kubernetes passes
                // them on literally.
                let env = container_env(objects, c, &mut p, &who);
                for arg in ["command", "args"]
                    .iter()
                    .flat_map(|k| c[*k].as_array().into_iter().flatten())
                    .filter_map(Value::as_str)
                {
                    for var in var_refs(arg) {
                        if !env.contains_key(var) {
                            p.push(format!(
                                "{who}: {arg:?} uses $({var}), which is not defined"
                            ));
                        }
                    }
                }
                // No database URL written into a manifest.
                for var in c["env"].as_array().into_iter().flatten() {
                    if is_postgres_url(str_at(var, "/value").unwrap_or("")) {
                        p.push(format!(
                            "{who}: {} holds a literal PostgreSQL URL",
                            var["name"]
                        ));
                    }
                }
            }
        }

        if is_agent {
            let c = &pod["containers"][0];
            let who = format!("{w} ({at})");
            let node = c["env"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|v| v["name"] == "CORAL_NODE");
            if node.and_then(|v| str_at(v, "/valueFrom/fieldRef/fieldPath"))
                != Some("spec.nodeName")
            {
                p.push(format!(
                    "{who}: CORAL_NODE is not the downward API's spec.nodeName"
                ));
            }
            for port in [4317, 4318] {
                let exposed = c["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|pt| pt["containerPort"] == port && pt["hostPort"] == port);
                if !exposed {
                    p.push(format!("{who}: OTLP port {port} is not a hostPort {port}"));
                }
            }
        }

        if is_colony {
            let c = &pod["containers"][0];
            let url = c["env"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|v| v["name"] == "CORAL_DATABASE_URL");
            let secret = url.and_then(|v| v.pointer("/valueFrom/secretKeyRef"));
            match secret {
                None => p.push(format!(
                    "{w}: CORAL_DATABASE_URL is not from a secretKeyRef"
                )),
                Some(r) if with_secret => {
                    let (s, key) = (
                        str_at(r, "/name").unwrap_or("?"),
                        str_at(r, "/key").unwrap_or("?"),
                    );
                    match find(objects, "Secret", s) {
                        None => {
                            p.push(format!("{w}: the database Secret {s} is not in the output"))
                        }
                        Some(secret) => {
                            let has = secret.pointer(&format!("/data/{key}")).is_some()
                                || secret.pointer(&format!("/stringData/{key}")).is_some();
                            if !has {
                                p.push(format!("{w}: Secret {s} has no key {key}"));
                            }
                        }
                    }
                }
                Some(_) => {}
            }
        }
    }

    // TLS on the colony's port, mutual TLS and a token for agents, from Secret volumes.
    for (kind_, workload, wanted) in [
        (
            "Deployment",
            COLONY,
            &[
                "CORAL_TLS_CERT",
                "CORAL_TLS_KEY",
                "CORAL_CLIENT_CA",
                "CORAL_TOKENS_FILE",
            ][..],
        ),
        (
            "DaemonSet",
            AGENT,
            &["CORAL_TLS_CA", "CORAL_TLS_CERT", "CORAL_TLS_KEY"][..],
        ),
    ] {
        let Some(pod) = find(objects, kind_, workload).map(|o| &o["spec"]["template"]["spec"])
        else {
            continue;
        };
        let c = &pod["containers"][0];
        let env = container_env(objects, c, &mut Vec::new(), workload);
        let secret_mounts: Vec<&str> =
            c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| {
                    pod["volumes"].as_array().into_iter().flatten().any(|v| {
                        v["name"] == m["name"] && v.pointer("/secret/secretName").is_some()
                    })
                })
                .filter_map(|m| str_at(m, "/mountPath"))
                .collect();
        for var in wanted {
            let value = env.get(*var).copied().flatten().and_then(Value::as_str);
            let in_secret = value.is_some_and(|v| {
                secret_mounts
                    .iter()
                    .any(|m| v.starts_with(&format!("{m}/")))
            });
            if !in_secret {
                p.push(format!(
                    "{workload}: {var} ({value:?}) is not a file of a Secret volume"
                ));
            }
        }
        if workload == AGENT {
            let colony = env
                .get("CORAL_COLONY")
                .copied()
                .flatten()
                .and_then(Value::as_str);
            if !colony.is_some_and(|c| c.starts_with("https://")) {
                p.push(format!(
                    "{workload}: CORAL_COLONY {colony:?} is not https://"
                ));
            }
            let token = c["env"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|v| v["name"] == "CORAL_TOKEN");
            if token
                .and_then(|v| v.pointer("/valueFrom/secretKeyRef"))
                .is_none()
            {
                p.push(format!(
                    "{workload}: CORAL_TOKEN is not from a secretKeyRef"
                ));
            }
        }
    }

    // The colony's Service reaches the colony's pods on 7070.
    match (find(objects, "Service", COLONY), colony) {
        (Some(svc), Some(colony)) => {
            let labels = &colony["spec"]["template"]["metadata"]["labels"];
            let selects = svc["spec"]["selector"]
                .as_object()
                .is_some_and(|sel| !sel.is_empty() && sel.iter().all(|(k, v)| &labels[k] == v));
            if !selects {
                p.push(format!(
                    "Service/{COLONY} does not select the colony's pods"
                ));
            }
            if !svc["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|pt| pt["port"] == 7070)
            {
                p.push(format!("Service/{COLONY} has no port 7070"));
            }
        }
        (None, _) => p.push(format!("no Service {COLONY}")),
        _ => {}
    }
    p
}

// ---- Tests ---------------------------------------------------------------------

#[test]
#[ignore = "needs kubectl and kubernetes-validate: run `cargo xtask test`, which installs them"]
fn example_overlay_builds_validates_and_keeps_its_promises() {
    let yaml = kustomize("overlays/example");
    validate(&yaml, "overlays/example");
    let objects = parse(&yaml);
    let kinds: BTreeSet<String> = objects.iter().map(id).collect();
    for expected in [
        "Namespace/coral",
        "ServiceAccount/coral-agent",
        "ServiceAccount/coral-colony",
        "DaemonSet/coral-agent",
        "Deployment/coral-colony",
        "Service/coral-colony",
    ] {
        assert!(kinds.contains(expected), "{expected} missing: {kinds:?}");
    }
    let problems = violations(&objects, true);
    assert!(
        problems.is_empty(),
        "overlays/example:\n{}",
        problems.join("\n")
    );
}

#[test]
#[ignore = "needs kubectl and kubernetes-validate: run `cargo xtask test`, which installs them"]
fn base_builds_validates_and_keeps_its_promises() {
    let yaml = kustomize("base");
    validate(&yaml, "base");
    let problems = violations(&parse(&yaml), false);
    assert!(problems.is_empty(), "base:\n{}", problems.join("\n"));
}

/// The pod spec of `DaemonSet/coral-agent` or `Deployment/coral-colony` in `objects`.
fn pod_mut<'a>(objects: &'a mut [Value], kind_: &str, name_: &str) -> &'a mut Value {
    let o = objects
        .iter_mut()
        .find(|o| kind(o) == kind_ && name(o) == name_)
        .unwrap();
    o.pointer_mut("/spec/template/spec").unwrap()
}

fn agent_pod(objects: &mut [Value]) -> &mut Value {
    pod_mut(objects, "DaemonSet", AGENT)
}

fn colony_pod(objects: &mut [Value]) -> &mut Value {
    pod_mut(objects, "Deployment", COLONY)
}

fn env_var<'a>(pod: &'a mut Value, var: &str) -> &'a mut Value {
    pod["containers"][0]["env"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|v| v["name"] == var)
        .unwrap()
}

type Mutation = (&'static str, fn(&mut Vec<Value>));

#[test]
#[ignore = "needs kubectl and kubernetes-validate: run `cargo xtask test`, which installs them"]
fn the_deploy_check_catches_each_broken_promise() {
    let original = overlay();
    assert!(violations(original, true).is_empty());
    let mutations: &[Mutation] = &[
        ("privileged: true", |o| {
            agent_pod(o)["containers"][0]["securityContext"]["privileged"] = json!(true)
        }),
        ("privileged: true", |o| {
            // A privileged init container.
            let init = json!({"name": "setup", "image": "busybox",
                "securityContext": {"privileged": true}});
            colony_pod(o)["initContainers"] = json!([init]);
        }),
        ("capabilities.add", |o| {
            let caps = &mut agent_pod(o)["containers"][0]["securityContext"]["capabilities"];
            caps["add"].as_array_mut().unwrap().push(json!("SYS_ADMIN"));
        }),
        ("capabilities.add", |o| {
            let caps = &mut agent_pod(o)["containers"][0]["securityContext"]["capabilities"];
            caps["add"]
                .as_array_mut()
                .unwrap()
                .retain(|c| c != "SYS_PTRACE");
        }),
        ("capabilities.add", |o| {
            colony_pod(o)["containers"][0]["securityContext"]["capabilities"]["add"] =
                json!(["NET_ADMIN"]);
        }),
        ("capabilities.drop", |o| {
            let caps = &mut agent_pod(o)["containers"][0]["securityContext"]["capabilities"];
            caps.as_object_mut().unwrap().remove("drop");
        }),
        ("allowPrivilegeEscalation", |o| {
            let sc = &mut colony_pod(o)["containers"][0]["securityContext"];
            sc.as_object_mut()
                .unwrap()
                .remove("allowPrivilegeEscalation");
        }),
        ("readOnlyRootFilesystem", |o| {
            colony_pod(o)["containers"][0]["securityContext"]["readOnlyRootFilesystem"] =
                json!(false)
        }),
        ("hostPID", |o| colony_pod(o)["hostPID"] = json!(true)),
        ("hostPID", |o| {
            agent_pod(o).as_object_mut().unwrap().remove("hostPID");
        }),
        ("hostNetwork", |o| agent_pod(o)["hostNetwork"] = json!(true)),
        ("hostPath", |o| {
            agent_pod(o)["volumes"] = json!([{"name": "debugfs",
                "hostPath": {"path": "/sys/kernel/debug"}}]);
        }),
        ("runAsNonRoot", |o| {
            let sc = &mut colony_pod(o)["securityContext"];
            sc.as_object_mut().unwrap().remove("runAsNonRoot");
        }),
        ("resources.limits.memory", |o| {
            let limits = &mut colony_pod(o)["containers"][0]["resources"]["limits"];
            limits.as_object_mut().unwrap().remove("memory");
        }),
        ("resources.requests.cpu", |o| {
            let requests = &mut agent_pod(o)["containers"][0]["resources"]["requests"];
            requests.as_object_mut().unwrap().remove("cpu");
        }),
        ("no readinessProbe", |o| {
            let c = &mut agent_pod(o)["containers"][0];
            c.as_object_mut().unwrap().remove("readinessProbe");
        }),
        ("livenessProbe targets a port", |o| {
            colony_pod(o)["containers"][0]["livenessProbe"]["tcpSocket"]["port"] = json!(7071)
        }),
        ("secretKeyRef", |o| {
            *env_var(colony_pod(o), "CORAL_DATABASE_URL") =
                json!({"name": "CORAL_DATABASE_URL", "value": "postgres://u:p@db/coral"});
        }),
        ("literal PostgreSQL URL", |o| {
            let cm = o
                .iter_mut()
                .find(|c| kind(c) == "ConfigMap" && name(c).starts_with("coral-colony"))
                .unwrap();
            cm["data"]["CORAL_DATABASE_URL"] = json!("postgres://u:p@db/coral");
        }),
        ("database Secret", |o| o.retain(|c| kind(c) != "Secret")),
        ("is not https://", |o| {
            let cm = o
                .iter_mut()
                .find(|c| kind(c) == "ConfigMap" && name(c).starts_with("coral-agent"))
                .unwrap();
            cm["data"]["CORAL_COLONY"] = json!("http://coral-colony:7070");
        }),
        ("CORAL_TOKENS_FILE", |o| {
            let cm = o
                .iter_mut()
                .find(|c| kind(c) == "ConfigMap" && name(c).starts_with("coral-colony"))
                .unwrap();
            cm["data"]
                .as_object_mut()
                .unwrap()
                .remove("CORAL_TOKENS_FILE");
        }),
        ("CORAL_CLIENT_CA", |o| {
            let c = &mut colony_pod(o)["containers"][0];
            c["volumeMounts"]
                .as_array_mut()
                .unwrap()
                .retain(|m| m["name"] != "tls");
        }),
        ("CORAL_TOKEN is not from a secretKeyRef", |o| {
            *env_var(agent_pod(o), "CORAL_TOKEN") = json!({"name": "CORAL_TOKEN", "value": "t"});
        }),
        ("spec.nodeName", |o| {
            *env_var(agent_pod(o), "CORAL_NODE") = json!({"name": "CORAL_NODE", "value": "n1"});
        }),
        ("hostPort 4317", |o| {
            let ports = agent_pod(o)["containers"][0]["ports"]
                .as_array_mut()
                .unwrap();
            ports.retain(|p| p["containerPort"] != 4317);
        }),
        ("automountServiceAccountToken", |o| {
            agent_pod(o)["automountServiceAccountToken"] = json!(true)
        }),
        ("automountServiceAccountToken", |o| {
            let sa = o.iter_mut().find(|c| kind(c) == "ServiceAccount").unwrap();
            sa.as_object_mut()
                .unwrap()
                .remove("automountServiceAccountToken");
        }),
        ("seccompProfile", |o| {
            let sc = &mut agent_pod(o)["securityContext"];
            sc.as_object_mut().unwrap().remove("seccompProfile");
        }),
        ("which is not defined", |o| {
            let args = &mut agent_pod(o)["containers"][0]["args"];
            args.as_array_mut()
                .unwrap()
                .push(json!("--x=$(CORAL_NOT_IN_THE_CONFIGMAP)"));
        }),
        ("namespace", |o| {
            let svc = o.iter_mut().find(|c| kind(c) == "Service").unwrap();
            svc["metadata"]["namespace"] = json!("default");
        }),
        ("does not select the colony's pods", |o| {
            let svc = o.iter_mut().find(|c| kind(c) == "Service").unwrap();
            svc["spec"]["selector"] = json!({"app.kubernetes.io/name": "colony"});
        }),
    ];
    for (expected, mutate) in mutations {
        let mut objects = original.clone();
        mutate(&mut objects);
        let problems = violations(&objects, true);
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "a mutation that should be reported as {expected:?} got: {problems:?}"
        );
    }
}

/// The `[env: NAME...]` variables a `coral` subcommand's `--help` lists.
fn env_vars_read_by(args: &[&str]) -> BTreeSet<String> {
    let out = crate::cli::coral(None, args);
    assert!(out.ok, "{args:?}: {}", out.stderr);
    out.stdout
        .split("[env: ")
        .skip(1)
        .map(|rest| {
            rest.split(['=', ']'])
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// Kubernetes' `$(VAR)` expansion (undefined references stay as they are).
fn expand(arg: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = arg.to_string();
    for var in var_refs(arg) {
        if let Some(value) = env.get(var) {
            out = out.replace(&format!("$({var})"), value);
        }
    }
    out
}

/// The Secrets `deploy/kubernetes/make-secrets.sh` makes (name → key → contents),
/// with the directory it wrote them to.
fn make_secrets() -> (
    tempfile::TempDir,
    BTreeMap<String, BTreeMap<String, Vec<u8>>>,
) {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let script = deploy_dir().join("make-secrets.sh");
    let out = Command::new("sh")
        .arg(&script)
        .arg(dir.path())
        .output()
        .expect("run make-secrets.sh (needs openssl: `cargo xtask test` installs it)");
    assert!(
        out.status.success(),
        "make-secrets.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = std::fs::read_to_string(dir.path().join("secrets.yaml")).unwrap();
    let mut secrets = BTreeMap::new();
    for secret in parse(&yaml) {
        assert_eq!(kind(&secret), "Secret");
        assert_eq!(str_at(&secret, "/metadata/namespace"), Some(NAMESPACE));
        let data = secret["data"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap())
                    .unwrap();
                (k.clone(), bytes)
            })
            .collect();
        secrets.insert(name(&secret).to_string(), data);
    }
    (dir, secrets)
}

/// A `coral` process started by [`run_as_configured`]; killed when dropped.
struct Running {
    child: std::process::Child,
    /// The log line that said it was ready.
    ready_line: String,
    _stderr: std::sync::mpsc::Receiver<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the real `coral` as a workload's container would: its args and environment
/// (ConfigMaps, literal values, `secretKeyRef`s), its Secret volumes written under
/// `root` at their mount paths' place (paths in the environment point there), plus
/// `overrides` that keep it on loopback. Waits until it logs `ready`.
fn run_as_configured(
    kind_: &str,
    name_: &str,
    secrets: &BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    root: &std::path::Path,
    overrides: &[(&str, &str)],
    ready: &str,
) -> Running {
    use std::io::BufRead;
    let objects = overlay();
    let pod = &find(objects, kind_, name_).unwrap()["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let mut problems = Vec::new();
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in container_env(objects, container, &mut problems, name_) {
        let value = v.and_then(Value::as_str).map(str::to_string);
        env.insert(k, value.unwrap_or_default());
    }
    assert!(problems.is_empty(), "{problems:?}");
    for var in container["env"].as_array().into_iter().flatten() {
        if let Some(r) = var.pointer("/valueFrom/secretKeyRef") {
            let (secret, key) = (str_at(r, "/name").unwrap(), str_at(r, "/key").unwrap());
            if let Some(value) = secrets.get(secret).and_then(|s| s.get(key)) {
                let value = String::from_utf8(value.clone()).unwrap();
                env.insert(str_at(var, "/name").unwrap().to_string(), value);
            }
        }
    }
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .expect("every mount has its volume");
        let Some(secret) = str_at(volume, "/secret/secretName") else {
            continue;
        };
        let data = secrets.get(secret).unwrap_or_else(|| {
            panic!("{name_} mounts Secret {secret}, which make-secrets.sh does not make")
        });
        let path = str_at(mount, "/mountPath").unwrap();
        let local = root.join(format!("{name_}{path}"));
        std::fs::create_dir_all(&local).unwrap();
        for (key, bytes) in data {
            std::fs::write(local.join(key), bytes).unwrap();
        }
        for value in env.values_mut() {
            if value.starts_with(path) {
                *value = value.replacen(path, local.to_str().unwrap(), 1);
            }
        }
    }
    for (k, v) in overrides {
        env.insert(k.to_string(), v.to_string());
    }
    env.retain(|_, v| !v.is_empty());
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| expand(a.as_str().unwrap(), &env))
        .collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_coral"))
        .args(&args)
        .env_clear()
        .envs(&env)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run coral");
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut log = Vec::new();
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if line.contains(ready) {
            return Running {
                child,
                ready_line: line,
                _stderr: rx,
            };
        }
        log.push(line);
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!(
        "coral {args:?} with {name_}'s settings never logged {ready:?}:\n{}",
        log.join("\n")
    );
}

#[test]
#[ignore = "needs kubectl and kubernetes-validate: run `cargo xtask test`, which installs them"]
fn deploy_settings_are_ones_coral_reads_and_accepts() {
    let objects = overlay();
    let agent_reads = env_vars_read_by(&["agent", "start", "--help"]);
    let colony_reads = env_vars_read_by(&["colony", "start", "--help"]);
    assert!(agent_reads.contains("CORAL_COLONY"), "{agent_reads:?}");
    assert!(
        colony_reads.contains("CORAL_DATABASE_URL"),
        "{colony_reads:?}"
    );
    for (workload, kind_, reads) in [
        (AGENT, "DaemonSet", &agent_reads),
        (COLONY, "Deployment", &colony_reads),
    ] {
        let container =
            &find(objects, kind_, workload).unwrap()["spec"]["template"]["spec"]["containers"][0];
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let used_in_args: BTreeSet<&str> = args.iter().flat_map(|a| var_refs(a)).collect();
        let mut problems = Vec::new();
        let env = container_env(objects, container, &mut problems, workload);
        assert!(problems.is_empty(), "{problems:?}");
        // A misspelt setting would be silently ignored: every variable must be one
        // `coral` reads (or RUST_LOG), or one the args use.
        for var in env.keys() {
            assert!(
                reads.contains(var) || var == "RUST_LOG" || used_in_args.contains(var.as_str()),
                "{workload}: {var} is neither read by coral ({reads:?}) nor used in its args"
            );
        }
    }
}

/// The colony and an agent, each run with its manifest's settings and the Secrets
/// `make-secrets.sh` makes: the colony serves TLS and wants tokens, the agent reaches
/// it over mutual TLS with its token and registers; a client needs the CA and a token.
#[test]
#[ignore = "needs kubectl, kubernetes-validate and openssl: run `cargo xtask test`, which installs them"]
fn the_agent_registers_over_mutual_tls_with_its_token_as_configured() {
    let (keys, secrets) = make_secrets();
    let root = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let agent_data = tempfile::tempdir().unwrap();
    let colony = run_as_configured(
        "Deployment",
        COLONY,
        &secrets,
        root.path(),
        &[
            ("CORAL_LISTEN", "127.0.0.1:0"),
            // CORAL_DATABASE_URL (from the Secret) is left out: the embedded store.
            ("CORAL_DATA_DIR", data.path().to_str().unwrap()),
            ("CORAL_METRICS", "127.0.0.1:0"),
        ],
        "colony listening on",
    );
    let addr = colony.ready_line.split("listening on ").nth(1).unwrap();
    let port = addr
        .split_whitespace()
        .next()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap();
    // The certificate names coral-colony and localhost (for port-forwarding).
    let url = format!("https://localhost:{port}");
    let _agent = run_as_configured(
        "DaemonSet",
        AGENT,
        &secrets,
        root.path(),
        &[
            ("CORAL_NODE", "test-node"),
            ("CORAL_AGENT_DATA_DIR", agent_data.path().to_str().unwrap()),
            ("CORAL_OTLP_GRPC", "127.0.0.1:0"),
            ("CORAL_OTLP_HTTP", "127.0.0.1:0"),
            ("CORAL_COLONY", &url),
            ("CORAL_METRICS", "127.0.0.1:0"),
        ],
        "otlp-http listening on",
    );
    let ca = keys.path().join("ca.crt");
    let read = std::fs::read_to_string(keys.path().join("read.token")).unwrap();
    let query = |token: Option<&str>| {
        let mut args = vec![
            "query",
            "agents",
            "--tls-ca",
            ca.to_str().unwrap(),
            "-o",
            "json",
        ];
        if let Some(token) = token {
            args.extend(["--token", token.trim()]);
        }
        crate::cli::coral(Some(&url), &args)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = query(Some(&read));
        assert!(out.ok, "{}", out.stderr);
        if out.stdout.contains("test-node") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never registered: {}",
            out.stdout
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let refused = query(None);
    assert!(
        !refused.ok && refused.stderr.contains("token"),
        "no token: {}",
        refused.stderr
    );
}
