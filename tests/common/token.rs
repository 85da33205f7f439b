//! A Docker-style token server in the test process: `GET /token?service=…&scope=…`
//! answers RS256 JWTs that a real Distribution registry (`auth.token`) accepts.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

use super::pki::{self, Ca, KeyKind};

/// Distribution accepts a token until `exp + 60 s` (its clock-skew leeway); the
/// server moves `exp` back by as much so the registry refuses it `lifetime` after issue.
const REGISTRY_LEEWAY_SECS: u64 = 60;

/// The `service` the registry is configured with and the token's audience.
pub const SERVICE: &str = "lazypull-test-registry";
/// The token issuer the registry trusts.
pub const ISSUER: &str = "lazypull-test-issuer";

/// How the token server behaves.
#[derive(Clone, Debug)]
pub struct TokenOptions {
    /// How long an issued token is accepted by the registry (`expires_in`).
    pub lifetime: Duration,
    /// Basic credentials the token endpoint requires; `None` serves anyone.
    pub basic: Option<(String, String)>,
}

impl Default for TokenOptions {
    fn default() -> Self {
        TokenOptions {
            lifetime: Duration::from_secs(300),
            basic: None,
        }
    }
}

/// One request the token endpoint answered (with a token or a 401).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    pub service: Option<String>,
    pub scopes: Vec<String>,
    /// User name of the Basic credentials sent, if any.
    pub user: Option<String>,
    /// Whether a token was issued.
    pub granted: bool,
}

struct Shared {
    opts: TokenOptions,
    signing_key: PathBuf,
    x5c: String,
    issued: AtomicUsize,
    requests: Mutex<Vec<TokenRequest>>,
    stop: AtomicBool,
}

/// The running token server; stops on drop.
pub struct TokenServer {
    shared: Arc<Shared>,
    port: u16,
    root_bundle: PathBuf,
    thread: Option<JoinHandle<()>>,
}

impl TokenServer {
    /// Starts a server whose CA and signing key live in `dir`.
    pub fn start(dir: &Path, opts: TokenOptions) -> TokenServer {
        let ca = Ca::new(dir, "token-ca");
        let signer = ca.issue("token-signer", KeyKind::Rsa, &[]);
        let x5c = STANDARD.encode(pki::cert_der(&signer.cert));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind token server");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            opts,
            signing_key: signer.key,
            x5c,
            issued: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = Arc::clone(&s);
                std::thread::spawn(move || serve(&s, conn));
            }
        });
        TokenServer {
            shared,
            port,
            root_bundle: ca.cert,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT/token`, the registry's `realm`.
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// PEM file of the CA the signing certificate chains to (`rootcertbundle`).
    pub fn root_bundle(&self) -> &Path {
        &self.root_bundle
    }

    /// Tokens handed out by the HTTP endpoint so far ([`TokenServer::mint`] is not counted).
    pub fn tokens_issued(&self) -> usize {
        self.shared.issued.load(Ordering::SeqCst)
    }

    /// Every request the endpoint has answered, oldest first.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Signs a token for `actions` on repository `repo` directly (e.g. a push token
    /// for the harness), with the configured lifetime.
    pub fn mint(&self, repo: &str, actions: &[&str]) -> String {
        let access = vec![(
            repo.to_string(),
            actions.iter().map(|a| a.to_string()).collect(),
        )];
        jwt(&self.shared, "harness", &access)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn jwt(s: &Shared, subject: &str, access: &[(String, Vec<String>)]) -> String {
    let now = unix_now();
    let header = serde_json::json!({ "typ": "JWT", "alg": "RS256", "x5c": [s.x5c] });
    let access: Vec<_> = access
        .iter()
        .map(|(name, actions)| {
            serde_json::json!({ "type": "repository", "name": name, "actions": actions })
        })
        .collect();
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": subject,
        "aud": SERVICE,
        "exp": (now + s.opts.lifetime.as_secs()).saturating_sub(REGISTRY_LEEWAY_SECS),
        "nbf": now,
        "iat": now,
        "jti": format!("{:016x}", fastrand::u64(..)),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = pki::sign_rs256(&s.signing_key, signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

fn serve(s: &Shared, conn: TcpStream) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(&conn);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut authorization = None;
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line == "\r\n" || line == "\n" => break,
            Ok(_) => {
                if let Some((k, v)) = line.split_once(':')
                    && k.eq_ignore_ascii_case("authorization")
                {
                    authorization = Some(v.trim().to_string());
                }
            }
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut conn = conn;
    if !request_line.starts_with("GET ") || path != "/token" {
        respond(&mut conn, "404 Not Found", "", "not found\n");
        return;
    }
    let mut service = None;
    let mut scopes = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "service" => service = Some(percent_decode(v)),
            "scope" => scopes.extend(percent_decode(v).split(' ').map(str::to_string)),
            _ => {}
        }
    }
    let creds = authorization.as_deref().and_then(basic_credentials);
    let user = creds.as_ref().map(|(u, _)| u.clone());
    let granted = match &s.opts.basic {
        None => true,
        Some(expected) => creds.as_ref() == Some(expected),
    };
    s.requests.lock().unwrap().push(TokenRequest {
        service,
        scopes: scopes.clone(),
        user: user.clone(),
        granted,
    });
    if !granted {
        respond(
            &mut conn,
            "401 Unauthorized",
            "WWW-Authenticate: Basic realm=\"lazypull-test-token\"\r\n",
            "{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}",
        );
        return;
    }
    // Only pull is ever granted over HTTP: lazypull never pushes.
    let access: Vec<(String, Vec<String>)> = scopes
        .iter()
        .filter_map(|scope| {
            let mut parts = scope.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            (kind == "repository" && actions.split(',').any(|a| a == "pull"))
                .then(|| (name.to_string(), vec!["pull".to_string()]))
        })
        .collect();
    let token = jwt(s, user.as_deref().unwrap_or("anonymous"), &access);
    s.issued.fetch_add(1, Ordering::SeqCst);
    let body = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": s.opts.lifetime.as_secs(),
        "issued_at": rfc3339(unix_now()),
    });
    respond(
        &mut conn,
        "200 OK",
        "Content-Type: application/json\r\n",
        &body.to_string(),
    );
}

fn respond(conn: &mut TcpStream, status: &str, headers: &str, body: &str) {
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn basic_credentials(header: &str) -> Option<(String, String)> {
    let (scheme, rest) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(rest.trim()).ok()?).ok()?;
    let (u, p) = decoded.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time.
fn rfc3339(secs: u64) -> String {
    let (year, month, day, hour, minute, second) = lazypull::time::utc(secs as i64);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
}
