//! Registry credentials and the Bearer token flow.
//!
//! docker's config.json and containers' auth.json share one format, so one
//! reader serves both (the docker_credential crate reads only docker's).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;

use super::error::RegistryError;
use crate::reference::DOCKER_HUB;

/// Docker Hub's key in credential stores.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";
/// Lifetime the token spec tells clients to assume when `expires_in` is absent.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Basic {
        username: String,
        password: String,
    },
    /// An OAuth refresh token (`identitytoken`, or a helper's `<token>` user).
    IdentityToken(String),
}

impl std::fmt::Debug for Credentials {
    // Never print secrets into logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Self::IdentityToken(_) => write!(f, "IdentityToken(***)"),
        }
    }
}

impl Credentials {
    pub fn basic_header(&self) -> Option<String> {
        match self {
            Self::Basic { username, password } => Some(format!(
                "Basic {}",
                BASE64.encode(format!("{username}:{password}"))
            )),
            Self::IdentityToken(_) => None,
        }
    }
}

#[derive(Deserialize, Default)]
struct AuthFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// The files to look in, in the order podman uses them, then docker's.
fn auth_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE") {
        files.push(PathBuf::from(p));
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        files.push(Path::new(&dir).join("containers/auth.json"));
    }
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        files.push(Path::new(&dir).join("config.json"));
    } else if let Some(home) = std::env::var_os("HOME") {
        files.push(Path::new(&home).join(".docker/config.json"));
    }
    files
}

/// Looks up credentials for `registry` (as the user wrote it, e.g.
/// `docker.io` or `localhost:5000`). `Ok(None)` means anonymous.
pub fn find_credentials(registry: &str) -> Result<Option<Credentials>, RegistryError> {
    for path in auth_files() {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(RegistryError::Credentials {
                    host: registry.to_string(),
                    detail: format!("cannot read {}: {e}", path.display()),
                });
            }
        };
        let file: AuthFile =
            serde_json::from_str(&text).map_err(|e| RegistryError::Credentials {
                host: registry.to_string(),
                detail: format!("{} is not valid JSON: {e}", path.display()),
            })?;
        if let Some(creds) = lookup(&file, registry, &path)? {
            tracing::debug!(registry, file = %path.display(), "using stored credentials");
            return Ok(Some(creds));
        }
    }
    Ok(None)
}

fn lookup(
    file: &AuthFile,
    registry: &str,
    path: &Path,
) -> Result<Option<Credentials>, RegistryError> {
    let keys = candidate_keys(registry);
    if let Some(helper) = keys.iter().find_map(|k| file.cred_helpers.get(k)) {
        return run_helper(helper, &keys[0], registry);
    }
    for key in &keys {
        if let Some(entry) = file.auths.get(key)
            && let Some(creds) = decode_entry(entry, registry, path)?
        {
            return Ok(Some(creds));
        }
    }
    // Entries may also be written as URLs (`https://host/v1/`).
    for (key, entry) in &file.auths {
        if normalize_key(key) == registry
            && let Some(creds) = decode_entry(entry, registry, path)?
        {
            return Ok(Some(creds));
        }
    }
    match &file.creds_store {
        Some(store) => run_helper(store, &keys[0], registry),
        None => Ok(None),
    }
}

fn candidate_keys(registry: &str) -> Vec<String> {
    if registry == DOCKER_HUB {
        vec![
            DOCKER_HUB_KEY.to_string(),
            "docker.io".into(),
            "index.docker.io".into(),
            "registry-1.docker.io".into(),
        ]
    } else {
        vec![registry.to_string()]
    }
}

