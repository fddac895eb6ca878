//! API keys: the bearer key every client sends and the keys a server accepts.
//!
//! Keys live in a file, one per line (blank lines and `#` comments are skipped), that a
//! Kubernetes Secret mounts. A line `KEY read-only` gives a key that may only read: search,
//! get, count, describe and list, and online feature reads. A server accepts any key in the file; a process that calls other
//! nodes (node to node, router to node, Raft) sends the first. Rotation is therefore: add the
//! new key as a second line everywhere, make it the first, then remove the old one. The file
//! is read again by [`ApiKeys::reload`], so a rotated Secret takes effect without a restart.
//!
//! Without a keys file every request is accepted and nothing is sent: the open mode for a
//! laptop or a network that is already private.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use tonic::codegen::http::{self, header::AUTHORIZATION, HeaderMap};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Shortest key accepted: 128 bits of entropy as hex is 32 characters; 16 is the floor below
/// which a key is a password, not a key.
pub const MIN_KEY_LEN: usize = 16;
const MAX_KEY_LEN: usize = 512;

/// gRPC services answered without a key: Kubernetes' gRPC probes and schema discovery, neither
/// of which reads or changes data.
const OPEN_SERVICES: [&str; 2] = [
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
];

/// The gRPC methods a read-only key may call: they change nothing.
const READ_METHODS: [&str; 13] = [
    "/shoal.v1.PointService/Search",
    "/shoal.v1.PointService/Get",
    "/shoal.v1.PointService/Count",
    "/shoal.v1.CollectionService/DescribeCollection",
    "/shoal.v1.CollectionService/ListCollections",
    "/shoal.v1.FeatureService/GetOnlineFeatures",
    "/shoal.v1.FeatureService/ListFeatureViews",
    "/shoal.v1.FeatureService/DescribeFeatureView",
    "/shoal.v1.FeatureService/ListFeatureServices",
    "/shoal.v1.FeatureService/DescribeFeatureService",
    "/shoal.v1.ClusterService/ClusterStatus",
    "/shoal.v1.ClusterService/ListNodes",
    "/shoal.v1.ClusterService/ListShards",
];

/// Whether the gRPC method at `path` only reads.
pub fn is_read(path: &str) -> bool {
    READ_METHODS.contains(&path)
}

/// What a key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Full,
    ReadOnly,
}

/// A channel that sends this process's API key with every call.
pub type AuthChannel = InterceptedService<tonic::transport::Channel, ApiKeys>;

/// Wraps `channel` so every call on it carries `keys`' outgoing key.
pub fn authed(channel: tonic::transport::Channel, keys: &ApiKeys) -> AuthChannel {
    InterceptedService::new(channel, keys.clone())
}

/// The keys of one process, shared by its servers and its clients. Cheap to clone.
#[derive(Clone, Default)]
pub struct ApiKeys {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// `None`: the open mode (no keys file).
    path: Option<PathBuf>,
    loaded: RwLock<Arc<Loaded>>,
    counts: Counts,
}

/// Checks since start, by outcome.
#[derive(Default)]
struct Counts {
    accepted_first: AtomicU64,
    accepted_other: AtomicU64,
    missing: AtomicU64,
    malformed: AtomicU64,
    wrong: AtomicU64,
    read_only: AtomicU64,
}

/// How many requests [`ApiKeys::check`] accepted and refused since the process started.
/// During a rotation, `accepted_other` (a key other than the file's first) stops growing once
/// every client and process sends the new key: then the old one can go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub accepted_first: u64,
    pub accepted_other: u64,
    pub missing: u64,
    pub malformed: u64,
    pub wrong: u64,
    /// Writes refused because the key is read-only.
    pub read_only: u64,
}

#[derive(Default, PartialEq)]
struct Loaded {
    accepted: Vec<(String, Access)>,
    /// `Bearer <first key>`, marked sensitive so it is never logged.
    outgoing: Option<MetadataValue<Ascii>>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("path", &self.inner.path)
            .field("keys", &self.loaded().accepted.len())
            .finish()
    }
}

impl ApiKeys {
    /// The open mode: accepts every request, sends no key.
    pub fn open() -> Self {
        Self::default()
    }

