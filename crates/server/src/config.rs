//! Node configuration: serde structs with defaults, layered as defaults -> TOML file ->
//! `SHOAL__SECTION__KEY` environment variables -> command-line flags, then validated.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use shoal_index::SegmentConfig;
use shoal_raft::{NodeId, RaftConfig};
use shoal_types::Limits;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    pub cluster: ClusterConfig,
    pub raft: RaftConfig,
    pub limits: Limits,
    pub index: SegmentConfig,
    pub runtime: RuntimeConfig,
    pub log: LogConfig,
    pub security: SecurityConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Where RocksDB and segment files live.
    pub data_dir: PathBuf,
    /// gRPC address (public API, health, reflection).
    pub listen: SocketAddr,
    /// HTTP address for /metrics, /healthz and /readyz.
    pub http: SocketAddr,
    /// How long SIGTERM waits for in-flight requests, in seconds.
    pub shutdown_grace_secs: u64,
    /// On SIGTERM, how long the node tries to hand the leadership of its Raft groups to other
    /// replicas before it stops serving, in milliseconds; 0: no hand-off (the groups elect
    /// new leaders after their election timeout).
    pub handoff_timeout_ms: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("shoal-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 7600)),
            http: SocketAddr::from(([127, 0, 0, 1], 7680)),
            shutdown_grace_secs: 20,
            handoff_timeout_ms: 5000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's Raft id, unique in the cluster and never reused. Positive.
    pub node_id: NodeId,
    /// `host:port` of any member of the cluster to join. Unset: the node bootstraps a new
    /// cluster, unless its data directory already belongs to one.
    pub join: Option<String>,
    /// `host:port` other nodes reach this node's gRPC listener at. Default: `node.listen`
    /// (which must then not be a wildcard address such as 0.0.0.0).
    pub advertise: Option<String>,
    /// Local IP address that connections to other nodes are made from (default: chosen by
    /// the OS). For hosts with several addresses.
    pub source_ip: Option<std::net::IpAddr>,
    /// Voters of the meta group: the first nodes to join are voters, later ones learners.
    /// Odd, 1 to 7.
    pub meta_voters: usize,
    /// How long start-up waits for the cluster (a meta leader, the join), in seconds.
    pub leader_wait_secs: u64,
    /// Deadline of a request this node forwards to another, in milliseconds; also the
    /// deadline of a whole request the node's router fans out over shards.
    pub forward_timeout_ms: u64,
    /// For StatefulSet pods: take the node id from the host name's ordinal (`shoal-2` is node
    /// 3), so every pod of one template gets its own, stable id.
    pub node_id_from_hostname: bool,
    /// Whether the meta leader moves replicas between nodes to even out their counts (after a
    /// join, say). Drains move replicas either way. Off: replicas stay where they are
    /// placed or moved by hand (`shoalctl shard move`).
    pub rebalance: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node_id: 1,
            join: None,
            advertise: None,
            source_ip: None,
            meta_voters: 3,
            leader_wait_secs: 30,
            forward_timeout_ms: 30_000,
            node_id_from_hostname: false,
            rebalance: true,
        }
    }
}

impl ClusterConfig {
    /// The address peers use for this node.
    pub fn advertise(&self, listen: SocketAddr) -> String {
        self.advertise.clone().unwrap_or_else(|| listen.to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Async worker threads serving gRPC and HTTP (0 = number of CPUs).
    pub io_threads: usize,
    /// CPU pool for searches (0 = number of CPUs).
    pub search_threads: usize,
    /// CPU pool for index builds (0 = half the CPUs, at least 1). Also FAISS's OpenMP width.
    pub build_threads: usize,
    /// Async workers of the Raft runtime: elections, heartbeats, replication (0 = 2).
    pub raft_threads: usize,
}

impl RuntimeConfig {
    fn cpus() -> usize {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    }

    pub fn io_threads(&self) -> usize {
        if self.io_threads == 0 {
            Self::cpus()
        } else {
            self.io_threads
        }
    }

    pub fn search_threads(&self) -> usize {
        if self.search_threads == 0 {
            Self::cpus()
        } else {
            self.search_threads
        }
    }

    pub fn raft_threads(&self) -> usize {
        if self.raft_threads == 0 {
            2
        } else {
            self.raft_threads
        }
    }

    pub fn build_threads(&self) -> usize {
        if self.build_threads == 0 {
            (Self::cpus() / 2).max(1)
        } else {
            self.build_threads
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter, e.g. "info" or "shoal=debug,info". `RUST_LOG` overrides it.
    pub level: String,
    /// "text" or "json".
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// A file of API keys, one per line (`#` comments). Set: every gRPC call except health and
    /// reflection, and every Feast HTTP call, must carry `authorization: Bearer <key>` with one
    /// of them, and this process sends the first key to the nodes it calls. Unset: no
    /// authentication (only on a network nobody else can reach).
    pub api_keys_file: Option<PathBuf>,
    /// How often the keys file is read again, so a rotated Secret takes effect, in seconds.
    pub reload_secs: u64,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            api_keys_file: None,
            reload_secs: 10,
        }
    }
}

impl SecurityConfig {
    /// The keys this process accepts and sends: the open mode without a keys file.
    pub fn api_keys(&self) -> anyhow::Result<shoal_proto::auth::ApiKeys> {
        match &self.api_keys_file {
            None => Ok(shoal_proto::auth::ApiKeys::open()),
            Some(path) => {
                shoal_proto::auth::ApiKeys::from_file(path).map_err(|e| anyhow::anyhow!("{e}"))
            }
        }
    }
}

/// Flags given on the command line; each overrides the file and the environment.
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub join: Option<String>,
    pub advertise: Option<String>,
}

impl Config {
    /// The configuration from defaults, then `file`, then `SHOAL__*` environment variables,
    /// then `overrides`; the host name is `HOSTNAME`'s (see [`Config::resolve_identity`]).
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Self> {
        Self::load_as(file, overrides, std::env::var("HOSTNAME").ok().as_deref())
    }

