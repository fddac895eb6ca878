//! Test harness: starts real `shoal node` processes on free loopback ports, connects gRPC
//! clients, runs `shoalctl`, and cleans everything up on drop.
//!
//! Binaries are found in `$SHOAL_BIN_DIR`, else next to the test executable's `deps/`
//! directory (the cargo target directory); build them first with `cargo build --bins`.

#![allow(clippy::unwrap_used)] // test support: failing loudly is the point

pub mod cluster;
pub mod proxy;
pub mod sidecar;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use npyz::WriterBuilder;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shoal_proto::v1::cluster_service_client::ClusterServiceClient;
use shoal_proto::v1::collection_service_client::CollectionServiceClient;
use shoal_proto::v1::point_service_client::PointServiceClient;
use tempfile::TempDir;
use tonic::transport::{Channel, Endpoint};

/// How long a node may take to become ready.
pub const READY_DEADLINE: Duration = Duration::from_secs(120);
/// Deadline of one gRPC call made over [`Node::channel`].
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("SHOAL_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().unwrap();
            exe.parent().and_then(Path::parent).unwrap().to_path_buf()
        });
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: run `cargo build --bins` first (or set SHOAL_BIN_DIR)",
        path.display()
    );
    path
}

/// Ports [`free_addr`] draws from: below the ranges operating systems take the local ports of
/// outgoing connections from (Linux 32768-60999, IANA 49152-65535), for where `loopback_ip`
/// is 127.0.0.1, which outgoing connections on loopback use.
const TEST_PORTS: std::ops::Range<u16> = 10_000..32_000;

/// This process's own loopback address, 127.x.y.z from its process id (unique among live
/// processes: Linux pids are below 2^22), so test processes running at the same time (test
/// binaries, or nextest's process per test) never compete for a port, not even for the port of
/// a node killed and about to restart. 127.0.0.1 where no other loopback address can be bound
/// (macOS configures only that one).
fn loopback_ip() -> Ipv4Addr {
    static IP: OnceLock<Ipv4Addr> = OnceLock::new();
    *IP.get_or_init(|| {
        let pid = std::process::id();
        let [_, high, mid, low] = pid.to_be_bytes();
        let ip = Ipv4Addr::new(127, 1 + (high & 0x3f), mid, low);
        if TcpListener::bind((ip, 0)).is_ok() {
            ip
        } else {
            Ipv4Addr::LOCALHOST
        }
    })
}

/// A free address on `loopback_ip`. Ports are drawn at random (seeded by the process id) and
/// never handed out twice in one process.
pub fn free_addr() -> SocketAddr {
    static DRAWN: Mutex<Option<(ChaCha8Rng, HashSet<u16>)>> = Mutex::new(None);
    let ip = loopback_ip();
    let mut drawn = DRAWN.lock().unwrap();
    let (rng, given) = drawn.get_or_insert_with(|| {
        let seed = u64::from(std::process::id());
        (ChaCha8Rng::seed_from_u64(seed), HashSet::new())
    });
    for _ in 0..TEST_PORTS.len() {
        let port = rng.random_range(TEST_PORTS);
        if !given.insert(port) {
            continue;
        }
        if let Ok(listener) = TcpListener::bind((ip, port)) {
            return listener.local_addr().unwrap();
        }
    }
    panic!("no free port in {TEST_PORTS:?} on {ip}");
}

