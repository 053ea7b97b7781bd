//! HTTP for the registry client: one repository session sends requests with the right
//! credentials (Basic, or bearer tokens fetched on a 401 challenge and cached), follows
//! GET redirects (without the credentials when they leave the registry's host), maps
//! failures to [`RegistryError`]s, and retries what may succeed on another try.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use ureq::http::{Method, Response};
use ureq::{Body, SendBody};

use super::auth::{
    parse_challenges, parse_token, scope_key, secret_basic_header, Challenge, Token,
};
use super::credentials::{Credentials, Secret};
use super::error::{describe_body, RegistryError};
use super::{lock, Client};

/// How many times a retryable operation is tried.
pub(crate) const MAX_TRIES: u32 = 4;
/// How many redirects a GET follows.
const MAX_REDIRECTS: usize = 5;
/// How much of an error body is read.
const ERROR_BODY_LIMIT: u64 = 64 << 10;

/// Characters kept as they are in query values (RFC 3986 unreserved).
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A request body that can be sent again (after a 401 or on a retry).
#[derive(Clone, Copy)]
pub(crate) enum Payload<'a> {
    /// No body.
    Empty,
    /// Bytes in memory.
    Bytes(&'a [u8]),
    /// `len` bytes of a file from `offset`, read while sending.
    File {
        file: &'a File,
        offset: u64,
        len: u64,
    },
}

/// A file range as a reader (positional reads: the file's cursor is not used).
struct FileRange<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for FileRange<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = usize::try_from(self.end - self.pos).unwrap_or(usize::MAX);
        let want = buf.len().min(left);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// One HTTP request.
pub(crate) struct Req<'a> {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Payload<'a>,
}

impl<'a> Req<'a> {
    /// A request without body or headers.
    pub fn new(method: Method, url: String) -> Req<'a> {
        Req {
            method,
            url,
            headers: Vec::new(),
            body: Payload::Empty,
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Req<'a> {
        self.headers.push((name, value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: Payload<'a>) -> Req<'a> {
        self.body = body;
        self
    }
}

/// `url` with `pairs` appended to its query, values percent-encoded.
pub(crate) fn with_query(url: &str, pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return url.to_string();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{}", encode_pairs(pairs))
}

/// `k=v&k=v` with the values percent-encoded (a query, or a form body).
fn encode_pairs(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (k, v) in pairs {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.extend(utf8_percent_encode(v, QUERY_VALUE));
    }
    out
}

/// The `host[:port]` of an absolute URL.
pub(crate) fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let auth = &rest[..end];
    auth.rsplit_once('@').map_or(auth, |(_, h)| h)
}

/// A `Location` resolved against the URL it came from.
pub(crate) fn resolve_location(base: &str, location: &str) -> String {
    let lower = location.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return location.to_string();
    }
    let scheme = base.split_once("://").map_or("https", |(s, _)| s);
    if let Some(rest) = location.strip_prefix("//") {
        return format!("{scheme}://{rest}");
    }
    let origin = format!("{scheme}://{}", authority(base));
    if location.starts_with('/') {
        return format!("{origin}{location}");
    }
    let path = base
        .split_once("://")
        .map_or("", |(_, r)| r)
        .split(['?', '#'])
        .next()
        .unwrap_or("");
    let dir = path.find('/').map_or("/", |i| {
        let p = &path[i..];
        &p[..=p.rfind('/').unwrap_or(0)]
    });
    format!("{origin}{dir}{location}")
}

/// Reads a small body (an error text, a token answer), at most `limit` bytes.
pub(crate) fn read_small(resp: &mut Response<Body>, limit: u64) -> Vec<u8> {
    resp.body_mut()
        .with_config()
        .limit(limit)
        .read_to_vec()
        .unwrap_or_default()
}

/// The `Location` header, if any.
pub(crate) fn location(resp: &Response<Body>) -> Option<String> {
    resp.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(String::from)
}

/// An error for an unexpected answer, with the registry's error text.
pub(crate) fn status_error(mut resp: Response<Body>, registry: &str, what: &str) -> anyhow::Error {
    let status = resp.status();
    let body = read_small(&mut resp, ERROR_BODY_LIMIT);
    let fallback = status.canonical_reason().unwrap_or("unexpected answer");
    RegistryError::Status {
        what: what.to_string(),
        registry: registry.to_string(),
        status: status.as_u16(),
        detail: describe_body(&body, fallback),
    }
    .into()
}

pub(crate) fn transport_error(e: ureq::Error, host: &str, what: &str) -> anyhow::Error {
    let retryable = matches!(
        e,
        ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::Protocol(_)
    );
    RegistryError::Transport {
        what: what.to_string(),
        registry: host.to_string(),
        detail: e.to_string(),
        retryable,
    }
    .into()
}

impl Client {
    /// Runs `f` until it succeeds, fails for good, or has been tried [`MAX_TRIES`] times,
    /// sleeping 1, 2, 4… times the retry delay between tries.
    pub(crate) fn with_retries<T>(&self, mut f: impl FnMut() -> Result<T>) -> Result<T> {
        let mut tries = 0;
        loop {
            tries += 1;
            let e = match f() {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let retryable = e
                .downcast_ref::<RegistryError>()
                .is_some_and(RegistryError::is_retryable);
            if !retryable {
                return Err(e);
            }
            if tries >= MAX_TRIES {
                return Err(match e.downcast::<RegistryError>() {
                    Ok(last) => RegistryError::GaveUp {
                        tries,
                        last: Box::new(last),
                    }
                    .into(),
                    Err(e) => e,
                });
            }
            std::thread::sleep(self.retry_delay * (1 << (tries - 1)));
        }
    }

    /// True when `host` may be reached over plain HTTP.
    pub(crate) fn plain_http_allowed(&self, host: &str) -> bool {
        super::config::is_loopback(host)
            || self
                .plain_hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(host))
    }

