//! A `shoal-sidecar` process serving the model repository that `make model` fills.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{bin, free_addr, http_get, poll};

/// The model `make model` puts in the repository.
pub const MINILM: &str = "all-MiniLM-L6-v2";

/// The model repository: `SHOAL_MODEL_REPO` (set by `make test`), else `models/` at the
/// repository root.
pub fn model_repository() -> PathBuf {
    let dir = std::env::var_os("SHOAL_MODEL_REPO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"));
    assert!(
        dir.join(MINILM).join("model.safetensors").is_file(),
        "{} has no {MINILM}: run `make model` (or set SHOAL_MODEL_REPO)",
        dir.display()
    );
    dir
}

/// The Python with tritonclient, numpy and tokenizers (`make sidecar-venv`).
pub fn python() -> PathBuf {
    let python = std::env::var_os("SHOAL_SIDECAR_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv-sidecar/bin/python")
        });
    assert!(
        python.exists(),
        "{} not found: run `make sidecar-venv` (or set SHOAL_SIDECAR_PYTHON)",
        python.display()
    );
    python
}

/// A running sidecar; killed when dropped.
pub struct Sidecar {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    child: Child,
    log: PathBuf,
    _dir: TempDir,
}

impl Sidecar {
    /// Starts a sidecar over the model repository with `args` added, and waits until it is
    /// ready.
    pub fn start(args: &[&str]) -> Self {
        Self::start_on(free_addr(), free_addr(), args)
    }

    /// [`Sidecar::start`] on given addresses (a restart on the same ones).
    pub fn start_on(grpc: SocketAddr, http: SocketAddr, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sidecar.log");
        let child = Command::new(bin("shoal-sidecar"))
            .arg("--model-repository")
            .arg(model_repository())
            .args(["--grpc", &grpc.to_string(), "--http", &http.to_string()])
            .args(args)
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                std::fs::OpenOptions::new().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .unwrap();
        let mut sidecar = Sidecar {
            grpc,
            http,
            child,
            log,
            _dir: dir,
        };
        let ready = Instant::now() + Duration::from_secs(60);
        while http_get(http, "/v2/health/ready").map(|(s, _)| s) != Some(200) {
            if let Ok(Some(status)) = sidecar.child.try_wait() {
                panic!("shoal-sidecar exited ({status}):\n{}", sidecar.log());
            }
            assert!(
                Instant::now() < ready,
                "sidecar not ready:\n{}",
                sidecar.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        sidecar
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit status (within `limit`).
    pub fn terminate(&mut self, limit: Duration) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        poll("the sidecar to exit", limit, || {
            self.child.try_wait().unwrap()
        })
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
