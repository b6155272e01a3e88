//! Errors of the Kafka clients that no retry heals: the brokers refused the
//! credentials (SASL), or the TLS handshake failed (a certificate that does
//! not verify against the CA, a hostname that does not match). librdkafka
//! reports them through its error callback and keeps retrying; kaflowsql
//! notes the first one and stops at start with it (a configuration error,
//! exit code 3) instead of retrying forever. An unreachable broker is not a
//! refusal: it is retried with backoff.

use std::sync::Mutex;

use rdkafka::client::ClientContext;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::types::RDKafkaErrorCode as Code;
use tracing::error;

/// The first refusal a client reported, if any.
#[derive(Debug, Default)]
pub struct Refusal(Mutex<Option<String>>);

/// Whether an error of this code means the cluster refuses this client's
/// configuration (credentials, TLS), so that waiting cannot help.
pub fn is_refusal(code: Code) -> bool {
    matches!(
        code,
        Code::Authentication
            | Code::SaslAuthenticationFailed
            | Code::UnsupportedSASLMechanism
            | Code::IllegalSASLState
            | Code::SSL
    )
}

impl Refusal {
    /// Notes `error` (with librdkafka's `reason`) if it is a refusal; logs it
    /// as librdkafka's default callback does.
    pub fn note(&self, error: &RdKafkaError, reason: &str) {
        error!(target: "librdkafka", "librdkafka: {}: {}", error, reason);
        if !error.rdkafka_error_code().is_some_and(is_refusal) {
            return;
        }
        if let Ok(mut first) = self.0.lock() {
            first.get_or_insert_with(|| reason.to_string());
        }
    }

    /// The first refusal noted.
    pub fn get(&self) -> Option<String> {
        self.0.lock().ok().and_then(|r| r.clone())
    }
}

/// A client context that only notes refusals (for consumers that need no
/// other callback).
#[derive(Debug, Default)]
pub struct RefusalContext {
    /// What was refused.
    pub refusal: Refusal,
}

impl ClientContext for RefusalContext {
    fn error(&self, error: RdKafkaError, reason: &str) {
        self.refusal.note(&error, reason);
    }
}

impl ConsumerContext for RefusalContext {}

/// A context that keeps a [`Refusal`].
pub trait Refusals {
    /// Its refusal.
    fn refusal(&self) -> &Refusal;
}

impl Refusals for RefusalContext {
    fn refusal(&self) -> &Refusal {
        &self.refusal
    }
}