/// Polls `check` until it returns `Some` or `deadline` passes.
pub fn poll<T>(what: &str, deadline: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A deadline for polling loops in async code:
///
/// ```ignore
/// let deadline = Deadline::new("the replica to catch up", Duration::from_secs(30));
/// while !caught_up().await {
///     deadline.pause(&state).await;
/// }
/// ```
///
/// `pause` waits one polling interval, or panics with `what` and the last state seen once the
/// deadline has passed.
#[derive(Debug)]
pub struct Deadline {
    what: String,
    limit: Duration,
    end: Instant,
}

impl Deadline {
    pub fn new(what: impl Into<String>, limit: Duration) -> Self {
        Self {
            what: what.into(),
            limit,
            end: Instant::now() + limit,
        }
    }

    pub async fn pause(&self, last: &dyn std::fmt::Debug) {
        assert!(
            Instant::now() < self.end,
            "timed out after {:?} waiting for {}; last seen: {last:#?}",
            self.limit,
            self.what
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A plain HTTP/1.0 GET against loopback; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// A plain HTTP/1.1 POST (one request per connection) against loopback with `headers`;
/// returns (status, body).
pub fn http_post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut request = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The header of a JSON body, for [`http_post`].
pub const JSON: (&str, &str) = ("Content-Type", "application/json");

/// A `shoal node` process with its own data directory.
pub struct Node {
    pub dir: TempDir,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Node {
    /// Starts a node on a new data directory and waits until it is ready.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a node with extra `shoal node` arguments (e.g. `--config FILE`).
    pub fn start_with(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// Starts a node with extra arguments and environment variables (e.g. `SHOAL__...`).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut node = Self::spawn_with_env(args, env);
        node.wait_ready();
        node
    }

    /// Starts a node with extra arguments and environment variables without waiting for it to
    /// be ready (see [`Node::wait_ready`] and [`Node::wait_exit`]).
    pub fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut node = Node {
            dir: tempfile::tempdir().unwrap(),
            grpc: free_addr(),
            http: free_addr(),
            extra_args: args.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
        };
        node.spawn();
        node
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("node.log")
    }

    /// The node's log so far, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(bin("shoal"))
            .arg("node")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen")
            .arg(self.grpc.to_string())
            .arg("--http")
            .arg(self.http.to_string())
            .args(&self.extra_args)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn wait_ready(&mut self) {
        let http = self.http;
        let child = self.child.as_mut().unwrap();
        let end = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "shoal node exited with {status} before it was ready:\n{}",
                    self.log()
                );
            }
            if matches!(http_get(http, "/readyz"), Some((200, _))) {
                return;
            }
            assert!(
                Instant::now() < end,
                "node not ready after {READY_DEADLINE:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits, up to `limit`, for a node that is expected to fail to exit; returns its status.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("the node was not started");
        let status = poll("node to exit", limit, || child.try_wait().unwrap());
        self.child = None;
        status
    }

    /// kill -9: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for a clean exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let status = poll(
            "node to exit after SIGTERM",
            Duration::from_secs(60),
            || child.try_wait().unwrap(),
        );
        status.code()
    }

    /// Starts the node again on the same data directory and ports.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
        self.wait_ready();
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub async fn collections(&self) -> CollectionServiceClient<Channel> {
        CollectionServiceClient::connect(self.endpoint())
            .await
            .unwrap()
    }

    pub async fn points(&self) -> PointServiceClient<Channel> {
        PointServiceClient::connect(self.endpoint())
            .await
            .unwrap()
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20)
    }

    /// A channel to the node that connects on first use and reconnects after a restart, so
    /// it can be made while the node is down; calls fail after [`CALL_TIMEOUT`].
    pub fn channel(&self) -> Channel {
        Endpoint::from_shared(self.endpoint())
            .unwrap()
            .connect_timeout(Duration::from_secs(1))
            .timeout(CALL_TIMEOUT)
            .connect_lazy()
    }

    /// A `PointService` client over [`Node::channel`].
    pub fn points_lazy(&self) -> PointServiceClient<Channel> {
        PointServiceClient::new(self.channel())
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20)
    }

    /// A `ClusterService` client over [`Node::channel`].
    pub fn cluster(&self) -> ClusterServiceClient<Channel> {
        ClusterServiceClient::new(self.channel())
    }

    /// Runs `shoalctl --addr <node> ARGS`. A `SHOAL_API_KEY` in the node's environment (the
    /// node ignores it) is the key shoalctl sends, for nodes started with API keys.
    pub fn shoalctl(&self, args: &[&str]) -> Output {
        let key = self.env.iter().find(|(k, _)| k == "SHOAL_API_KEY");
        let mut command = Command::new(bin("shoalctl"));
        command
            .arg("--addr")
            .arg(self.grpc.to_string())
            .args(args)
            .env_remove("SHOAL_API_KEY");
        if let Some((_, key)) = key {
            command.env("SHOAL_API_KEY", key);
        }
        command.output().unwrap()
    }

    /// Creates a collection with `shoalctl collection create`, asserting success. `extra` holds
    /// further flags such as `--param efSearch=64`.
    pub fn create_collection(
        &self,
        name: &str,
        dim: u32,
        metric: &str,
        index: &str,
        extra: &[&str],
    ) {
        let dim = dim.to_string();
        let mut args = vec![
            "collection",
            "create",
            name,
            "--dim",
            &dim,
            "--metric",
            metric,
            "--index",
            index,
        ];
        args.extend_from_slice(extra);
        let out = self.shoalctl(&args);
        assert!(
            out.status.success(),
            "shoalctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `shoalctl ARGS`, asserting success.
    pub fn shoalctl_ok(&self, args: &[&str]) -> Output {
        let out = self.shoalctl(args);
        assert!(
            out.status.success(),
            "shoalctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs `shoalctl --output json ...`, asserts success and parses stdout.
    pub fn shoalctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = vec!["--output", "json"];
        full.extend_from_slice(args);
        let out = self.shoalctl(&full);
        assert!(
            out.status.success(),
            "shoalctl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "shoalctl {args:?} printed invalid JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `n` seeded random vectors of dimension `dim` in [-1, 1).
pub fn random_vectors(seed: u64, n: usize, dim: usize) -> Vec<Vec<f32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect()
}

/// Writes vectors as a float32 `.npy` file.
pub fn write_npy(path: &Path, vectors: &[Vec<f32>]) {
    let dim = vectors.first().map_or(0, Vec::len) as u64;
    let mut writer = npyz::WriteOptions::<f32>::new()
        .default_dtype()
        .shape(&[vectors.len() as u64, dim])
        .writer(std::fs::File::create(path).unwrap())
        .begin_nd()
        .unwrap();
    for v in vectors {
        writer.extend(v.iter().copied()).unwrap();
    }
    writer.finish().unwrap();
}

/// Reads the first `limit` rows of a float32 `.npy` matrix.
pub fn read_npy(path: &Path, limit: usize) -> Vec<Vec<f32>> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = npy.shape().to_vec();
    let dim = shape[1] as usize;
    let data: Vec<f32> = npy.into_vec().unwrap();
    data.chunks_exact(dim)
        .take(limit)
        .map(<[f32]>::to_vec)
        .collect()
}

/// The GloVe-50 matrix fetched by `make data` (`$SHOAL_GLOVE`, default `data/glove-50.npy`).
pub fn glove_path() -> PathBuf {
    let path = std::env::var_os("SHOAL_GLOVE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/glove-50.npy"));
    assert!(
        path.exists(),
        "{} is missing: run `make data` (scripts/fetch-glove.sh)",
        path.display()
    );
    path
}