    /// `https`, or for loopback and insecure registries whatever the registry speaks: a
    /// plain `GET /v2/` tells (a TLS server answers it with garbage or a 400 that says so).
    pub(crate) fn scheme(&self, host: &str) -> &'static str {
        if !self.plain_http_allowed(host) {
            return "https";
        }
        if let Some(s) = lock(&self.schemes).get(host) {
            return s;
        }
        let url = format!("http://{host}/v2/");
        // A certs.d entry that cannot be read is reported by the request that follows.
        let Ok(agent) = self.agent_for(host) else {
            return "https";
        };
        let probe = agent
            .get(&url)
            .config()
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .call();
        let scheme = match probe {
            Ok(mut resp) => {
                let body = read_small(&mut resp, ERROR_BODY_LIMIT);
                let tls = resp.status() == 400
                    && String::from_utf8_lossy(&body)
                        .to_ascii_uppercase()
                        .contains("HTTPS");
                if tls {
                    "https"
                } else {
                    "http"
                }
            }
            Err(ureq::Error::Protocol(_)) => "https",
            // Unreachable now: plain HTTP, and do not remember the guess.
            Err(_) => return "http",
        };
        lock(&self.schemes).insert(host.to_string(), scheme);
        scheme
    }

    /// The agent for a host: its own for a host with a certs.d entry; otherwise no proxy
    /// and no certificate checks for loopback, no certificate checks for insecure
    /// registries, full checks for the rest.
    fn agent_for(&self, host: &str) -> Result<ureq::Agent> {
        if let Some(agent) = self.host_agent(host)? {
            return Ok(agent);
        }
        Ok(if super::config::is_loopback(host) {
            self.loopback.clone()
        } else if self.plain_http_allowed(host) {
            self.unverified.clone()
        } else {
            self.verified.clone()
        })
    }

