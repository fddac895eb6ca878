use std::fmt;

use serde::{Deserialize, Serialize};

/// Result alias used across the Shoal crates that speak in [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The small closed set of error classes. Every error in Shoal maps to exactly one code, and
/// the code alone decides the gRPC status and whether a client may retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The request is malformed or violates a documented limit.
    InvalidArgument,
    /// The named collection or point does not exist.
    NotFound,
    /// The collection already exists.
    AlreadyExists,
    /// The node is starting or shutting down, or a group has no leader; retry elsewhere or
    /// later.
    Unavailable,
    /// This node does not lead the Raft group the request needs; the request goes to the
    /// leader instead (nodes forward it themselves).
    NotLeader,
    /// The cluster is not in a state that allows the request (removing a node would leave a
    /// group without a majority, for example); the message says what to change.
    FailedPrecondition,
    /// A bug or an I/O failure; the message says which.
    Internal,
}

impl ErrorCode {
    /// Whether the same request may succeed if retried unchanged.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorCode::Unavailable | ErrorCode::NotLeader)
    }
}

/// An error with its class and a message meant for the person who sent the request.
/// Serializable, so a replicated command's result can travel back to the node that proposed it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    pub fn unknown_collection(name: &str) -> Self {
        Self::not_found(format!("collection {name:?} does not exist"))
    }
}