    /// Keys from `path`; an unreadable file, or one without a valid key, is an error.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let loaded = read(path)?;
        Ok(Self {
            inner: Arc::new(Inner {
                path: Some(path.to_owned()),
                loaded: RwLock::new(Arc::new(loaded)),
                counts: Counts::default(),
            }),
        })
    }

    /// A client's key, given on its command line or environment (sent, never checked).
    pub fn client(key: &str) -> Result<Self, String> {
        let loaded = parse(key).map_err(|e| format!("API key: {e}"))?;
        Ok(Self {
            inner: Arc::new(Inner {
                path: None,
                loaded: RwLock::new(Arc::new(loaded)),
                counts: Counts::default(),
            }),
        })
    }

    /// Whether requests must carry a key.
    pub fn required(&self) -> bool {
        self.inner.path.is_some()
    }

    /// Reads the keys file again. `Ok(true)` when the keys changed. On an error (the file is
    /// gone, empty or holds a bad key) the keys in use stay: a half-written Secret must not
    /// lock every client out.
    pub fn reload(&self) -> Result<bool, String> {
        let Some(path) = &self.inner.path else {
            return Ok(false);
        };
        let fresh = read(path)?;
        let mut loaded = self
            .inner
            .loaded
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if **loaded == fresh {
            return Ok(false);
        }
        *loaded = Arc::new(fresh);
        Ok(true)
    }

    fn loaded(&self) -> Arc<Loaded> {
        self.inner
            .loaded
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Checks the `authorization: Bearer <key>` header of a request, which only reads if
    /// `read` (see [`is_read`]).
    pub fn check(&self, headers: &HeaderMap, read: bool) -> Result<(), Rejected> {
        if !self.required() {
            return Ok(());
        }
        let verdict = self.verdict(headers).and_then(|(position, access)| {
            if access == Access::ReadOnly && !read {
                Err(Rejected::ReadOnly)
            } else {
                Ok(position)
            }
        });
        let counts = &self.inner.counts;
        let counter = match verdict {
            Ok(0) => &counts.accepted_first,
            Ok(_) => &counts.accepted_other,
            Err(Rejected::Missing) => &counts.missing,
            Err(Rejected::Malformed) => &counts.malformed,
            Err(Rejected::Wrong) => &counts.wrong,
            Err(Rejected::ReadOnly) => &counts.read_only,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        verdict.map(|_| ())
    }

    /// The position in the file of the key a request carries, and what it may do.
    fn verdict(&self, headers: &HeaderMap) -> Result<(usize, Access), Rejected> {
        let Some(value) = headers.get(AUTHORIZATION) else {
            return Err(Rejected::Missing);
        };
        let presented = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or(Rejected::Malformed)?;
        // Every key is compared, each with a comparison whose time does not depend on where
        // the bytes differ, so the time taken does not tell how much of a key matched.
        let loaded = self.loaded();
        let matched =
            loaded
                .accepted
                .iter()
                .enumerate()
                .fold(None, |found, (position, (key, access))| {
                    let equal =
                        constant_time_eq::constant_time_eq(key.as_bytes(), presented.as_bytes());
                    found.or(equal.then_some((position, *access)))
                });
        matched.ok_or(Rejected::Wrong)
    }

    /// The checks since the process started (all zero in the open mode).
    pub fn tally(&self) -> Tally {
        let counts = &self.inner.counts;
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Tally {
            accepted_first: read(&counts.accepted_first),
            accepted_other: read(&counts.accepted_other),
            missing: read(&counts.missing),
            malformed: read(&counts.malformed),
            wrong: read(&counts.wrong),
            read_only: read(&counts.read_only),
        }
    }
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejected {
    Missing,
    Malformed,
    Wrong,
    /// A read-only key on a call that writes.
    ReadOnly,
}

impl Rejected {
    pub fn message(self) -> &'static str {
        match self {
            Rejected::Missing => {
                "this server requires an API key: send the header `authorization: Bearer <key>` \
                 (shoalctl: --api-key or SHOAL_API_KEY)"
            }
            Rejected::Malformed => {
                "the authorization header must be `Bearer <key>` with a printable ASCII key"
            }
            Rejected::Wrong => "the API key was not accepted",
            Rejected::ReadOnly => {
                "this API key is read-only: it may search, get, count, describe, list and read \
                 online features, not write or administer"
            }
        }
    }
}

impl From<Rejected> for Status {
    fn from(rejected: Rejected) -> Self {
        match rejected {
            Rejected::ReadOnly => Status::permission_denied(rejected.message()),
            _ => Status::unauthenticated(rejected.message()),
        }
    }
}

/// A peer's UNAUTHENTICATED as this process reports it: the peer refused the key this
/// process sends (keys files that differ, or a rotation done out of order), which is the
/// cluster's problem, not the client's: UNAVAILABLE, with the peer named.
fn refused_by_peer(peer: &str, status: &Status) -> Status {
    Status::unavailable(format!(
        "node {peer} refused this node's API key ({}): the processes' keys files differ, or a \
         rotation removed a key some process still sends",
        status.message()
    ))
}

/// `status` from a call to `peer`, with UNAUTHENTICATED made [`refused_by_peer`].
pub fn from_peer(peer: &str, status: Status) -> Status {
    if status.code() == tonic::Code::Unauthenticated {
        refused_by_peer(peer, &status)
    } else {
        status
    }
}

fn read(path: &Path) -> Result<Loaded, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the API keys file {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("API keys file {}: {e}", path.display()))
}

