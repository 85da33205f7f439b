//! HTTP to one registry: scheme choice, TLS roots, auth, redirects, retries.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::blocking::{Client, Response};
use reqwest::header::{
    AUTHORIZATION, HeaderMap, HeaderValue, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{StatusCode, Url};
use serde::Deserialize;

use super::auth::{Challenge, Credentials, TokenAnswer, TokenCache, find_credentials};
use super::error::RegistryError;

const MAX_REDIRECTS: usize = 10;
const MAX_BACKOFF: Duration = Duration::from_secs(8);
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// How to talk to registries; the CLI fills it from its flags.
#[derive(Clone, Debug)]
pub struct TransportOptions {
    /// Accept any certificate, and plain http, for every host.
    pub insecure: bool,
    pub connect_timeout: Duration,
    /// Longest wait for response headers or for the next body bytes.
    pub timeout: Duration,
    /// Extra attempts after a transient failure.
    pub retries: u32,
    /// First backoff; doubled on every retry, with jitter.
    pub backoff: Duration,
}

impl Default for TransportOptions {
    fn default() -> Self {
        Self {
            insecure: false,
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
            retries: 4,
            backoff: Duration::from_millis(200),
        }
    }
}

/// A connection to one repository on one registry.
pub struct Transport {
    /// The registry as the reference names it (credentials are stored so).
    registry: String,
    /// The host that serves the API (`registry-1.docker.io` for docker.io).
    host: String,
    repository: String,
    base: Url,
    client: Client,
    credentials: Option<Credentials>,
    challenge: Option<Challenge>,
    tokens: TokenCache,
    opts: TransportOptions,
}

impl Transport {
    /// Finds the scheme the registry speaks and how it wants to be
    /// authenticated (`GET /v2/`).
    pub fn connect(
        registry: &str,
        host: &str,
        repository: &str,
        opts: &TransportOptions,
    ) -> Result<Arc<Self>, RegistryError> {
        let client = build_client(host, opts)?;
        let credentials = find_credentials(registry)?;
        let mut transport = Self {
            registry: registry.to_string(),
            host: host.to_string(),
            repository: repository.to_string(),
            base: Url::parse("http://placeholder/").map_err(|e| client_error(host, e))?,
            client,
            credentials,
            challenge: None,
            tokens: TokenCache::default(),
            opts: opts.clone(),
        };
        // Docker treats loopback registries as insecure: https first, then http.
        let schemes: &[&str] = if opts.insecure || is_loopback(host) {
            &["https", "http"]
        } else {
            &["https"]
        };
        let mut first_error = None;
        for scheme in schemes {
            transport.base = Url::parse(&format!("{scheme}://{host}/"))
                .map_err(|e| client_error(host, format!("invalid host: {e}")))?;
            let last = Some(scheme) == schemes.last();
            match transport.probe(last) {
                Ok(challenge) => {
                    tracing::debug!(base = %transport.base, ?challenge, "registry answers");
                    transport.challenge = challenge;
                    return Ok(Arc::new(transport));
                }
                Err(e) => {
                    tracing::debug!(scheme, error = %e, "probe failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| client_error(host, "no scheme to try")))
    }

    /// `GET /v2/`. Retries only when no other scheme is left to try, so a
    /// plain-http loopback registry is found at once.
    fn probe(&self, retry: bool) -> Result<Option<Challenge>, RegistryError> {
        let url = self.url("v2/")?;
        let attempt = || {
            let resp = self
                .client
                .get(url.clone())
                .timeout(self.opts.timeout)
                .send()
                .map_err(|e| self.too_slow(self.classify(e, "GET", &url)))?;
            match resp.status() {
                StatusCode::OK => Ok(None),
                StatusCode::UNAUTHORIZED => Ok(resp
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(Challenge::parse)),
                status => Err(self.status_error("registry API check", &url, resp, status)),
            }
        };
        if retry {
            self.with_retries("registry API check", attempt)
        } else {
            attempt()
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn timeout(&self) -> Duration {
        self.opts.timeout
    }

    pub fn retries(&self) -> u32 {
        self.opts.retries
    }

    pub fn url(&self, path: &str) -> Result<Url, RegistryError> {
        self.base
            .join(path)
            .map_err(|e| client_error(&self.host, format!("bad path {path}: {e}")))
    }

    /// Runs `attempt` until it succeeds, fails for good, or retries run out.
    pub fn with_retries<T>(
        &self,
        what: &str,
        mut attempt: impl FnMut() -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let mut tries = 0;
        loop {
            match attempt() {
                Err(e) if e.is_transient() && tries < self.opts.retries => {
                    tries += 1;
                    let delay = backoff(self.opts.backoff, tries);
                    tracing::warn!(what, host = %self.host, retry = tries, of = self.opts.retries,
                        ?delay, error = %e, "transient registry failure, retrying");
                    std::thread::sleep(delay);
                }
                Err(e) => {
                    // The line a failed read leaves in the log: what (the blob and its
                    // bytes), the last error, and how many times it was tried again.
                    if tries > 0 || e.is_transient() {
                        tracing::warn!(what, host = %self.host, retries = tries, error = %e, "giving up");
                    }
                    return Err(e);
                }
                Ok(v) => return Ok(v),
            }
        }
    }

    /// One GET with auth and redirects; a non-2xx answer becomes an error.
    /// Its body may take as long as it likes while bytes keep coming (a
    /// layer over a slow link).
    pub fn get(
        &self,
        url: &Url,
        headers: HeaderMap,
        what: &str,
    ) -> Result<Response, RegistryError> {
        self.get_within(url, headers, what, None)
    }

    /// A GET of metadata (a manifest, an index, a config, a tag list): the
    /// whole answer, body included, must arrive within `--timeout`, so a
    /// registry that trickles it in cannot hold a command for hours.
    /// [`Transport::too_slow`] names a body read that broke the bound.
    pub fn get_metadata(
        &self,
        url: &Url,
        headers: HeaderMap,
        what: &str,
    ) -> Result<Response, RegistryError> {
        self.get_within(url, headers, what, Some(self.opts.timeout))
            .map_err(|e| self.too_slow(e))
    }

    /// A timeout of a metadata request: it broke the bound on the whole answer.
    pub fn too_slow(&self, e: RegistryError) -> RegistryError {
        match e {
            RegistryError::Timeout {
                host,
                what,
                timeout,
            } => RegistryError::TooSlow {
                host,
                what,
                limit: timeout,
            },
            e => e,
        }
    }

    fn get_within(
        &self,
        url: &Url,
        headers: HeaderMap,
        what: &str,
        total: Option<Duration>,
    ) -> Result<Response, RegistryError> {
        let mut refreshed = false;
        loop {
            let token = self.authorization(false)?;
            let resp = self.follow(url, &headers, token.as_ref(), what, total)?;
            let status = resp.status();
            if status.is_success() {
                return Ok(resp);
            }
            if status == StatusCode::UNAUTHORIZED {
                // A token that worked a moment ago may have expired early or
                // been revoked: get a new one once before giving up.
                if !refreshed && matches!(self.challenge, Some(Challenge::Bearer { .. })) {
                    refreshed = true;
                    self.tokens.forget(&self.scope());
                    self.authorization(true)?;
                    continue;
                }
                return Err(self.unauthorized());
            }
            return Err(self.status_error(what, url, resp, status));
        }
    }

    fn follow(
        &self,
        url: &Url,
        headers: &HeaderMap,
        auth: Option<&HeaderValue>,
        what: &str,
        total: Option<Duration>,
    ) -> Result<Response, RegistryError> {
        let mut current = url.clone();
        for _ in 0..MAX_REDIRECTS {
            let mut req = self.client.get(current.clone()).headers(headers.clone());
            if let Some(total) = total {
                req = req.timeout(total);
            }
            // The registry's credentials go to the registry only, never to
            // the storage host it redirects to.
            if let Some(auth) = auth.filter(|_| same_origin(&current, &self.base)) {
                req = req.header(AUTHORIZATION, auth.clone());
            }
            let resp = req.send().map_err(|e| self.classify(e, what, &current))?;
            if !resp.status().is_redirection() {
                return Ok(resp);
            }
            let location = resp
                .headers()
                .get(LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| RegistryError::Http {
                    what: what.to_string(),
                    url: current.to_string(),
                    status: resp.status().as_u16(),
                    detail: "redirect without a Location".into(),
                })?;
            current = current.join(location).map_err(|e| RegistryError::Http {
                what: what.to_string(),
                url: current.to_string(),
                status: resp.status().as_u16(),
                detail: format!("bad redirect Location {location:?}: {e}"),
            })?;
            tracing::debug!(to = %current, "following redirect");
        }
        Err(RegistryError::Transfer {
            what: what.to_string(),
            url: url.to_string(),
            detail: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }

    fn scope(&self) -> String {
        format!("repository:{}:pull", self.repository)
    }

    /// The Authorization header the registry's challenge asks for.
    fn authorization(&self, force: bool) -> Result<Option<HeaderValue>, RegistryError> {
        let value = match &self.challenge {
            None => None,
            Some(Challenge::Basic) => self
                .credentials
                .as_ref()
                .and_then(Credentials::basic_header),
            Some(Challenge::Bearer { realm, service, .. }) => {
                let scope = self.scope();
                let token = match self.tokens.get(&scope).filter(|_| !force) {
                    Some(t) => t,
                    None => {
                        let t = self.fetch_token(realm, service.as_deref(), &scope)?;
                        self.tokens.put(&scope, t.clone());
                        t
                    }
                };
                Some(format!("Bearer {}", token.value))
            }
        };
        value
            .map(|v| HeaderValue::from_str(&v).map_err(|e| client_error(&self.host, e)))
            .transpose()
    }

    fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<super::auth::Token, RegistryError> {
        let mut url = Url::parse(realm).map_err(|e| RegistryError::Invalid {
            reference: self.host.clone(),
            what: "token realm".into(),
            detail: format!("{realm:?}: {e}"),
        })?;
        let what = "token request";
        self.with_retries(what, || {
            let resp = match &self.credentials {
                Some(Credentials::IdentityToken(refresh)) => {
                    let mut form = url::form_urlencoded::Serializer::new(String::new());
                    form.append_pair("grant_type", "refresh_token")
                        .append_pair("refresh_token", refresh)
                        .append_pair("client_id", "lazypull")
                        .append_pair("scope", scope);
                    if let Some(s) = service {
                        form.append_pair("service", s);
                    }
                    self.client
                        .post(url.clone())
                        .timeout(self.opts.timeout)
                        .header("Content-Type", "application/x-www-form-urlencoded")
                        .body(form.finish())
                        .send()
                }
                creds => {
                    {
                        let mut q = url.query_pairs_mut();
                        q.clear();
                        if let Some(s) = service {
                            q.append_pair("service", s);
                        }
                        q.append_pair("scope", scope);
                    }
                    let mut req = self.client.get(url.clone()).timeout(self.opts.timeout);
                    if let Some(basic) = creds.as_ref().and_then(Credentials::basic_header) {
                        req = req.header(AUTHORIZATION, basic);
                    }
                    req.send()
                }
            }
            .map_err(|e| self.too_slow(self.classify(e, what, &url)))?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err(self.unauthorized());
            }
            if !status.is_success() {
                return Err(self.status_error(what, &url, resp, status));
            }
            let answer: TokenAnswer = resp.json().map_err(|e| {
                if e.is_timeout() {
                    RegistryError::TooSlow {
                        host: self.host.clone(),
                        what: "token answer".into(),
                        limit: self.opts.timeout,
                    }
                } else {
                    RegistryError::Invalid {
                        reference: self.host.clone(),
                        what: "token answer".into(),
                        detail: e.to_string(),
                    }
                }
            })?;
            tracing::debug!(scope, "got a registry token");
            answer.into_token().ok_or_else(|| RegistryError::Invalid {
                reference: self.host.clone(),
                what: "token answer".into(),
                detail: "no token in it".into(),
            })
        })
    }

    fn unauthorized(&self) -> RegistryError {
        let (host, repository) = (self.registry.clone(), self.repository.clone());
        if self.credentials.is_some() {
            RegistryError::CredentialsRejected { host, repository }
        } else {
            RegistryError::Unauthorized { host, repository }
        }
    }

    /// Maps a non-success answer to an error; 429 waits out `Retry-After`
    /// first so the retry that follows is welcome.
    fn status_error(
        &self,
        what: &str,
        url: &Url,
        resp: Response,
        status: StatusCode,
    ) -> RegistryError {
        if status == StatusCode::TOO_MANY_REQUESTS
            && let Some(asked) = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        {
            // No wait is longer than `--timeout`: a user bounds how long a read
            // waits with it, whatever the registry asks for.
            let wait = Duration::from_secs(asked)
                .min(MAX_RETRY_AFTER)
                .min(self.opts.timeout);
            tracing::info!(what, host = %self.host, retry_after = asked, ?wait, "registry asks to slow down (429)");
            std::thread::sleep(wait);
        }
        if status == StatusCode::FORBIDDEN {
            return RegistryError::Denied {
                host: self.registry.clone(),
                repository: self.repository.clone(),
            };
        }
        RegistryError::Http {
            what: what.to_string(),
            url: url.to_string(),
            status: status.as_u16(),
            detail: error_code(resp),
        }
    }

    /// Names what went wrong with a request that got no HTTP answer.
    pub fn classify(&self, e: reqwest::Error, what: &str, url: &Url) -> RegistryError {
        let detail = root_cause(&e);
        let host = url.host_str().map_or_else(
            || self.host.clone(),
            |h| match url.port_or_known_default() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_string(),
            },
        );
        if let Some(tls) = tls_error(&e) {
            RegistryError::tls(host, detail, tls)
        } else if e.is_timeout() {
            RegistryError::Timeout {
                host,
                what: what.to_string(),
                timeout: self.opts.timeout,
            }
        } else if e.is_connect() {
            RegistryError::Connect { host, detail }
        } else {
            RegistryError::Transfer {
                what: what.to_string(),
                url: url.to_string(),
                detail,
            }
        }
    }
}

fn build_client(host: &str, opts: &TransportOptions) -> Result<Client, RegistryError> {
    let mut builder = Client::builder()
        .use_rustls_tls()
        .redirect(reqwest::redirect::Policy::none())
        // `--timeout` bounds every wait, connecting included.
        .connect_timeout(opts.connect_timeout.min(opts.timeout))
        .timeout(opts.timeout)
        .user_agent(concat!("lazypull/", env!("CARGO_PKG_VERSION")))
        .danger_accept_invalid_certs(opts.insecure);
    for path in ca_files(host) {
        let pem = std::fs::read(&path)
            .map_err(|e| client_error(host, format!("reading {}: {e}", path.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            client_error(
                host,
                format!("{} is not a PEM certificate: {e}", path.display()),
            )
        })?;
        tracing::debug!(ca = %path.display(), "trusting CA for {host}");
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| client_error(host, e))
}

/// CA certificates for `host` in the certs.d directories that podman
/// (system-wide and rootless) and docker read.
fn ca_files(host: &str) -> Vec<PathBuf> {
    let mut dirs = vec![
        PathBuf::from("/etc/containers/certs.d"),
        PathBuf::from("/etc/docker/certs.d"),
    ];
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".config/containers/certs.d"));
    }
    let mut files = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir.join(host)) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "crt"))
            .collect();
        found.sort();
        files.extend(found);
    }
    files
}

fn is_loopback(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((n, p)) if p.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1 << attempt.min(16)).min(MAX_BACKOFF);
    // Full jitter in the upper half keeps many clients from retrying in step.
    exp / 2 + exp.mul_f64(fastrand::f64() / 2.0)
}

