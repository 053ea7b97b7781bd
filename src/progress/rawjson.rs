//! buildx's `rawjson` progress: one JSON document per line (`vertexes`, `statuses`,
//! `logs`, `warnings`), for tools that read it.

use std::time::SystemTime;

use super::{rfc3339, StepHandle};

/// A step's vertex digest in rawjson: stable for the step within the build.
fn vertex_digest(step: &StepHandle) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(format!("{}\0{}", step.id, step.title).as_bytes());
    format!("sha256:{}", hex::encode(h))
}

/// RFC 3339 with nanoseconds, as buildx writes times.
fn nanos_rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = rfc3339(d.as_secs() as i64);
    format!("{}.{:09}Z", secs.trim_end_matches('Z'), d.subsec_nanos())
}

/// A rawjson vertex line: started, or (`end`) completed, cached or failed.
pub(super) fn vertex(step: &StepHandle, end: Option<(bool, Option<&str>)>) {
    let mut v = serde_json::json!({
        "digest": vertex_digest(step),
        "name": step.title,
        "started": nanos_rfc3339(step.started_at),
    });
    if let Some((cached, error)) = end {
        v["completed"] = nanos_rfc3339(SystemTime::now()).into();
        if cached {
            v["cached"] = true.into();
        }
        if let Some(e) = error {
            v["error"] = e.into();
        }
    }
    eprintln!("{}", serde_json::json!({ "vertexes": [v] }));
}

/// A rawjson log line of a step's output (base64, stream 1, as buildx's).
pub(super) fn log(step: &StepHandle, line: &str) {
    use base64::Engine;
    let data = base64::engine::general_purpose::STANDARD.encode(format!("{line}\n"));
    eprintln!(
        "{}",
        serde_json::json!({ "logs": [{
            "vertex": vertex_digest(step),
            "stream": 1,
            "data": data,
            "timestamp": nanos_rfc3339(SystemTime::now()),
        }] })
    );
}

/// A rawjson status line: progress of one part of a step (a blob's bytes).
pub(super) fn status(step: &StepHandle, s: &super::Status) {
    let now = nanos_rfc3339(SystemTime::now());
    let mut v = serde_json::json!({
        "id": s.id,
        "vertex": vertex_digest(step),
        "current": s.current,
        "timestamp": now,
        "started": nanos_rfc3339(step.started_at),
    });
    if let Some(t) = s.total {
        v["total"] = t.into();
    }
    if s.completed {
        v["completed"] = now.into();
    }
    eprintln!("{}", serde_json::json!({ "statuses": [v] }));
}