/// `https://host:port/v1/` → `host:port`.
fn normalize_key(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

fn decode_entry(
    entry: &AuthEntry,
    registry: &str,
    path: &Path,
) -> Result<Option<Credentials>, RegistryError> {
    if let Some(token) = entry.identitytoken.as_ref().filter(|t| !t.is_empty()) {
        return Ok(Some(Credentials::IdentityToken(token.clone())));
    }
    if let Some(auth) = entry.auth.as_ref().filter(|a| !a.is_empty()) {
        let bad = |why: &str| RegistryError::Credentials {
            host: registry.to_string(),
            detail: format!("the auth entry in {} {why}", path.display()),
        };
        let raw = BASE64
            .decode(auth.trim())
            .map_err(|_| bad("is not base64"))?;
        let text = String::from_utf8(raw).map_err(|_| bad("is not UTF-8"))?;
        let (username, password) = text
            .split_once(':')
            .ok_or_else(|| bad("is not user:password"))?;
        return Ok(Some(Credentials::Basic {
            username: username.to_string(),
            password: password.to_string(),
        }));
    }
    match (&entry.username, &entry.password) {
        (Some(u), Some(p)) => Ok(Some(Credentials::Basic {
            username: u.clone(),
            password: p.clone(),
        })),
        _ => Ok(None),
    }
}

#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// Runs `docker-credential-<helper> get` with the server URL on stdin.
fn run_helper(
    helper: &str,
    server: &str,
    registry: &str,
) -> Result<Option<Credentials>, RegistryError> {
    let program = format!("docker-credential-{helper}");
    let fail = |detail: String| RegistryError::Credentials {
        host: registry.to_string(),
        detail,
    };
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run credential helper {program}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(server.as_bytes())
            .map_err(|e| fail(format!("writing to {program}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| fail(format!("waiting for {program}: {e}")))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        // Helpers answer "credentials not found" when they know nothing of
        // the server: that is anonymous access, not an error.
        if msg.to_lowercase().contains("not found") {
            return Ok(None);
        }
        return Err(fail(format!("{program} get failed: {}", msg.trim())));
    }
    let answer: HelperAnswer = serde_json::from_slice(&out.stdout)
        .map_err(|e| fail(format!("{program} answered invalid JSON: {e}")))?;
    Ok(Some(if answer.username == "<token>" {
        Credentials::IdentityToken(answer.secret)
    } else {
        Credentials::Basic {
            username: answer.username,
            password: answer.secret,
        }
    }))
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

impl Challenge {
    pub fn parse(header: &str) -> Option<Self> {
        let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Self::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = parse_params(rest);
        Some(Self::Bearer {
            realm: params.get("realm")?.clone(),
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        })
    }
}

/// `key="value",key2=value2` (values may hold commas inside quotes).
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        out.insert(key, value.to_string());
        rest = tail.trim_start().trim_start_matches(',');
    }
    out
}

#[derive(Deserialize)]
pub struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl TokenAnswer {
    pub fn into_token(self) -> Option<Token> {
        let value = self.token.or(self.access_token).filter(|t| !t.is_empty())?;
        let lifetime = self
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TOKEN_LIFETIME);
        Some(Token {
            value,
            expires: Instant::now() + lifetime,
            lifetime,
        })
    }
}

#[derive(Clone, Debug)]
pub struct Token {
    pub value: String,
    expires: Instant,
    lifetime: Duration,
}

impl Token {
    /// Refresh when less than a tenth of the lifetime (at least 2 s) is
    /// left, so a request never goes out with a token about to lapse.
    pub fn is_fresh(&self) -> bool {
        let margin = (self.lifetime / 10).max(Duration::from_secs(2));
        Instant::now() + margin < self.expires
    }
}

/// Tokens per scope for one registry.
#[derive(Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<String, Token>>,
}

impl TokenCache {
    pub fn get(&self, scope: &str) -> Option<Token> {
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.get(scope).filter(|t| t.is_fresh()).cloned()
    }

    pub fn put(&self, scope: &str, token: Token) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.insert(scope.to_string(), token);
    }

    pub fn forget(&self, scope: &str) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.remove(scope);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenge() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="x""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Negotiate"), None);
    }

    #[test]
    fn token_without_expiry_lives_sixty_seconds() {
        let answer: TokenAnswer = serde_json::from_str(r#"{"access_token":"t"}"#).unwrap();
        let token = answer.into_token().unwrap();
        assert_eq!(token.value, "t");
        assert_eq!(token.lifetime, Duration::from_secs(60));
        assert!(token.is_fresh());
        let short: TokenAnswer = serde_json::from_str(r#"{"token":"t","expires_in":1}"#).unwrap();
        assert!(!short.into_token().unwrap().is_fresh());
    }

    #[test]
    fn auth_entries_decode_and_match_url_keys() {
        let file: AuthFile = serde_json::from_str(
            r#"{"auths":{"https://reg.example:5000/v1/":{"auth":"dXNlcjpwYTpzcw=="}}}"#,
        )
        .unwrap();
        let creds = lookup(&file, "reg.example:5000", Path::new("x")).unwrap();
        assert_eq!(
            creds,
            Some(Credentials::Basic {
                username: "user".into(),
                password: "pa:ss".into()
            })
        );
        assert_eq!(
            lookup(&file, "other.example", Path::new("x")).unwrap(),
            None
        );
    }
}