    /// [`Config::load`] on a host named `hostname`.
    pub fn load_as(
        file: Option<&Path>,
        overrides: &Overrides,
        hostname: Option<&str>,
    ) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                bail!("config file {} does not exist", file.display());
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        figment = figment.merge(Env::prefixed("SHOAL__").split("__").lowercase(true));
        if let Some(dir) = &overrides.data_dir {
            figment = figment.merge(("node.data_dir", dir));
        }
        if let Some(listen) = overrides.listen {
            figment = figment.merge(("node.listen", listen));
        }
        if let Some(http) = overrides.http {
            figment = figment.merge(("node.http", http));
        }
        if let Some(join) = &overrides.join {
            figment = figment.merge(("cluster.join", join));
        }
        if let Some(advertise) = &overrides.advertise {
            figment = figment.merge(("cluster.advertise", advertise));
        }
        let mut config: Config = figment.extract().context("invalid configuration")?;
        config.resolve_identity(hostname)?;
        config.validate()?;
        Ok(config)
    }

    /// What pods of one StatefulSet template need: with `cluster.node_id_from_hostname`,
    /// the node id is the host name's ordinal plus one; and a `cluster.join` that names this
    /// node itself (every pod is told to join ordinal 0) means this node bootstraps.
    pub fn resolve_identity(&mut self, hostname: Option<&str>) -> anyhow::Result<()> {
        if self.cluster.node_id_from_hostname {
            let host = hostname
                .filter(|h| !h.is_empty())
                .context("cluster.node_id_from_hostname is set but HOSTNAME is not")?;
            let ordinal: u64 = host
                .rsplit_once('-')
                .and_then(|(_, n)| n.parse().ok())
                .with_context(|| {
                    format!("host name {host:?} does not end in -ORDINAL (cluster.node_id_from_hostname)")
                })?;
            self.cluster.node_id = ordinal + 1;
        }
        let own = self.cluster.advertise(self.node.listen);
        if self.cluster.join.as_deref() == Some(own.as_str()) {
            self.cluster.join = None;
        }
        Ok(())
    }

    /// What a node needs beyond [`Config::validate`]: an address its peers can dial. (A router
    /// has no peers calling it, so it may listen on 0.0.0.0 without `cluster.advertise`.)
    pub fn validate_node(&self) -> anyhow::Result<()> {
        if self.cluster.advertise.is_none() && self.node.listen.ip().is_unspecified() {
            bail!(
                "node.listen is {}, which peers cannot dial: set cluster.advertise to the \
                 host:port they should use",
                self.node.listen
            );
        }
        Ok(())
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        self.limits.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        self.index.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        self.raft.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        if self.cluster.node_id == 0 {
            bail!("cluster.node_id must be positive");
        }
        if self.cluster.leader_wait_secs == 0 {
            bail!("cluster.leader_wait_secs must be positive");
        }
        if self.cluster.forward_timeout_ms == 0 {
            bail!("cluster.forward_timeout_ms must be positive");
        }
        let voters = self.cluster.meta_voters;
        if voters == 0 || voters > 7 || voters.is_multiple_of(2) {
            bail!("cluster.meta_voters must be odd, from 1 to 7, got {voters}");
        }
        for (key, value) in [
            ("cluster.join", &self.cluster.join),
            ("cluster.advertise", &self.cluster.advertise),
        ] {
            if let Some(addr) = value {
                check_host_port(key, addr)?;
            }
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            bail!(
                "log.format must be \"text\" or \"json\", got {:?}",
                self.log.format
            );
        }
        if self.security.reload_secs == 0 {
            bail!("security.reload_secs must be positive");
        }
        if self.node.listen == self.node.http {
            bail!(
                "node.listen and node.http must differ (both {})",
                self.node.listen
            );
        }
        Ok(())
    }
}

