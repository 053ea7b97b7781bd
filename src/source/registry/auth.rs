//! Registry authentication: `WWW-Authenticate` challenges, Basic headers, and bearer
//! tokens as the distribution token protocol hands them out.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;

use super::credentials::Secret;

/// What a registry asked for in its `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    /// HTTP basic authentication.
    Basic,
    /// A bearer token from the token service at `realm`.
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// The challenges of one or more `WWW-Authenticate` values, Bearer first (it is preferred
/// when a registry offers both). Unknown schemes are skipped.
pub(crate) fn parse_challenges<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<Challenge> {
    let mut out = Vec::new();
    for value in values {
        for (scheme, params) in split_challenges(value) {
            let param = |name: &str| {
                params
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.clone())
            };
            if scheme.eq_ignore_ascii_case("bearer") {
                if let Some(realm) = param("realm").filter(|r| !r.is_empty()) {
                    out.push(Challenge::Bearer {
                        realm,
                        service: param("service"),
                        scope: param("scope"),
                    });
                }
            } else if scheme.eq_ignore_ascii_case("basic") {
                out.push(Challenge::Basic);
            }
        }
    }
    out.sort_by_key(|c| matches!(c, Challenge::Basic));
    out
}

/// Splits one header value into (scheme, [(name, value)]) challenges (RFC 7235: params are
/// `name=token` or `name="quoted \" string"`, separated by commas; a new scheme starts where
/// a token is not followed by `=`).
fn split_challenges(value: &str) -> Vec<(String, Vec<(String, String)>)> {
    let chars: Vec<char> = value.chars().collect();
    let mut i = 0;
    let mut out: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let skip = |i: &mut usize, pred: &dyn Fn(char) -> bool| {
        while *i < chars.len() && pred(chars[*i]) {
            *i += 1;
        }
    };
    let is_token = |c: char| !c.is_whitespace() && !matches!(c, ',' | '=' | '"');
    while i < chars.len() {
        skip(&mut i, &|c| c.is_whitespace() || c == ',');
        let start = i;
        skip(&mut i, &is_token);
        if start == i {
            // Stray '=' or '"': skip it rather than loop.
            i += 1;
            continue;
        }
        let word: String = chars[start..i].iter().collect();
        let mut j = i;
        skip(&mut j, &|c| c.is_whitespace());
        if j < chars.len() && chars[j] == '=' && !out.is_empty() {
            // A parameter of the current challenge.
            i = j + 1;
            skip(&mut i, &|c| c.is_whitespace());
            let mut val = String::new();
            if i < chars.len() && chars[i] == '"' {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        i += 1;
                    }
                    val.push(chars[i]);
                    i += 1;
                }
                i += 1;
            } else {
                let s = i;
                skip(&mut i, &|c| !c.is_whitespace() && c != ',');
                val = chars[s..i].iter().collect();
            }
            if let Some(last) = out.last_mut() {
                last.1.push((word, val));
            }
        } else {
            out.push((word, Vec::new()));
        }
    }
    out
}

/// `Authorization: Basic …` for a user and password.
pub(crate) fn basic_header(username: &str, password: &str) -> String {
    let raw = format!("{username}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// The Basic header for a secret (an identity token is sent as the password).
pub(crate) fn secret_basic_header(secret: &Secret) -> String {
    match secret {
        Secret::Basic { username, password } => basic_header(username, password),
        Secret::IdentityToken { username, token } => {
            let user = if username.is_empty() {
                "<token>"
            } else {
                username
            };
            basic_header(user, token)
        }
    }
}

/// A bearer token and when to stop using it.
#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub value: String,
    pub expires: Instant,
}

impl Token {
    /// True while the token can still be sent.
    pub fn fresh(&self) -> bool {
        Instant::now() < self.expires
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: String,
    #[serde(default)]
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// Parses a token service's answer (`token` or `access_token`, `expires_in` seconds,
/// 60 by default); None when it holds no token.
pub(crate) fn parse_token(body: &[u8]) -> Option<Token> {
    let parsed: TokenResponse = serde_json::from_slice(body).ok()?;
    let value = if parsed.token.is_empty() {
        parsed.access_token
    } else {
        parsed.token
    };
    if value.is_empty() {
        return None;
    }
    // Renew a little early so a token does not expire between check and use.
    let secs = parsed.expires_in.unwrap_or(60).max(10);
    Some(Token {
        value,
        expires: Instant::now() + Duration::from_secs(secs - secs / 10),
    })
}

/// The scopes to ask for, joined as the cache key (order-independent).
pub(crate) fn scope_key(scopes: &[String]) -> String {
    let mut s: Vec<&str> = scopes.iter().map(String::as_str).collect();
    s.sort_unstable();
    s.dedup();
    s.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_and_basic_challenges() {
        let got = parse_challenges([
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        ]);
        assert_eq!(
            got,
            [Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into()),
            }]
        );
        assert_eq!(
            parse_challenges([r#"Basic realm="Registry Realm""#]),
            [Challenge::Basic]
        );
        // Quoted commas and escapes, unquoted values, spaces, odd case, several challenges.
        let got = parse_challenges([
            r#"basic realm="x", BEARER Realm = "http://127.0.0.1:1/t?a=1" , scope="repository:a/b:pull,push", error="in\"valid""#,
        ]);
        assert_eq!(
            got,
            [
                Challenge::Bearer {
                    realm: "http://127.0.0.1:1/t?a=1".into(),
                    service: None,
                    scope: Some("repository:a/b:pull,push".into()),
                },
                Challenge::Basic,
            ]
        );
        let got = parse_challenges(["Bearer realm=https://t.example/token,service=reg"]);
        assert_eq!(
            got,
            [Challenge::Bearer {
                realm: "https://t.example/token".into(),
                service: Some("reg".into()),
                scope: None,
            }]
        );
        // Nothing usable.
        let got = parse_challenges([
            "Negotiate",
            "Bearer service=x",
            "",
            "=\"\"",
            r#"Bearer realm="cut"#,
        ]);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(parse_challenges(["Negotiate abc", "Bearer service=x"]).is_empty());
    }

    #[test]
    fn tokens() {
        let t = parse_token(br#"{"token":"abc","expires_in":300}"#).unwrap();
        assert_eq!(t.value, "abc");
        assert!(t.fresh());
        let t = parse_token(br#"{"access_token":"xyz"}"#).unwrap();
        assert_eq!(t.value, "xyz");
        assert!(parse_token(br#"{"token":""}"#).is_none());
        assert!(parse_token(b"nope").is_none());
        assert_eq!(basic_header("user", "pass"), "Basic dXNlcjpwYXNz");
        assert_eq!(scope_key(&["b".into(), "a".into(), "b".into()]), "a b");
    }
}
