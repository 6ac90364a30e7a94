//! What can be checked here of the deployment files, whose images cannot be
//! pulled on these machines: `compose.yaml` is valid for docker-compose;
//! the manifests in `deploy/` parse; the Dockerfile builds and copies every
//! binary of the workspace; the KEDA triggers name the streams and
//! consumers the topology declares, and scale Deployments that exist; every
//! variable the files set is one the README documents.

use natter_nats::{Role, Subjects};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The YAML documents of a file, as JSON (Debian's PyYAML, which
/// docker-compose brings).
fn yaml(path: &str) -> Vec<Value> {
    let out = Command::new("/usr/bin/python3")
        .args(["-c", "import sys, json, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))"])
        .arg(root().join(path))
        .output()
        .expect("python3 with yaml (infra/install.sh --deploy)");
    assert!(out.status.success(), "{path} does not parse: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

#[test]
fn compose_file_is_valid_for_docker_compose() {
    let out = Command::new("docker-compose")
        .args(["-f", "compose.yaml", "config", "-q"])
        .current_dir(root())
        .output()
        .expect("docker-compose (infra/install.sh --deploy)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let compose = &yaml("compose.yaml")[0];
    for service in ["nats", "mongodb", "minio", "topology", "edge"] {
        assert!(compose["services"][service].is_object(), "no {service} service");
    }
    for role in Role::ALL {
        let s = &compose["services"][format!("worker-{}", role.name())];
        assert_eq!(s["command"][0], format!("natter-worker-{}", role.name()), "{s}");
    }
}

#[test]
fn dockerfile_builds_and_ships_every_binary() {
    let docker = read("Dockerfile");
    assert!(docker.contains("cargo build --release --locked --workspace --bins"), "the build CI runs");
    assert!(docker.contains("npm ci"), "the web client's socket.io-client");
    let meta = Command::new(env!("CARGO"))
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(root())
        .output()
        .expect("cargo metadata");
    let meta: Value = serde_json::from_slice(&meta.stdout).unwrap();
    let bins: BTreeSet<String> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] != "natter-tests")
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert!(bins.contains("natter-edge") && bins.contains("natterctl"), "{bins:?}");
    for b in &bins {
        assert!(docker.contains(&format!("/src/target/release/{b}")), "the image lacks {b}");
    }
}

#[test]
fn manifests_name_what_the_topology_declares() {
    let k8s = yaml("deploy/kubernetes.yaml");
    let keda = yaml("deploy/keda.yaml");
    let nats = yaml("deploy/nats.yaml");
    assert_eq!(of_kind(&nats, "StatefulSet")[0]["spec"]["replicas"], 3, "an R3 cluster");
    let deployments: BTreeSet<&str> =
        of_kind(&k8s, "Deployment").iter().map(|d| d["metadata"]["name"].as_str().unwrap()).collect();
    let s = Subjects::new("chat");
    let scaled = of_kind(&keda, "ScaledObject");
    assert_eq!(scaled.len(), Role::ALL.len(), "one ScaledObject per role");
    for role in Role::ALL {
        let name = format!("natter-worker-{}", role.name());
        assert!(deployments.contains(name.as_str()), "no Deployment {name}");
        let so = scaled.iter().find(|o| o["spec"]["scaleTargetRef"]["name"] == name.as_str()).expect("scaled");
        let triggers = so["spec"]["triggers"].as_array().unwrap();
        let consumers: BTreeSet<String> = triggers
            .iter()
            .map(|t| {
                assert_eq!(t["type"], "nats-jetstream");
                assert_eq!(t["metadata"]["stream"], role.stream(&s).as_str(), "{name}");
                t["metadata"]["consumer"].as_str().unwrap().to_string()
            })
            .collect();
        let declared: BTreeSet<String> = (0..role.partitions(&s)).map(|p| s.consumer(role.name(), p)).collect();
        assert_eq!(consumers, declared, "{name} scales on every partition's consumer");
    }
}

#[test]
fn every_variable_the_files_set_is_documented() {
    let readme = read("README.md");
    let mut set = BTreeSet::new();
    let compose = &yaml("compose.yaml")[0];
    for (name, svc) in compose["services"].as_object().unwrap() {
        if ["nats", "mongodb", "minio"].contains(&name.as_str()) {
            continue;
        }
        set.extend(svc["environment"].as_object().into_iter().flat_map(|m| m.keys().cloned()));
    }
    for d in of_kind(&yaml("deploy/kubernetes.yaml"), "Deployment") {
        for c in d["spec"]["template"]["spec"]["containers"].as_array().unwrap() {
            for e in c["env"].as_array().into_iter().flatten() {
                set.insert(e["name"].as_str().unwrap().to_string());
            }
        }
    }
    assert!(set.contains("METRICS_ADDR") && set.contains("NATS_URL"), "{set:?}");
    for var in set {
        let documented = readme.lines().filter(|l| l.starts_with("| `")).any(|l| l.contains(&format!("`{var}`")));
        assert!(documented, "{var} is set but not in the README's configuration table");
    }
}