fn parse(text: &str) -> Result<Loaded, String> {
    let mut accepted = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let number = number + 1;
        let mut words = line.split_ascii_whitespace();
        let key = words.next().unwrap_or_default();
        let access = match (words.next(), words.next()) {
            (None, _) => Access::Full,
            (Some("read-only"), None) => Access::ReadOnly,
            _ => {
                return Err(format!(
                    "line {number}: expected `KEY` or `KEY read-only` (a key has no spaces)"
                ))
            }
        };
        if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&key.len()) {
            return Err(format!(
                "line {number}: a key must be {MIN_KEY_LEN} to {MAX_KEY_LEN} characters long, this \
                 one has {}",
                key.len()
            ));
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "line {number}: a key must be printable ASCII without spaces"
            ));
        }
        if accepted.is_empty() && access == Access::ReadOnly {
            return Err(format!(
                "line {number}: the first key is the one processes send each other, so it needs \
                 full access; put read-only keys after it"
            ));
        }
        accepted.push((key.to_owned(), access));
    }
    let Some((first, _)) = accepted.first() else {
        return Err("no key in it (one key per line; `#` starts a comment)".to_owned());
    };
    let mut outgoing = MetadataValue::try_from(format!("Bearer {first}"))
        .map_err(|e| format!("the first key cannot be sent in a header: {e}"))?;
    outgoing.set_sensitive(true);
    Ok(Loaded {
        accepted,
        outgoing: Some(outgoing),
    })
}