/// `host:port` with a non-empty host and a numeric port.
fn check_host_port(key: &str, addr: &str) -> anyhow::Result<()> {
    let valid = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !valid {
        bail!("{key} must be host:port, got {addr:?}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn statefulset_pods_take_their_id_from_the_ordinal_and_ordinal_0_bootstraps() {
        let pod = |host: &str| {
            let mut config = Config::default();
            config.cluster.node_id_from_hostname = true;
            config.cluster.advertise =
                Some(format!("{host}.shoal-headless.db.svc.cluster.local:7600"));
            config.cluster.join = Some("shoal-0.shoal-headless.db.svc.cluster.local:7600".into());
            config.resolve_identity(Some(host)).map(|()| config)
        };
        let first = pod("shoal-0").unwrap();
        assert_eq!(first.cluster.node_id, 1);
        assert_eq!(
            first.cluster.join, None,
            "ordinal 0 joins itself: it bootstraps"
        );
        let third = pod("shoal-2").unwrap();
        assert_eq!(third.cluster.node_id, 3);
        assert!(third.cluster.join.is_some());
        assert!(pod("shoal").is_err());
        assert!(pod("shoal-x").is_err());
        let mut config = Config::default();
        config.cluster.node_id_from_hostname = true;
        assert!(config.resolve_identity(None).is_err());
        // Without the setting, the configured id stays.
        let mut config = Config::default();
        config.cluster.node_id = 7;
        config.resolve_identity(Some("shoal-2")).unwrap();
        assert_eq!(config.cluster.node_id, 7);
    }

    use std::io::Write;

    use super::*;

    fn load_toml(text: &str) -> anyhow::Result<Config> {
        let mut file = tempfile::NamedTempFile::new()?;
        file.write_all(text.as_bytes())?;
        Config::load(Some(file.path()), &Overrides::default())
    }

    #[test]
    fn the_example_file_parses_to_the_defaults() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/shoal.example.toml");
        let config = Config::load(Some(&example), &Overrides::default()).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn defaults_are_loopback_and_valid() {
        let config = Config::load(None, &Overrides::default()).unwrap();
        assert!(config.node.listen.ip().is_loopback());
        assert!(config.node.http.ip().is_loopback());
        assert_eq!(config.cluster.node_id, 1);
        assert_eq!(config.raft, RaftConfig::default());
    }

    #[test]
    fn file_then_flags_override() {
        let config =
            load_toml("[node]\nlisten = \"127.0.0.1:9000\"\n[index]\nseal_threshold = 5000\n")
                .unwrap();
        assert_eq!(config.node.listen.port(), 9000);
        assert_eq!(config.index.seal_threshold, 5000);
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(b"[node]\nlisten = \"127.0.0.1:9000\"\n")
            .unwrap();
        let overrides = Overrides {
            listen: Some("127.0.0.1:9100".parse().unwrap()),
            ..Overrides::default()
        };
        let config = Config::load(Some(file.path()), &overrides).unwrap();
        assert_eq!(config.node.listen.port(), 9100);
    }

    #[test]
    fn malformed_files_are_rejected_with_a_reason() {
        for (bad, key) in [
            ("[node\nlisten = 1", "node"),
            ("[node]\nlisten = \"not an address\"", "listen"),
            ("[node]\nunknown_key = 1", "unknown_key"),
            ("[limits]\nmax_k = 0", "max_k"),
            ("[log]\nformat = \"xml\"", "log.format"),
            ("[cluster]\nnode_id = 0", "cluster.node_id"),
            ("[cluster]\njoin = \"nowhere\"", "cluster.join"),
            ("[cluster]\nmeta_voters = 2", "cluster.meta_voters"),
            ("[cluster]\nunknown_key = 1", "unknown_key"),
            ("[raft]\nheartbeat_interval_ms = 0", "heartbeat_interval_ms"),
            ("[security]\nreload_secs = 0", "security.reload_secs"),
            ("[security]\napi_keys = \"x\"", "api_keys"),
        ] {
            let err = format!("{:#}", load_toml(bad).unwrap_err());
            assert!(
                err.contains(key),
                "error for {bad:?} should name {key:?}: {err}"
            );
        }
    }

    #[test]
    fn a_node_needs_an_address_its_peers_can_dial_and_a_router_does_not() {
        let wildcard = load_toml("[node]\nlisten = \"0.0.0.0:7600\"").unwrap();
        let err = format!("{:#}", wildcard.validate_node().unwrap_err());
        assert!(err.contains("cluster.advertise"), "{err}");
        let advertised =
            load_toml("[node]\nlisten = \"0.0.0.0:7600\"\n[cluster]\nadvertise = \"db-0:7600\"")
                .unwrap();
        advertised.validate_node().unwrap();
    }
}
