//! The operator's error type. Every variant has a [`Error::metric_label`] so failures are
//! counted by kind in `qpq_operator_reconcile_errors_total`.

/// Errors of the operator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Adding or removing the finalizer, or the cleanup, failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// A call to a node's admin API failed.
    #[error("node admin API: {0}")]
    Admin(#[from] crate::admin_client::AdminError),
    /// Issuing TLS material failed.
    #[error("tls: {0}")]
    Tls(String),
    /// Serialising an object failed.
    #[error("serialisation: {0}")]
    Serde(#[from] serde_json::Error),
    /// The object lacks a field the API server always sets (name, namespace, uid).
    #[error("object is missing {0}")]
    MissingField(&'static str),
    /// A part of the spec the schema cannot check is wrong (a cron schedule, a time zone).
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
}

impl Error {
    /// Low-cardinality label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Finalizer(e) => match e.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(inner)
                | kube::runtime::finalizer::Error::CleanupFailed(inner) => inner.metric_label(),
                _ => "finalizer",
            },
            Self::Admin(e) => e.metric_label(),
            Self::Tls(_) => "tls",
            Self::Serde(_) => "serde",
            Self::MissingField(_) => "missing_field",
            Self::InvalidSpec(_) => "invalid_spec",
        }
    }
}

/// Result with the operator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