#[derive(Deserialize)]
struct ErrorBody {
    errors: Vec<ErrorItem>,
}

#[derive(Deserialize)]
struct ErrorItem {
    code: String,
    #[serde(default)]
    message: String,
}

/// The distribution spec's error code (`MANIFEST_UNKNOWN: ...`), if any.
fn error_code(resp: Response) -> String {
    let body = resp.bytes().unwrap_or_default();
    match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(b) if !b.errors.is_empty() => b
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.code, e.message))
            .collect::<Vec<_>>()
            .join("; "),
        _ => String::from_utf8_lossy(&body[..body.len().min(200)])
            .trim()
            .to_string(),
    }
}

/// An error and, if it says something else, its root cause: a broken body is
/// "error decoding response body: connection reset by peer", not just the former.
pub(super) fn with_root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let (top, root) = (e.to_string(), root_cause(e));
    if top.contains(&root) {
        top
    } else {
        format!("{top}: {root}")
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn tls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        // rustls errors arrive wrapped in one or more io::Errors, whose
        // `source()` skips the wrapped error itself.
        let mut inner = err;
        while let Some(next) = inner
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            inner = next;
        }
        if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        cur = err.source();
    }
    None
}

fn client_error(host: &str, e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Client {
        host: host.to_string(),
        detail: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("127.0.0.1:41234"));
        assert!(is_loopback("127.3.4.5"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry.example:5000"));
        assert!(!is_loopback("10.0.0.1:5000"));
    }

    #[test]
    fn origin_includes_port() {
        let a = Url::parse("http://127.0.0.1:5000/v2/").unwrap();
        let b = Url::parse("http://127.0.0.1:5001/blob").unwrap();
        assert!(!same_origin(&a, &b));
        assert!(same_origin(
            &a,
            &Url::parse("http://127.0.0.1:5000/x").unwrap()
        ));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_millis(100);
        let first = backoff(base, 1);
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(200));
        assert!(backoff(base, 30) <= MAX_BACKOFF);
    }
}
