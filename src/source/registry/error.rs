//! Registry errors: one clear line each, typed so callers (and the retry loop) can tell them
//! apart, and the registry's own JSON error bodies turned into text.

use serde::Deserialize;

use crate::store::Digest;

/// A failure talking to a registry. Returned inside `anyhow::Error`; downcast to inspect.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The tag, digest or repository does not exist.
    #[error("\"{reference}\": not found in {registry}")]
    NotFound {
        /// The reference as written.
        reference: String,
        /// The registry asked.
        registry: String,
    },
    /// The registry refused the credentials (or wants some and none were found).
    #[error("authentication to {registry} failed ({status}): {detail}")]
    AuthFailed {
        /// The registry (or its token service's registry).
        registry: String,
        /// HTTP status, usually 401.
        status: u16,
        /// What the registry said, and where the credentials came from.
        detail: String,
    },
    /// Authenticated (or anonymous) access to a repository was denied.
    #[error("{what}: access denied by {registry} ({status}): {detail}")]
    Denied {
        /// The operation, e.g. `fetching manifest of "…"`.
        what: String,
        /// The registry asked.
        registry: String,
        /// HTTP status (401 or 403).
        status: u16,
        /// What the registry said.
        detail: String,
    },
    /// Received bytes that do not hash to the digest they were fetched by.
    #[error("{what} does not match its digest {expected} (the received bytes hash to {actual}); refused")]
    DigestMismatch {
        /// What was fetched, e.g. `blob from 127.0.0.1:5000`.
        what: String,
        /// The digest asked for.
        expected: Digest,
        /// The digest of what came.
        actual: Digest,
    },
    /// An unexpected HTTP status.
    #[error("{what}: {registry} answered {status}: {detail}")]
    Status {
        /// The operation, e.g. `uploading blob sha256:…`.
        what: String,
        /// The registry (or other host) that answered.
        registry: String,
        /// HTTP status.
        status: u16,
        /// The registry's error text.
        detail: String,
    },
    /// The connection failed, timed out or was cut.
    #[error("{what}: cannot reach {registry}: {detail}")]
    Transport {
        /// The operation.
        what: String,
        /// The host that could not be reached.
        registry: String,
        /// The transport's error.
        detail: String,
        /// True when trying again may help (resets, timeouts), false for e.g. TLS failures.
        retryable: bool,
    },
    /// A retryable failure that persisted.
    #[error("{last} (gave up after {tries} tries)")]
    GaveUp {
        /// How many attempts were made.
        tries: u32,
        /// The last attempt's error.
        last: Box<RegistryError>,
    },
}

impl RegistryError {
    /// True when the same request may succeed if tried again: transport failures,
    /// 5xx, 429 and 408 answers.
    pub fn is_retryable(&self) -> bool {
        match self {
            RegistryError::Transport { retryable, .. } => *retryable,
            RegistryError::Status { status, .. } => {
                *status >= 500 || *status == 429 || *status == 408
            }
            _ => false,
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
    /// Token services answer `{"details": "..."}` or OAuth2's `error_description`.
    #[serde(default)]
    details: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// Turns an error response body into one line: the registry's `errors[].message (code)`
/// entries, a token service's `details`, or the start of the text; `fallback` when empty.
pub(crate) fn describe_body(body: &[u8], fallback: &str) -> String {
    if let Ok(parsed) = serde_json::from_slice::<ErrorBody>(body) {
        let parts: Vec<String> = parsed
            .errors
            .iter()
            .filter(|e| !e.code.is_empty() || !e.message.is_empty())
            .map(|e| match (e.message.is_empty(), e.code.is_empty()) {
                (false, false) => format!("{} ({})", e.message, e.code),
                (false, true) => e.message.clone(),
                _ => e.code.clone(),
            })
            .collect();
        if !parts.is_empty() {
            return parts.join("; ");
        }
        let other = parsed
            .details
            .or(parsed.error_description)
            .or(parsed.error.map(|v| match v {
                serde_json::Value::String(s) => s,
                v => v.to_string(),
            }));
        if let Some(text) = other.filter(|t| !t.trim().is_empty()) {
            return text.trim().to_string();
        }
    }
    let text = String::from_utf8_lossy(body);
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.is_empty() {
        return fallback.to_string();
    }
    let mut short: String = line.chars().take(200).collect();
    if short.len() < line.len() {
        short.push('…');
    }
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_registry_error_bodies() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"x"}}]}"#;
        assert_eq!(
            describe_body(body, "x"),
            "manifest unknown (MANIFEST_UNKNOWN)"
        );
        let body = br#"{"errors":[{"code":"DENIED"},{"message":"second"}]}"#;
        assert_eq!(describe_body(body, "x"), "DENIED; second");
        assert_eq!(
            describe_body(br#"{"details":"incorrect username or password"}"#, "x"),
            "incorrect username or password"
        );
        assert_eq!(
            describe_body(b"  upstream\n  broken ", "x"),
            "upstream broken"
        );
        assert_eq!(describe_body(b"", "Not Found"), "Not Found");
        assert_eq!(describe_body(b"{}", "Bad Gateway"), "{}");
    }

    #[test]
    fn retryable_classification() {
        let status = |status| RegistryError::Status {
            what: "w".into(),
            registry: "r".into(),
            status,
            detail: String::new(),
        };
        assert!(status(503).is_retryable());
        assert!(status(429).is_retryable());
        assert!(!status(400).is_retryable());
        assert!(!status(404).is_retryable());
    }
}
