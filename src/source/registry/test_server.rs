//! A tiny HTTP/1.1 server on 127.0.0.1 for the unit tests: one request per connection,
//! answered by a closure that may also drop the connection or cut a body short. Every
//! loop is bounded (read timeouts, a lifetime limit) and the server stops when dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A request as received.
#[derive(Debug, Clone)]
pub(crate) struct TestRequest {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl TestRequest {
    /// A header's value (names compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The path without the query.
    pub fn route(&self) -> &str {
        self.path.split('?').next().unwrap_or(&self.path)
    }
}

/// What to answer.
pub(crate) enum Reply {
    /// A full response.
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Headers announcing the whole body, then only its first `keep` bytes, then close.
    Cut {
        status: u16,
        body: Vec<u8>,
        keep: usize,
    },
    /// Close the connection without answering.
    Drop,
}

impl Reply {
    /// An answer with `status` and no body.
    pub fn status(status: u16) -> Reply {
        Reply::Full {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A 200 with `body`.
    pub fn ok(body: impl Into<Vec<u8>>) -> Reply {
        Reply::status(200).body(body)
    }

    /// Sets the body.
    pub fn body(mut self, b: impl Into<Vec<u8>>) -> Reply {
        if let Reply::Full { body, .. } = &mut self {
            *body = b.into();
        }
        self
    }

    /// Adds a header.
    pub fn header(mut self, k: &str, v: &str) -> Reply {
        if let Reply::Full { headers, .. } = &mut self {
            headers.push((k.to_string(), v.to_string()));
        }
        self
    }
}

type Handler = dyn Fn(&TestRequest) -> Reply + Send + Sync;

/// A running server; stops on drop.
pub(crate) struct TestServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// How long a server lives at most.
const LIFETIME: Duration = Duration::from_secs(60);
const IO_TIMEOUT: Duration = Duration::from_secs(5);

impl TestServer {
    /// Starts a server on a free port of 127.0.0.1.
    pub fn start(handler: impl Fn(&TestRequest) -> Reply + Send + Sync + 'static) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("local address");
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            while !stop2.load(Ordering::Relaxed) && started.elapsed() < LIFETIME {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let handler = handler.clone();
                        std::thread::spawn(move || serve(conn, &*handler));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        TestServer {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut conn: TcpStream, handler: &Handler) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
    let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
    let Some(req) = read_request(&mut conn) else {
        return;
    };
    let (status, headers, body, keep) = match handler(&req) {
        Reply::Drop => return,
        Reply::Full {
            status,
            headers,
            body,
        } => {
            let keep = body.len();
            (status, headers, body, keep)
        }
        Reply::Cut { status, body, keep } => (status, Vec::new(), body, keep),
    };
    let mut head = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in &headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = conn.write_all(head.as_bytes());
    if req.method != "HEAD" {
        let _ = conn.write_all(&body[..keep.min(body.len())]);
    }
    let _ = conn.flush();
}

fn read_request(conn: &mut TcpStream) -> Option<TestRequest> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 64 << 10 {
            return None;
        }
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(TestRequest {
        method,
        path,
        headers,
        body,
    })
}

/// A one-layer image as a registry would serve it.
pub(crate) struct Fixture {
    pub layer: Vec<u8>,
    pub layer_digest: crate::store::Digest,
    pub config: Vec<u8>,
    pub config_digest: crate::store::Digest,
    pub manifest: Vec<u8>,
    pub manifest_digest: crate::store::Digest,
}

/// A fixture whose layer holds `layer` (its diff id is its digest, as for an
/// uncompressed layer) for `arch`.
pub(crate) fn fixture(layer: &[u8], arch: &str) -> Fixture {
    use crate::store::Digest;
    let layer_digest = Digest::of(layer);
    let config = format!(
        r#"{{"architecture":"{arch}","os":"linux","config":{{"Env":null,"Cmd":null}},"rootfs":{{"type":"layers","diff_ids":["{layer_digest}"]}}}}"#
    )
    .into_bytes();
    let config_digest = Digest::of(&config);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{}}}]}}"#,
        crate::image::MEDIA_TYPE_MANIFEST,
        crate::image::MEDIA_TYPE_CONFIG,
        config.len(),
        layer.len()
    )
    .into_bytes();
    let manifest_digest = Digest::of(&manifest);
    Fixture {
        layer: layer.to_vec(),
        layer_digest,
        config,
        config_digest,
        manifest,
        manifest_digest,
    }
}

impl Fixture {
    /// The answer to a pull request for repository `repo` (tag `latest`), or None.
    pub fn serve(&self, repo: &str, req: &TestRequest) -> Option<Reply> {
        let route = req.route();
        let manifest = |m: &[u8]| {
            Reply::ok(m.to_vec()).header("Content-Type", crate::image::MEDIA_TYPE_MANIFEST)
        };
        if route == "/v2/" {
            return Some(Reply::ok("{}"));
        }
        if route == format!("/v2/{repo}/manifests/latest")
            || route == format!("/v2/{repo}/manifests/{}", self.manifest_digest)
        {
            return Some(manifest(&self.manifest));
        }
        if route == format!("/v2/{repo}/blobs/{}", self.config_digest) {
            return Some(Reply::ok(self.config.clone()));
        }
        if route == format!("/v2/{repo}/blobs/{}", self.layer_digest) {
            return Some(Reply::ok(self.layer.clone()));
        }
        None
    }
}

/// A client for the test servers: default settings (no auth files), short retry pauses.
pub(crate) fn client(cfg: super::RegistryConfig) -> super::Client {
    let mut c = super::Client::new(cfg).expect("client");
    c.retry_delay = Duration::from_millis(10);
    c
}

/// A manifest-unknown answer.
pub(crate) fn not_found() -> Reply {
    Reply::status(404)
        .header("Content-Type", "application/json")
        .body(r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#)
}
