use shoal_types::{Error, ErrorCode};
use tonic::{Code, Status};

/// The only place a domain error becomes a gRPC status.
pub fn status_from_error(err: Error) -> Status {
    let code = match err.code {
        ErrorCode::InvalidArgument => Code::InvalidArgument,
        ErrorCode::NotFound => Code::NotFound,
        ErrorCode::AlreadyExists => Code::AlreadyExists,
        ErrorCode::Unavailable | ErrorCode::NotLeader => Code::Unavailable,
        ErrorCode::FailedPrecondition => Code::FailedPrecondition,
        ErrorCode::Internal => Code::Internal,
    };
    Status::new(code, err.message)
}