/// Adds the outgoing key to each call of a client.
impl Interceptor for ApiKeys {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.loaded().outgoing {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A tower layer for tonic's `Server::builder().layer(..)`: refuses calls without an accepted
/// key with UNAUTHENTICATED before they reach any service, except the health and reflection
/// services.
#[derive(Clone, Debug)]
pub struct RequireApiKey {
    keys: ApiKeys,
}

impl RequireApiKey {
    pub fn new(keys: ApiKeys) -> Self {
        Self { keys }
    }
}

impl<S> tower_layer::Layer<S> for RequireApiKey {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded {
            inner,
            keys: self.keys.clone(),
        }
    }
}

/// The service [`RequireApiKey`] makes.
#[derive(Clone, Debug)]
pub struct Guarded<S> {
    inner: S,
    keys: ApiKeys,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower_service::Service<http::Request<B>> for Guarded<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let open = OPEN_SERVICES.iter().any(|prefix| path.starts_with(prefix));
        let verdict = if open {
            Ok(())
        } else {
            self.keys.check(request.headers(), is_read(path))
        };
        match verdict {
            Ok(()) => Box::pin(self.inner.call(request)),
            Err(rejected) => {
                let response = Status::from(rejected).into_http();
                Box::pin(std::future::ready(Ok(response)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::codegen::http::HeaderValue;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_str(value).expect("header"));
        headers
    }

    #[test]
    fn the_open_mode_accepts_everything_and_sends_nothing() {
        let keys = ApiKeys::open();
        assert!(!keys.required());
        assert_eq!(keys.check(&HeaderMap::new(), true), Ok(()));
        assert!(keys.loaded().outgoing.is_none());
    }

    #[test]
    fn any_listed_key_is_accepted_and_the_first_is_sent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys");
        std::fs::write(
            &path,
            "# rotated 2026-11\nnew-key-0123456789\n\n  old-key-0123456789  \n",
        )
        .expect("write");
        let keys = ApiKeys::from_file(&path).expect("keys");
        assert!(keys.required());
        assert_eq!(
            keys.check(&headers("Bearer new-key-0123456789"), true),
            Ok(())
        );
        assert_eq!(
            keys.check(&headers("Bearer old-key-0123456789"), true),
            Ok(())
        );
        assert_eq!(
            keys.check(&headers("Bearer old-key-012345678"), true),
            Err(Rejected::Wrong)
        );
        assert_eq!(
            keys.check(&headers("old-key-0123456789"), true),
            Err(Rejected::Malformed)
        );
        assert_eq!(keys.check(&HeaderMap::new(), true), Err(Rejected::Missing));
        assert_eq!(
            keys.tally(),
            Tally {
                accepted_first: 1,
                accepted_other: 1,
                missing: 1,
                malformed: 1,
                wrong: 1,
                read_only: 0,
            }
        );
        let sent = keys.loaded().outgoing.clone().expect("outgoing");
        assert_eq!(sent.to_str().ok(), Some("Bearer new-key-0123456789"));
        assert!(sent.is_sensitive());
        assert!(!format!("{keys:?}").contains("key-0123"));
    }

    #[test]
    fn reload_swaps_keys_and_keeps_them_when_the_file_is_bad() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys");
        std::fs::write(&path, "first-key-0123456789\n").expect("write");
        let keys = ApiKeys::from_file(&path).expect("keys");
        assert_eq!(keys.reload(), Ok(false));

        std::fs::write(&path, "second-key-0123456789\n").expect("write");
        assert_eq!(keys.reload(), Ok(true));
        assert_eq!(
            keys.check(&headers("Bearer first-key-0123456789"), true),
            Err(Rejected::Wrong)
        );
        assert_eq!(
            keys.check(&headers("Bearer second-key-0123456789"), true),
            Ok(())
        );

        std::fs::write(&path, "# emptied by mistake\n").expect("write");
        assert!(keys.reload().is_err());
        assert_eq!(
            keys.check(&headers("Bearer second-key-0123456789"), true),
            Ok(())
        );
        std::fs::remove_file(&path).expect("remove");
        assert!(keys.reload().is_err());
        assert_eq!(
            keys.check(&headers("Bearer second-key-0123456789"), true),
            Ok(())
        );
    }

    #[test]
    fn bad_key_files_are_refused_with_the_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys");
        for (text, expected) in [
            ("", "no key in it"),
            ("# only a comment\n", "no key in it"),
            ("short\n", "line 1: a key must be 16 to 512 characters long"),
            (
                "good-key-0123456789\nhas a space in it\n",
                "line 2: expected `KEY` or `KEY read-only`",
            ),
            (
                "good-key-0123456789\nother-key-0123456789 read-write\n",
                "line 2: expected",
            ),
            (
                "reader-key-0123456789 read-only\n",
                "line 1: the first key is the one processes send",
            ),
            (
                "good-key-0123456789\nnon-ascii-kéy-0123456789\n",
                "line 2: a key must be printable",
            ),
        ] {
            std::fs::write(&path, text).expect("write");
            let err = ApiKeys::from_file(&path).expect_err(text);
            assert!(err.contains(expected), "{text:?}: {err}");
        }
        let err = ApiKeys::from_file(&dir.path().join("missing")).expect_err("missing");
        assert!(err.contains("cannot read the API keys file"), "{err}");
        assert!(ApiKeys::client("short").is_err());
    }

    #[test]
    fn a_read_only_key_reads_and_is_refused_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys");
        std::fs::write(
            &path,
            "full-key-0123456789\nreader-key-0123456789  read-only\n",
        )
        .expect("write");
        let keys = ApiKeys::from_file(&path).expect("keys");
        let reader = headers("Bearer reader-key-0123456789");
        assert_eq!(keys.check(&reader, true), Ok(()));
        assert_eq!(keys.check(&reader, false), Err(Rejected::ReadOnly));
        assert_eq!(
            keys.check(&headers("Bearer full-key-0123456789"), false),
            Ok(())
        );
        assert_eq!(keys.tally().read_only, 1);
        assert_eq!(
            Status::from(Rejected::ReadOnly).code(),
            tonic::Code::PermissionDenied
        );
        assert!(is_read("/shoal.v1.PointService/Search"));
        assert!(!is_read("/shoal.v1.PointService/Upsert"));
        assert!(!is_read("/shoal.internal.v1.RaftService/Vote"));
    }
}