    /// One HTTP exchange, no redirects followed.
    fn perform(
        &self,
        req: &Req,
        url: &str,
        auth: Option<&str>,
        what: &str,
    ) -> Result<Response<Body>> {
        let host = authority(url);
        let mut builder = ureq::http::Request::builder()
            .method(req.method.clone())
            .uri(url);
        for (name, value) in &req.headers {
            builder = builder.header(*name, value.as_str());
        }
        if let Some(a) = auth {
            builder = builder.header("authorization", a);
        }
        let agent = self.agent_for(host)?;
        let bodyless = matches!(req.method, Method::GET | Method::HEAD | Method::DELETE);
        let bad_request = |e: ureq::http::Error| anyhow!("{what}: bad request to {url}: {e}");
        let result = match req.body {
            Payload::Empty if bodyless => {
                agent.run(builder.body(SendBody::none()).map_err(bad_request)?)
            }
            Payload::Empty => agent.run(
                builder
                    .header("content-length", "0")
                    .body(&[][..])
                    .map_err(bad_request)?,
            ),
            Payload::Bytes(b) => agent.run(builder.body(b).map_err(bad_request)?),
            Payload::File { file, offset, len } => {
                let mut range = FileRange {
                    file,
                    pos: offset,
                    end: offset + len,
                };
                let request = builder
                    .header("content-length", len.to_string())
                    .body(SendBody::from_reader(&mut range))
                    .map_err(bad_request)?;
                agent.run(request)
            }
        };
        result.map_err(|e| transport_error(e, host, what))
    }
}

/// A session with one repository of one registry: credentials and token scopes.
pub(crate) struct Repo<'c> {
    pub client: &'c Client,
    /// The registry as named in references and auth files (`docker.io`).
    pub registry: String,
    /// The host serving its API (`registry-1.docker.io`).
    pub host: String,
    /// Repository path.
    pub repository: String,
    /// Token scopes this session needs.
    scopes: Vec<String>,
    /// `scheme://host`.
    base: String,
    creds: Option<Credentials>,
}

