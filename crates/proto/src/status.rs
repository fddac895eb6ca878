use shoal_types::{Error, ErrorCode};
use tonic::{Code, Status};

/// The only place a domain error becomes a gRPC status.
pub fn status_from_error(err: Error) -> Status {
    let code = match err.code {
        ErrorCode::InvalidArgument => Code::InvalidArgument,
        ErrorCode::NotFound => Code::NotFound,
        ErrorCode::AlreadyExists => Code::AlreadyExists,
        ErrorCode::ResourceExhausted => Code::ResourceExhausted,
        ErrorCode::Unavailable => Code::Unavailable,
        ErrorCode::Internal => Code::Internal,
    };
    Status::new(code, err.message)
}

/// The inverse, for clients that want to reason about a status by its class.
pub fn error_from_status(status: &Status) -> Error {
    let code = match status.code() {
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
            ErrorCode::InvalidArgument
        }
        Code::NotFound => ErrorCode::NotFound,
        Code::AlreadyExists => ErrorCode::AlreadyExists,
        Code::ResourceExhausted => ErrorCode::ResourceExhausted,
        Code::Unavailable | Code::DeadlineExceeded | Code::Aborted => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    };
    Error::new(code, status.message())
}
