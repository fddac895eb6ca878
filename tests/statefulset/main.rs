//! StatefulSet emulation: the Helm chart's pods as real processes. Each pod is `shoal node`
//! with the rendered args (its `$(POD_NAME)` filled in), the rendered ConfigMap, `HOSTNAME`
//! set to `shoal-<i>`, a data directory of its own (its volume), and an address of its own on
//! loopback (its pod IP: the rendered listen address 0.0.0.0 becomes that IP, since the pods
//! share one network here). The headless Service's DNS names resolve to those addresses
//! through an /etc/hosts bind-mounted into each pod's own mount namespace (root only). While
//! a client writes and searches: 3 pods bootstrap, scale to 5, drain and scale back to 3, then
//! restart one by one from the highest ordinal; no acknowledged write is lost, and the probes
//! say what they should at each step. API keys are on: each pod reads the chart's Secret
//! (decoded from the rendering) at the path the rendered config names, the pods call each
//! other with it, and a client without it is refused.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_proto::auth::ApiKeys;
use shoal_proto::v1;
use shoal_proto::v1::point_service_client::PointServiceClient;
use shoal_tests::{bin, http_get, poll};
use tempfile::TempDir;

const NAMESPACE: &str = "db";
const GRPC: u16 = 7600;
const HTTP: u16 = 7680;
/// The key given to the chart (`auth.apiKeys`).
const API_KEY: &str = "sts-emulation-key-3f9a1c0d";
/// Where the chart mounts its Secret's key file, as the rendered config names it.
const KEYS_PATH: &str = "/etc/shoal-auth/api-keys";

fn helm() -> PathBuf {
    let helm = std::env::var_os("SHOAL_HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin/helm"));
    assert!(
        helm.exists(),
        "{} not found: run `make helm`",
        helm.display()
    );
    helm
}

