//! Links between the nodes of a cluster that a test can cut, for partitions.
//!
//! Node `id` advertises a TCP proxy in front of its gRPC listener (`cluster.advertise`) and
//! connects to its peers from its own loopback address (`cluster.source_ip`).
//! So every connection between nodes (Raft, forwarding, joins, status) passes the proxy of the
//! node it goes to, which knows from the connection's source which node it comes from. Cutting
//! the link from node `a` to node `b` closes the connections `a` opened to `b` and refuses new
//! ones (accepts and closes them at once) until the link is healed. Test clients connect to
//! nodes directly, never through a proxy, and are never cut.
//!
//! Source addresses are 127.100.x.y (Linux binds any 127.0.0.0/8 address): apart from
//! 127.0.0.1 and the 127.1-64.x.y of the harness's per-process addresses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// The second byte of every node's source address.
const SOURCE_NET: u8 = 100;

/// The loopback address node `id` connects to its peers from.
fn source_ip(id: u64) -> IpAddr {
    assert!(id > 0 && id <= 0xffff, "node id {id} has no source address");
    let [.., high, low] = id.to_be_bytes();
    IpAddr::V4(Ipv4Addr::new(127, SOURCE_NET, high, low))
}

/// The node whose source address `ip` is.
fn node_at(ip: IpAddr) -> Option<u64> {
    match ip {
        IpAddr::V4(v4) => match v4.octets() {
            [127, SOURCE_NET, high, low] => Some(u64::from(u16::from_be_bytes([high, low]))),
            _ => None,
        },
        IpAddr::V6(_) => None,
    }
}

/// The links between nodes and the proxies that carry them. Dropping it stops the proxies
/// and closes every connection through them.
#[derive(Default)]
pub struct Network {
    links: Arc<Mutex<Links>>,
    proxies: Mutex<BTreeMap<u64, Proxy>>,
}

#[derive(Default)]
struct Links {
    /// Cut links, as (from, to).
    cut: BTreeSet<(u64, u64)>,
    /// The connections each link carries, to close when it is cut.
    open: BTreeMap<(u64, u64), Vec<AbortHandle>>,
}

struct Proxy {
    addr: SocketAddr,
    /// Bound by [`Network::node_env`], taken when [`Network::front`] starts the proxy.
    listener: Option<std::net::TcpListener>,
    task: Option<JoinHandle<()>>,
}

impl Network {
    /// The environment that makes node `id` reach and be reached by its peers through this
    /// network: it advertises its proxy's address and connects from its own source address.
    pub fn node_env(&self, id: u64) -> Vec<(String, String)> {
        let mut proxies = self.proxies.lock().unwrap();
        let proxy = proxies.entry(id).or_insert_with(|| {
            // A port the kernel picks, in one bind: probing with `free_addr` and binding again
            // races with nodes being spawned on other threads, whose processes hold a copy of
            // the probe's socket until they exec. A proxy never rebinds its port.
            let listener = std::net::TcpListener::bind((crate::loopback_ip(), 0)).unwrap();
            Proxy {
                addr: listener.local_addr().unwrap(),
                listener: Some(listener),
                task: None,
            }
        });
        vec![
            ("SHOAL__CLUSTER__ADVERTISE".into(), proxy.addr.to_string()),
            (
                "SHOAL__CLUSTER__SOURCE_IP".into(),
                source_ip(id).to_string(),
            ),
        ]
    }

    /// Starts node `id`'s proxy in front of `grpc`, its gRPC listener, on the current tokio
    /// runtime. Only the first call per node counts: a restarted node keeps its address.
    pub fn front(&self, id: u64, grpc: SocketAddr) {
        let mut proxies = self.proxies.lock().unwrap();
        let proxy = proxies.get_mut(&id).expect("node_env(id) first");
        if let Some(listener) = proxy.listener.take() {
            listener.set_nonblocking(true).unwrap();
            let listener = TcpListener::from_std(listener).unwrap();
            proxy.task = Some(tokio::spawn(serve(listener, id, grpc, self.links.clone())));
        }
    }

    /// The address node `id`'s peers reach it at.
    pub fn proxy_addr(&self, id: u64) -> SocketAddr {
        self.proxies.lock().unwrap()[&id].addr
    }

    /// Cuts the link from node `from` to node `to`: closes its connections, refuses new ones.
    pub fn cut(&self, from: u64, to: u64) {
        let mut links = self.links.lock().unwrap();
        links.cut.insert((from, to));
        for connection in links.open.remove(&(from, to)).unwrap_or_default() {
            connection.abort();
        }
    }

    /// Cuts node `id` off from every other node, both ways.
    pub fn isolate(&self, id: u64) {
        let others: Vec<u64> = self.proxies.lock().unwrap().keys().copied().collect();
        for other in others.into_iter().filter(|other| *other != id) {
            self.cut(id, other);
            self.cut(other, id);
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.links.lock().unwrap().cut.clear();
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // Also after a panic that poisoned a lock: a panic here would abort the test binary.
        let proxies = self
            .proxies
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        for proxy in proxies.values() {
            if let Some(task) = &proxy.task {
                task.abort();
            }
        }
        let links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
        for connection in links.open.values().flatten() {
            connection.abort();
        }
    }
}

/// Node `to`'s proxy: pipes each connection from a node whose link to `to` is not cut to
/// `target`.
async fn serve(listener: TcpListener, to: u64, target: SocketAddr, links: Arc<Mutex<Links>>) {
    loop {
        let Ok((inbound, peer)) = listener.accept().await else {
            continue;
        };
        // Only nodes use proxies: a connection from elsewhere is refused like a cut one.
        let Some(from) = node_at(peer.ip()) else {
            continue;
        };
        // The check and the registration under one lock, so that a cut closes every
        // connection it does not refuse.
        let mut links = links.lock().unwrap();
        if links.cut.contains(&(from, to)) {
            continue;
        }
        let connection = tokio::spawn(pipe(inbound, target)).abort_handle();
        let open = links.open.entry((from, to)).or_default();
        open.retain(|c| !c.is_finished());
        open.push(connection);
    }
}

async fn pipe(mut inbound: TcpStream, target: SocketAddr) {
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    // Raft's messages are small: Nagle's algorithm would delay each by tens of milliseconds.
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
}