impl<'c> Repo<'c> {
    /// A session for `repository` at `registry` (served by `host`), asking for `scopes`.
    pub fn new(
        client: &'c Client,
        registry: &str,
        host: &str,
        repository: &str,
        scopes: Vec<String>,
    ) -> Result<Repo<'c>> {
        let creds = client.credentials(registry, repository)?;
        let base = format!("{}://{host}", client.scheme(host));
        Ok(Repo {
            client,
            registry: registry.to_string(),
            host: host.to_string(),
            repository: repository.to_string(),
            scopes,
            base,
            creds,
        })
    }

    /// `…/v2/<repository>/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.base, self.repository)
    }

    /// Sends `req`: with credentials for the registry's host, again after answering a 401
    /// challenge, following redirects of GET and HEAD. Any status comes back; transport
    /// failures and refused credentials are errors.
    pub fn send(&self, req: &Req, what: &str) -> Result<Response<Body>> {
        let mut auth = self.auth_header(None, false)?;
        let mut answered = false;
        loop {
            let resp = self.exchange(req, auth.as_deref(), what)?;
            if resp.status() != 401 {
                return Ok(resp);
            }
            let challenges = parse_challenges(
                resp.headers()
                    .get_all("www-authenticate")
                    .iter()
                    .filter_map(|v| v.to_str().ok()),
            );
            let Some(challenge) = challenges.into_iter().next().filter(|_| !answered) else {
                return Err(self.unauthorized(resp, what));
            };
            let (stored, extra_scope) = match challenge {
                Challenge::Bearer {
                    realm,
                    service,
                    scope,
                } => (
                    Challenge::Bearer {
                        realm,
                        service,
                        scope: None,
                    },
                    scope,
                ),
                Challenge::Basic => (Challenge::Basic, None),
            };
            let basic_without_creds = stored == Challenge::Basic && self.creds.is_none();
            lock(&self.client.challenges).insert(self.host.clone(), stored);
            if basic_without_creds {
                return Err(self.unauthorized(resp, what));
            }
            auth = self.auth_header(extra_scope.as_deref(), true)?;
            answered = true;
        }
    }

    /// Sends `req` and follows redirects (GET and HEAD only); credentials go only to the
    /// registry's own host.
    fn exchange(&self, req: &Req, auth: Option<&str>, what: &str) -> Result<Response<Body>> {
        let follow = matches!(req.method, Method::GET | Method::HEAD);
        let mut url = req.url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let own_host = authority(&url).eq_ignore_ascii_case(&self.host);
            let resp = self
                .client
                .perform(req, &url, auth.filter(|_| own_host), what)?;
            let redirect = matches!(resp.status().as_u16(), 301 | 302 | 303 | 307 | 308);
            let next = location(&resp).filter(|_| follow && redirect);
            let Some(loc) = next else {
                return Ok(resp);
            };
            url = resolve_location(&url, &loc);
            if url.to_ascii_lowercase().starts_with("http://")
                && !self.client.plain_http_allowed(authority(&url))
            {
                return Err(anyhow!(
                    "{what}: {} redirected to plain-HTTP {url}, which is not allowed",
                    self.registry
                ));
            }
        }
        Err(anyhow!(
            "{what}: more than {MAX_REDIRECTS} redirects from {}",
            self.registry
        ))
    }

    /// The error for a request the registry still refuses.
    fn unauthorized(&self, mut resp: Response<Body>, what: &str) -> anyhow::Error {
        let status = resp.status().as_u16();
        let body = read_small(&mut resp, ERROR_BODY_LIMIT);
        let detail = describe_body(&body, "unauthorized");
        let basic = matches!(
            lock(&self.client.challenges).get(&self.host),
            Some(Challenge::Basic) | None
        );
        match &self.creds {
            Some(c) => RegistryError::AuthFailed {
                registry: self.registry.clone(),
                status,
                detail: format!("{detail} (credentials from {})", c.source),
            }
            .into(),
            None if basic => RegistryError::AuthFailed {
                registry: self.registry.clone(),
                status,
                detail: format!("{detail}; no credentials found for {}", self.registry),
            }
            .into(),
            None => RegistryError::Denied {
                what: what.to_string(),
                registry: self.registry.clone(),
                status,
                detail: format!(
                    "{detail}; the repository may not exist, or may need credentials (none found for {})",
                    self.registry
                ),
            }
            .into(),
        }
    }

    /// The `Authorization` value for the registry's known challenge: Basic from the
    /// credentials, or a bearer token (cached per host and scopes unless `fresh`).
    fn auth_header(&self, extra_scope: Option<&str>, fresh: bool) -> Result<Option<String>> {
        let challenge = lock(&self.client.challenges).get(&self.host).cloned();
        let (realm, service) = match challenge {
            None => return Ok(None),
            Some(Challenge::Basic) => {
                return Ok(self.creds.as_ref().map(|c| secret_basic_header(&c.secret)))
            }
            Some(Challenge::Bearer { realm, service, .. }) => (realm, service),
        };
        let mut scopes = self.scopes.clone();
        for s in extra_scope
            .unwrap_or("")
            .split(' ')
            .filter(|s| !s.is_empty())
        {
            if !scopes.iter().any(|have| have == s) {
                scopes.push(s.to_string());
            }
        }
        let key = (self.host.clone(), scope_key(&scopes));
        if !fresh {
            if let Some(t) = lock(&self.client.tokens).get(&key).filter(|t| t.fresh()) {
                return Ok(Some(format!("Bearer {}", t.value)));
            }
        }
        let token = self.fetch_token(&realm, service.as_deref(), &scopes)?;
        let header = format!("Bearer {}", token.value);
        lock(&self.client.tokens).insert(key, token);
        Ok(Some(header))
    }

    /// Asks the token service at `realm` for a token: GET with the credentials as Basic, or
    /// the OAuth2 refresh-token POST for identity tokens (GET where that is not served).
    fn fetch_token(&self, realm: &str, service: Option<&str>, scopes: &[String]) -> Result<Token> {
        let realm_host = authority(realm).to_string();
        let lower = realm.to_ascii_lowercase();
        if lower.starts_with("http://") {
            if !self.client.plain_http_allowed(&realm_host) {
                return Err(anyhow!(
                    "{}: the token service {realm} is plain HTTP, which is not allowed",
                    self.registry
                ));
            }
        } else if !lower.starts_with("https://") {
            return Err(anyhow!(
                "{}: bad token service address {realm:?}",
                self.registry
            ));
        }
        let what = format!("getting a token for {}", self.registry);
        let session = TokenHost {
            repo: self,
            host: realm_host,
        };
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = service {
            pairs.push(("service", s));
        }
        if let Some(Credentials {
            secret: Secret::IdentityToken { token, .. },
            ..
        }) = &self.creds
        {
            let joined = scopes.join(" ");
            let mut form = vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", token.as_str()),
                ("client_id", "rbuild"),
                ("scope", joined.as_str()),
            ];
            form.extend(pairs.iter().copied());
            let body = encode_pairs(&form);
            let req = Req::new(Method::POST, realm.to_string())
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Payload::Bytes(body.as_bytes()));
            let resp = session.perform(&req, None, &what)?;
            if !matches!(resp.status().as_u16(), 404 | 405) {
                return session.token_from(resp, &what);
            }
        }
        for s in scopes {
            pairs.push(("scope", s));
        }
        let req = Req::new(Method::GET, with_query(realm, &pairs));
        let auth = self.creds.as_ref().map(|c| secret_basic_header(&c.secret));
        let resp = session.perform(&req, auth.as_deref(), &what)?;
        session.token_from(resp, &what)
    }
}

