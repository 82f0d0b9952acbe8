//! Errors of the data plane: start-up failures ([`ProxyError`]) and per-request failures
//! ([`HttpError`]) classified by who is to blame and whether a retry is safe.

use http::StatusCode;
use std::fmt;

/// A failure to start the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A worker thread or its runtime could not be created.
    #[error("cannot start proxy worker {worker}: {source}")]
    Worker {
        /// Index of the worker.
        worker: usize,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Invalid options.
    #[error("invalid proxy options: {0}")]
    Options(String),
}

/// Who caused a request to fail (pingora's `ErrorSource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorSource {
    /// The downstream client (bad request, went away, sent nothing in time).
    Client,
    /// The upstream endpoint (refused, reset, timed out, spoke garbage).
    Upstream,
    /// The configuration (no route, invalid or missing backend, no endpoints).
    Config,
    /// Sluice itself.
    Internal,
}

impl fmt::Display for ErrorSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorSource::Client => "client",
            ErrorSource::Upstream => "upstream",
            ErrorSource::Config => "config",
            ErrorSource::Internal => "internal",
        })
    }
}

/// Whether the failed attempt may be repeated (pingora's `RetryType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryType {
    /// Nothing reached the upstream application (connect failed, or a pooled connection was
    /// found closed before the request was written): always safe to repeat.
    Safe,
    /// The request may have been processed; repeat only when a retry policy asks for it.
    Policy,
    /// Never repeat (config errors, client errors, a request body already streamed).
    Never,
}

/// What went wrong with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// No virtual host or route matches (404).
    NoRoute,
    /// The route has no backends, all weights are 0, or the chosen backend is invalid (500).
    InvalidBackend,
    /// The chosen cluster has no usable endpoint (503).
    NoEndpoint,
    /// TCP connect to the endpoint failed (502).
    ConnectFailed,
    /// TCP connect did not finish within the cluster's connect timeout (504).
    ConnectTimeout,
    /// The upstream closed, reset or sent an invalid response (502).
    UpstreamProtocol,
    /// `timeouts.request` elapsed (504).
    RequestTimeout,
    /// `timeouts.backendRequest` elapsed for the last attempt (504).
    BackendTimeout,
    /// The client request was malformed (400).
    BadRequest,
    /// The listener protocol is not served (501).
    NotImplemented,
}

impl ErrorKind {
    /// The HTTP status answered for this kind.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::NoRoute => StatusCode::NOT_FOUND,
            ErrorKind::InvalidBackend => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::NoEndpoint => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::ConnectFailed | ErrorKind::UpstreamProtocol => StatusCode::BAD_GATEWAY,
            ErrorKind::ConnectTimeout | ErrorKind::RequestTimeout | ErrorKind::BackendTimeout => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::NotImplemented => StatusCode::NOT_IMPLEMENTED,
        }
    }

    /// The gRPC status code answered on gRPC routes.
    pub fn grpc_status(self) -> u8 {
        match self {
            ErrorKind::NoRoute | ErrorKind::NotImplemented => 12, // UNIMPLEMENTED
            ErrorKind::InvalidBackend => 13,                      // INTERNAL
            ErrorKind::NoEndpoint | ErrorKind::ConnectFailed | ErrorKind::UpstreamProtocol => 14, // UNAVAILABLE
            ErrorKind::ConnectTimeout | ErrorKind::RequestTimeout | ErrorKind::BackendTimeout => 4, // DEADLINE_EXCEEDED
            ErrorKind::BadRequest => 3, // INVALID_ARGUMENT
        }
    }

    /// Who is to blame.
    pub fn source(self) -> ErrorSource {
        match self {
            ErrorKind::NoRoute | ErrorKind::InvalidBackend | ErrorKind::NoEndpoint => {
                ErrorSource::Config
            }
            ErrorKind::ConnectFailed
            | ErrorKind::ConnectTimeout
            | ErrorKind::UpstreamProtocol
            | ErrorKind::BackendTimeout => ErrorSource::Upstream,
            ErrorKind::RequestTimeout => ErrorSource::Upstream,
            ErrorKind::BadRequest => ErrorSource::Client,
            ErrorKind::NotImplemented => ErrorSource::Internal,
        }
    }

    /// Short text for logs and the error body.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NoRoute => "no route matches the request",
            ErrorKind::InvalidBackend => "the route has no valid backend",
            ErrorKind::NoEndpoint => "no healthy upstream endpoint",
            ErrorKind::ConnectFailed => "upstream connect failed",
            ErrorKind::ConnectTimeout => "upstream connect timed out",
            ErrorKind::UpstreamProtocol => "upstream connection failed",
            ErrorKind::RequestTimeout => "request timed out",
            ErrorKind::BackendTimeout => "upstream request timed out",
            ErrorKind::BadRequest => "bad request",
            ErrorKind::NotImplemented => "not implemented",
        }
    }
}

/// A classified request failure.
#[derive(Debug)]
pub struct HttpError {
    /// What happened.
    pub kind: ErrorKind,
    /// Who is to blame (usually `kind.source()`).
    pub source: ErrorSource,
    /// Whether repeating the attempt is safe.
    pub retry: RetryType,
    /// Underlying cause, for logs.
    pub cause: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl HttpError {
    /// An error of a kind with its default source and no retry.
    pub fn new(kind: ErrorKind) -> Self {
        HttpError {
            kind,
            source: kind.source(),
            retry: RetryType::Never,
            cause: None,
        }
    }

    /// Sets the retry type.
    pub fn retry(mut self, retry: RetryType) -> Self {
        self.retry = retry;
        self
    }

    /// Attaches a cause.
    pub fn because(mut self, cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        self.cause = Some(cause.into());
        self
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (blame: {})", self.kind.as_str(), self.source)?;
        if let Some(c) = &self.cause {
            write!(f, ": {c}")?;
        }
        Ok(())
    }
}

impl std::error::Error for HttpError {}
