//! Test harness: starts real `shoal node` processes on free loopback ports, connects gRPC
//! clients, runs `shoalctl`, and cleans everything up on drop.
//!
//! Binaries are found in `$SHOAL_BIN_DIR`, else next to the test executable's `deps/`
//! directory (the cargo target directory); build them first with `cargo build --bins`.

#![allow(clippy::unwrap_used)] // test support: failing loudly is the point

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use npyz::WriterBuilder;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shoal_proto::v1::collection_service_client::CollectionServiceClient;
use shoal_proto::v1::point_service_client::PointServiceClient;
use tempfile::TempDir;
use tonic::transport::Channel;

/// How long a node may take to become ready.
pub const READY_DEADLINE: Duration = Duration::from_secs(120);

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

/// A free loopback port, chosen by the OS.
pub fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
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
        node.wait_ready();
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

    /// Runs `shoalctl --addr <node> ARGS`.
    pub fn shoalctl(&self, args: &[&str]) -> Output {
        Command::new(bin("shoalctl"))
            .arg("--addr")
            .arg(self.grpc.to_string())
            .args(args)
            .output()
            .unwrap()
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