/// The chart rendered for `replicas` nodes with API keys: (shoal.toml, the node container's
/// args, the API keys file the Secret holds).
fn render(replicas: u32) -> (String, Vec<String>, String) {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/shoal");
    let out = Command::new(helm())
        .args(["template", "shoal"])
        .arg(chart)
        .args([
            "--namespace",
            NAMESPACE,
            "--set",
            &format!("replicaCount={replicas}"),
            "--set",
            "auth.enabled=true",
            "--set",
            &format!("auth.apiKeys[0]={API_KEY}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = String::from_utf8(out.stdout).unwrap();
    let mut lines = doc.lines().skip_while(|l| l.trim() != "shoal.toml: |");
    lines.next().unwrap();
    let toml = lines
        .take_while(|l| l.trim().is_empty() || l.starts_with("    "))
        .map(|l| l.get(4..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut lines = doc
        .lines()
        .skip_while(|l| l.trim() != "- name: shoal")
        .skip_while(|l| l.trim() != "args:");
    lines.next().unwrap();
    let args = lines
        .map(str::trim)
        .take_while(|l| l.starts_with("- "))
        .map(|l| l.trim_start_matches("- ").trim_matches('"').to_owned())
        .collect();
    // The Secret's one data item, base64 as Kubernetes stores it.
    let encoded = doc
        .lines()
        .skip_while(|l| l.trim() != "kind: Secret")
        .find_map(|l| l.trim().strip_prefix("api-keys: "))
        .expect("a Secret with an api-keys item");
    let decoded = Command::new("base64")
        .arg("-d")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(encoded.trim_matches('"').as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(decoded.status.success(), "the Secret's data is not base64");
    (toml, args, String::from_utf8(decoded.stdout).unwrap())
}

/// A client's key, as shoalctl and the writer send it.
fn client_keys() -> ApiKeys {
    ApiKeys::client(API_KEY).unwrap()
}

fn dns(ordinal: u64) -> String {
    format!("shoal-{ordinal}.shoal-headless.{NAMESPACE}.svc.cluster.local")
}

struct Pod {
    child: Child,
    log: PathBuf,
}

/// The emulated StatefulSet: rendered config, per-pod volumes and addresses.
struct StatefulSet {
    dir: TempDir,
    hosts: PathBuf,
    /// The third octet of every pod IP, from this process's id (concurrent runs differ).
    subnet: u8,
    config: PathBuf,
    args: Vec<String>,
    pods: BTreeMap<u64, Pod>,
}

impl StatefulSet {
    fn new(replicas: u32) -> Self {
        assert!(
            Command::new("id").arg("-u").output().unwrap().stdout == b"0\n",
            "the StatefulSet emulation bind-mounts /etc/hosts in its pods' mount namespaces: run as root"
        );
        let dir = tempfile::tempdir().unwrap();
        let subnet = 100 + (std::process::id() % 100) as u8;
        let hosts = dir.path().join("hosts");
        let mut records = String::from("127.0.0.1 localhost\n");
        for i in 0..7u64 {
            records.push_str(&format!("127.10.{subnet}.{} {}\n", i + 1, dns(i)));
        }
        std::fs::write(&hosts, records).unwrap();
        let mut set = StatefulSet {
            config: dir.path().join("shoal.toml"),
            dir,
            hosts,
            subnet,
            args: Vec::new(),
            pods: BTreeMap::new(),
        };
        set.upgrade(replicas);
        set
    }

    /// `helm upgrade --set replicaCount=N`: new pods get the new rendering.
    fn upgrade(&mut self, replicas: u32) {
        let (toml, args, keys) = render(replicas);
        let keys_file = self.dir.path().join("api-keys");
        assert!(
            toml.contains(KEYS_PATH),
            "the config names the Secret's file:\n{toml}"
        );
        std::fs::write(&keys_file, keys).unwrap();
        let toml = toml.replace(KEYS_PATH, keys_file.to_str().unwrap());
        std::fs::write(&self.config, toml).unwrap();
        self.args = args;
    }

    fn ip(&self, ordinal: u64) -> Ipv4Addr {
        Ipv4Addr::new(127, 10, self.subnet, ordinal as u8 + 1)
    }

    fn grpc(&self, ordinal: u64) -> SocketAddr {
        SocketAddr::from((self.ip(ordinal), GRPC))
    }

    fn http(&self, ordinal: u64) -> SocketAddr {
        SocketAddr::from((self.ip(ordinal), HTTP))
    }

    fn start(&mut self, ordinal: u64) {
        let pod = format!("shoal-{ordinal}");
        let volume = self.dir.path().join(format!("data-{pod}"));
        let log = self.dir.path().join(format!("{pod}.log"));
        let args: Vec<String> = self
            .args
            .iter()
            .map(|a| {
                a.replace("$(POD_NAME)", &pod)
                    .replace("/etc/shoal/shoal.toml", self.config.to_str().unwrap())
            })
            .chain([
                format!("--data-dir={}", volume.display()),
                format!("--listen={}", self.grpc(ordinal)),
                format!("--http={}", self.http(ordinal)),
            ])
            .collect();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("mount --bind \"$0\" /etc/hosts && exec \"$@\"")
            .arg(&self.hosts)
            .arg(bin("shoal"))
            .args(&args)
            .env("HOSTNAME", &pod)
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap();
        self.pods.insert(ordinal, Pod { child, log });
    }

    /// SIGTERM, as the kubelet does, then wait for the exit.
    fn stop(&mut self, ordinal: u64) {
        let mut pod = self.pods.remove(&ordinal).unwrap();
        let pid = pod.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = poll("the pod to stop", Duration::from_secs(60), || {
            pod.child.try_wait().unwrap()
        });
        let log = std::fs::read_to_string(&pod.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        assert!(
            status.success(),
            "shoal-{ordinal} exited {status}:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }

    fn probe(&self, ordinal: u64, path: &str) -> Option<u16> {
        http_get(self.http(ordinal), path).map(|(status, _)| status)
    }

    fn wait_ready(&self, ordinal: u64) {
        poll(
            &format!("shoal-{ordinal} ready"),
            Duration::from_secs(120),
            || (self.probe(ordinal, "/readyz") == Some(200)).then_some(()),
        );
        assert_eq!(
            self.probe(ordinal, "/healthz"),
            Some(200),
            "alive once ready"
        );
    }

    fn shoalctl(&self, ordinal: u64, args: &[&str]) -> serde_json::Value {
        let out = Command::new(bin("shoalctl"))
            .args([
                "--addr",
                &self.grpc(ordinal).to_string(),
                "--output",
                "json",
            ])
            .args(args)
            .env("SHOAL_API_KEY", API_KEY)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "shoalctl {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    fn logs(&self) -> String {
        self.pods
            .iter()
            .map(|(i, p)| {
                let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                format!(
                    "--- shoal-{i}\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for StatefulSet {
    fn drop(&mut self) {
        for pod in self.pods.values_mut() {
            let _ = pod.child.kill();
            let _ = pod.child.wait();
        }
    }
}

/// Writes batches to whichever live pod takes them, recording the ids acknowledged whole.
fn start_writer(
    endpoints: Vec<SocketAddr>,
    acked: Arc<Mutex<Vec<u64>>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut next = 0u64;
        let mut searches = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let ids: Vec<u64> = (next..next + 10).collect();
            next += 10;
            let points = ids
                .iter()
                .map(|id| v1::Point {
                    id: Some((*id).into()),
                    vector: vec![*id as f32, 1.0],
                    ..Default::default()
                })
                .collect::<Vec<_>>();
            for addr in &endpoints {
                let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .timeout(Duration::from_secs(5))
                    .connect()
                    .await
                else {
                    continue;
                };
                let mut client = PointServiceClient::with_interceptor(channel, client_keys());
                let request = v1::UpsertRequest {
                    collection: "sts".into(),
                    points: points.clone(),
                };
                if let Ok(r) = client.upsert(request).await {
                    let r = r.into_inner();
                    if r.failed_shards.is_empty() && r.unacknowledged.is_empty() {
                        acked.lock().unwrap().extend(&ids);
                    }
                    let search = v1::SearchRequest {
                        collection: "sts".into(),
                        queries: vec![v1::Vector {
                            values: vec![next as f32, 1.0],
                        }],
                        k: 3,
                        ..Default::default()
                    };
                    searches += u64::from(client.search(search).await.is_ok());
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        searches
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_charts_pods_bootstrap_scale_drain_and_roll_without_losing_a_write() {
    let mut sts = StatefulSet::new(3);
    for i in 0..3 {
        sts.start(i);
    }
    for i in 0..3 {
        sts.wait_ready(i);
    }
    let nodes = sts.shoalctl(1, &["node", "list"]);
    assert_eq!(nodes.as_array().map(Vec::len), Some(3), "{nodes}");
    sts.shoalctl(
        0,
        &[
            "collection",
            "create",
            "sts",
            "--dim",
            "2",
            "--metric",
            "l2",
            "--shards",
            "2",
            "--replicas",
            "3",
        ],
    );

    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let endpoints: Vec<SocketAddr> = (0..5).map(|i| sts.grpc(i)).collect();
    let writer = start_writer(endpoints, acked.clone(), stop.clone());
    let progress = |acked: &Arc<Mutex<Vec<u64>>>| acked.lock().unwrap().len();
    let wait_writes = |from: usize| {
        let acked = acked.clone();
        async move {
            let deadline =
                shoal_tests::Deadline::new("acknowledged writes", Duration::from_secs(60));
            while progress(&acked) < from + 50 {
                deadline.pause(&progress(&acked)).await;
            }
        }
    };
    wait_writes(0).await;

    // Scale to 5: the new pods join ordinal 0 and are ready.
    sts.upgrade(5);
    sts.start(3);
    sts.start(4);
    sts.wait_ready(3);
    sts.wait_ready(4);
    let nodes = sts.shoalctl(4, &["node", "list"]);
    assert_eq!(nodes.as_array().map(Vec::len), Some(5), "{nodes}");
    wait_writes(progress(&acked)).await;

    // Scale back to 3: drain the highest ordinals (nodes 5 and 4), remove them, stop them.
    for ordinal in [4u64, 3] {
        let id = (ordinal + 1).to_string();
        let drained = sts.shoalctl(0, &["node", "drain", &id, "--timeout-secs", "90"]);
        assert_eq!(drained["replicas"], serde_json::json!(0), "{drained}");
        sts.shoalctl(0, &["node", "remove", &id]);
        sts.stop(ordinal);
    }
    sts.upgrade(3);
    wait_writes(progress(&acked)).await;

    // Rolling restart from the highest ordinal: each pod stops (probes fail), comes back
    // ready, and the writes go on.
    for ordinal in [2u64, 1, 0] {
        sts.stop(ordinal);
        assert_eq!(
            sts.probe(ordinal, "/healthz"),
            None,
            "a stopped pod answers nothing"
        );
        sts.start(ordinal);
        sts.wait_ready(ordinal);
        wait_writes(progress(&acked)).await;
    }

    stop.store(true, Ordering::Relaxed);
    let searches = writer.await.unwrap();
    assert!(searches > 0);
    let acked = acked.lock().unwrap().clone();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", sts.grpc(1)))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let refused = PointServiceClient::new(channel.clone())
        .count(v1::CountRequest {
            collection: "sts".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let mut client = PointServiceClient::with_interceptor(channel, client_keys());
    for chunk in acked.chunks(500) {
        let got = client
            .get(v1::GetRequest {
                collection: "sts".into(),
                ids: chunk.iter().map(|id| (*id).into()).collect(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            got.missing.is_empty(),
            "{} acknowledged points lost, e.g. {:?}\n{}",
            got.missing.len(),
            got.missing.first(),
            sts.logs()
        );
    }
    eprintln!(
        "{} acknowledged points all present; {searches} searches answered",
        acked.len()
    );
}