/// Requests to a token service on behalf of a repository session.
struct TokenHost<'r, 'c> {
    repo: &'r Repo<'c>,
    host: String,
}

impl TokenHost<'_, '_> {
    fn perform(&self, req: &Req, auth: Option<&str>, what: &str) -> Result<Response<Body>> {
        self.repo.client.perform(req, &req.url, auth, what)
    }

    fn token_from(&self, mut resp: Response<Body>, what: &str) -> Result<Token> {
        let status = resp.status().as_u16();
        if status == 401 || status == 403 {
            let body = read_small(&mut resp, ERROR_BODY_LIMIT);
            let detail = describe_body(&body, "unauthorized");
            let detail = match &self.repo.creds {
                Some(c) => format!("{detail} (credentials from {})", c.source),
                None => format!("{detail}; no credentials found for {}", self.repo.registry),
            };
            return Err(RegistryError::AuthFailed {
                registry: self.repo.registry.clone(),
                status,
                detail,
            }
            .into());
        }
        if status != 200 {
            return Err(status_error(resp, &self.host, what));
        }
        let body = read_small(&mut resp, 1 << 20);
        parse_token(&body).with_context(|| {
            format!(
                "{what}: the token service at {} answered no token",
                self.host
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use super::super::auth::basic_header;
    use super::super::test_server::{client, fixture, not_found, Reply, TestServer};
    use super::super::RegistryConfig;
    use super::*;
    use crate::image::reference::Reference;
    use crate::plan::platform::Platform;
    use crate::store::Store;

    #[test]
    fn urls() {
        assert_eq!(
            with_query("http://h/u", &[("mount", "sha256:ab"), ("from", "a/b")]),
            "http://h/u?mount=sha256%3Aab&from=a%2Fb"
        );
        assert_eq!(
            with_query("http://h/u?_state=x", &[("digest", "d")]),
            "http://h/u?_state=x&digest=d"
        );
        assert_eq!(authority("https://user@h:5000/v2/x?y"), "h:5000");
        assert_eq!(authority("http://h"), "h");
        let base = "http://127.0.0.1:5000/v2/a/blobs/uploads/?x=1";
        assert_eq!(
            resolve_location(base, "/v2/a/blobs/uploads/u1?_state=s"),
            "http://127.0.0.1:5000/v2/a/blobs/uploads/u1?_state=s"
        );
        assert_eq!(
            resolve_location(base, "https://cdn.example/b"),
            "https://cdn.example/b"
        );
        assert_eq!(
            resolve_location(base, "//cdn.example/b"),
            "http://cdn.example/b"
        );
        assert_eq!(
            resolve_location(base, "u2"),
            "http://127.0.0.1:5000/v2/a/blobs/uploads/u2"
        );
        assert_eq!(resolve_location("http://h", "u3"), "http://h/u3");
    }

    fn auth_file(dir: &std::path::Path, host: &str, user: &str, pass: &str) -> std::path::PathBuf {
        let path = dir.join("auth.json");
        let auth = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{user}:{pass}"),
        );
        std::fs::write(
            &path,
            format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#),
        )
        .unwrap();
        path
    }

    fn with_auth(path: std::path::PathBuf) -> RegistryConfig {
        RegistryConfig {
            auth_file: Some(path),
            ..RegistryConfig::default()
        }
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    fn reference(host: &str) -> Reference {
        Reference::parse(&format!("{host}/app"))
            .unwrap()
            .with_default_tag()
    }

    #[test]
    fn bearer_tokens_are_fetched_with_credentials_and_cached() {
        let hits = Arc::new(AtomicUsize::new(0));
        let queries = Arc::new(Mutex::new(Vec::new()));
        let posts = Arc::new(Mutex::new(Vec::new()));
        let (h, q, p) = (hits.clone(), queries.clone(), posts.clone());
        let tokens = TestServer::start(move |req| {
            if req.route() != "/token" {
                return Reply::status(404);
            }
            if req.method == "POST" {
                p.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&req.body).into_owned());
                return Reply::ok(r#"{"access_token":"T1"}"#);
            }
            h.fetch_add(1, Ordering::SeqCst);
            q.lock().unwrap().push(req.path.clone());
            match req.header("authorization") {
                Some(a) if a == basic_header("u", "p") => {
                    Reply::ok(r#"{"token":"T1","expires_in":300}"#)
                }
                Some(_) => {
                    Reply::status(401).body(r#"{"details":"incorrect username or password"}"#)
                }
                None => Reply::status(401).body(r#"{"details":"anonymous access is not allowed"}"#),
            }
        });
        let realm = format!("http://{}/token", tokens.host());
        let fx = fixture(b"secret layer", "amd64");
        let registry = TestServer::start(move |req| {
            if req.header("authorization") != Some("Bearer T1") {
                let challenge = format!(
                    r#"Bearer realm="{realm}",service="reg.test",scope="repository:app:pull""#
                );
                return Reply::status(401)
                    .header("WWW-Authenticate", &challenge)
                    .body(r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#);
            }
            fx.serve("app", req).unwrap_or_else(not_found)
        });
        let dir = tempfile::tempdir().unwrap();
        let host = registry.host();
        let good = client(with_auth(auth_file(dir.path(), &host, "u", "p")));
        let (_d, st) = store();
        let img = good
            .pull(
                &reference(&host),
                &Platform::parse("linux/amd64").unwrap(),
                &st,
                None,
            )
            .unwrap();
        assert_eq!(img.layers.len(), 1);
        assert_eq!(
            hits.load(Ordering::SeqCst),
            1,
            "one token for the whole pull"
        );
        let q = queries.lock().unwrap()[0].clone();
        assert_eq!(q.matches("scope=").count(), 1, "{q}");
        assert!(
            q.contains("service=reg.test") && q.contains("scope=repository%3Aapp%3Apull"),
            "{q}"
        );

        let bad = client(with_auth(auth_file(dir.path(), &host, "u", "wrong")));
        let e = bad.get_manifest(&reference(&host)).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("authentication to {host} failed (401): incorrect username or password (credentials from ")),
            "{e}"
        );
        // An identity token is exchanged with the OAuth2 refresh-token POST.
        let id_file = dir.path().join("id.json");
        std::fs::write(
            &id_file,
            format!(r#"{{"auths":{{"{host}":{{"identitytoken":"RT"}}}}}}"#),
        )
        .unwrap();
        let with_id = client(with_auth(id_file));
        assert!(!with_id.get_manifest(&reference(&host)).unwrap().is_index());
        let posted = posts.lock().unwrap().clone();
        assert_eq!(posted.len(), 1);
        for part in [
            "grant_type=refresh_token",
            "refresh_token=RT",
            "service=reg.test",
            "scope=repository%3Aapp%3Apull",
        ] {
            assert!(
                posted[0].split('&').any(|p| p == part),
                "{part} not in {}",
                posted[0]
            );
        }

        let anonymous = client(RegistryConfig::default());
        let e = anonymous
            .get_manifest(&reference(&host))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("anonymous access is not allowed; no credentials found for"),
            "{e}"
        );
    }

    #[test]
    fn basic_auth_and_clear_errors_for_wrong_passwords() {
        let fx = fixture(b"layer", "amd64");
        let registry = TestServer::start(move |req| {
            if req.header("authorization") != Some(&basic_header("alice", "s3cret")) {
                return Reply::status(401)
                    .header("WWW-Authenticate", r#"Basic realm="Registry Realm""#)
                    .body(r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#);
            }
            fx.serve("app", req).unwrap_or_else(not_found)
        });
        let host = registry.host();
        let dir = tempfile::tempdir().unwrap();
        let good = client(with_auth(auth_file(dir.path(), &host, "alice", "s3cret")));
        assert!(!good.get_manifest(&reference(&host)).unwrap().is_index());
        let file = auth_file(dir.path(), &host, "alice", "nope");
        let bad = client(with_auth(file.clone()));
        let e = bad.get_manifest(&reference(&host)).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "authentication to {host} failed (401): authentication required (UNAUTHORIZED) (credentials from {})",
                file.display()
            )
        );
        let e = client(RegistryConfig::default())
            .get_manifest(&reference(&host))
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with(&format!("; no credentials found for {host}")),
            "{e}"
        );
    }

    #[test]
    fn redirects_to_another_host_drop_the_credentials() {
        let fx = Arc::new(fixture(b"redirected layer", "amd64"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (f, s) = (fx.clone(), seen.clone());
        let cdn = TestServer::start(move |req| {
            s.lock()
                .unwrap()
                .push(req.header("authorization").map(String::from));
            if req.route() == format!("/cdn/{}", f.layer_digest) {
                return Reply::ok(f.layer.clone());
            }
            Reply::status(404)
        });
        let cdn_host = cdn.host();
        let f = fx.clone();
        let registry = TestServer::start(move |req| {
            if req.header("authorization") != Some(&basic_header("u", "p")) {
                return Reply::status(401).header("WWW-Authenticate", r#"Basic realm="r""#);
            }
            if req.route() == format!("/v2/app/blobs/{}", f.layer_digest) {
                let to = format!("http://{cdn_host}/cdn/{}?sig=abc", f.layer_digest);
                return Reply::status(307).header("Location", &to);
            }
            f.serve("app", req).unwrap_or_else(not_found)
        });
        let dir = tempfile::tempdir().unwrap();
        let host = registry.host();
        let c = client(with_auth(auth_file(dir.path(), &host, "u", "p")));
        let (_d, st) = store();
        let img = c
            .pull(
                &reference(&host),
                &Platform::parse("linux/amd64").unwrap(),
                &st,
                None,
            )
            .unwrap();
        assert_eq!(st.read_blob(&img.layers[0].digest).unwrap(), fx.layer);
        let seen = seen.lock().unwrap();
        assert!(!seen.is_empty());
        assert!(
            seen.iter().all(Option::is_none),
            "credentials leaked to the CDN: {seen:?}"
        );
    }

    #[test]
    fn file_ranges_read_positionally() {
        let mut tmp = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut tmp, b"0123456789").unwrap();
        let mut r = FileRange {
            file: &tmp,
            pos: 3,
            end: 7,
        };
        let mut out = String::new();
        r.read_to_string(&mut out).unwrap();
        assert_eq!(out, "3456");
    }
}
