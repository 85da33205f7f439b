//! A real Distribution registry (`/usr/bin/docker-registry`) per test, on an
//! ephemeral port, with its config, storage and certificates in a temp dir.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use lazypull::digest::Digest;
use tempfile::TempDir;

use super::pki::{self, Ca, KeyKind};
use super::token::{self, TokenOptions, TokenServer};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Quiet time after which the access log is taken as complete.
pub const ACCESS_LOG_SETTLE: Duration = Duration::from_millis(300);

struct AccessLog {
    lines: Vec<String>,
    /// When the last line arrived.
    last: Instant,
}

/// How the registry is reached and who it lets in.
#[derive(Clone, Debug)]
pub enum Variant {
    /// Plain HTTP, anonymous.
    Plain,
    /// HTTPS with a certificate for 127.0.0.1/localhost from a test CA.
    Tls,
    /// HTTPS with a self-signed certificate for 127.0.0.1/localhost that is its own CA.
    TlsSelfSigned,
    /// HTTP with Basic authentication (bcrypt htpasswd file).
    Htpasswd { user: String, password: String },
    /// HTTP with Bearer tokens from an in-process [`TokenServer`].
    Token(TokenOptions),
}

/// A running (or stopped) registry process; killed and cleaned up on drop.
pub struct TestRegistry {
    dir: TempDir,
    variant: Variant,
    schema1: bool,
    port: u16,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    access_log: Arc<Mutex<AccessLog>>,
    ca: Option<PathBuf>,
    token: Option<TokenServer>,
    client: reqwest::blocking::Client,
}

impl TestRegistry {
    /// Starts a registry of `variant` on a fresh storage directory.
    pub fn start(variant: Variant) -> TestRegistry {
        Self::start_inner(variant, false)
    }

    /// Like [`Self::start`], with `compatibility.schema1.enabled`: Distribution 2.8
    /// refuses signed schema 1 manifest pushes without it.
    pub fn start_schema1(variant: Variant) -> TestRegistry {
        Self::start_inner(variant, true)
    }

    fn start_inner(variant: Variant, schema1: bool) -> TestRegistry {
        let dir = tempfile::Builder::new()
            .prefix("lazypull-registry-")
            .tempdir()
            .unwrap();
        let mut ca = None;
        let mut token = None;
        match &variant {
            Variant::Plain => {}
            Variant::Tls => {
                let authority = Ca::new(dir.path(), "ca");
                // Written as server.crt / server.key, which the config names.
                authority.issue("server", KeyKind::Ec, &["IP:127.0.0.1", "DNS:localhost"]);
                ca = Some(authority.cert);
            }
            Variant::TlsSelfSigned => {
                let cert =
                    pki::self_signed(dir.path(), "server", &["IP:127.0.0.1", "DNS:localhost"]);
                ca = Some(cert.cert);
            }
            Variant::Htpasswd { user, password } => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .stdin(Stdio::null())
                    .output()
                    .expect("cannot run htpasswd (apache2-utils)");
                assert!(
                    out.status.success(),
                    "htpasswd failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                fs::write(dir.path().join("htpasswd"), out.stdout).unwrap();
            }
            Variant::Token(opts) => {
                let token_dir = dir.path().join("token");
                fs::create_dir(&token_dir).unwrap();
                token = Some(TokenServer::start(&token_dir, opts.clone()));
            }
        }
        let mut client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60));
        if matches!(variant, Variant::TlsSelfSigned) {
            // rustls refuses a CA as a server certificate, trusted or not; the harness only
            // pushes through it.
            client = client.danger_accept_invalid_certs(true);
        } else if let Some(ca) = &ca {
            let pem = fs::read(ca).unwrap();
            client = client.add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
        }
        let mut registry = TestRegistry {
            dir,
            variant,
            schema1,
            port: 0,
            child: None,
            log: Arc::new(Mutex::new(String::new())),
            access_log: Arc::new(Mutex::new(AccessLog {
                lines: Vec::new(),
                last: Instant::now(),
            })),
            ca,
            token,
            client: client.build().unwrap(),
        };
        registry.spawn();
        registry
    }

    fn write_config(&self) -> PathBuf {
        let root = self.dir.path();
        let mut cfg = format!(
            "version: 0.1\n\
             log:\n  level: info\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
             \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: lazypull-test-secret\n",
            storage = self.storage_dir().display(),
            port = self.port,
        );
        match &self.variant {
            Variant::Plain => {}
            Variant::Tls | Variant::TlsSelfSigned => cfg.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                root.join("server.crt").display(),
                root.join("server.key").display()
            )),
            Variant::Htpasswd { .. } => cfg.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: lazypull-test\n    path: {}\n",
                root.join("htpasswd").display()
            )),
            Variant::Token(_) => {
                let t = self.token.as_ref().unwrap();
                cfg.push_str(&format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    t.realm(),
                    token::SERVICE,
                    token::ISSUER,
                    t.root_bundle().display()
                ));
            }
        }
        if self.schema1 {
            cfg.push_str("compatibility:\n  schema1:\n    enabled: true\n");
        }
        let path = root.join("config.yml");
        fs::write(&path, cfg).unwrap();
        path
    }

    /// Runs the process on `self.port` (0 at first start) and waits for its `listening on` line.
    fn spawn(&mut self) {
        let config = self.write_config();
        let mut child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {REGISTRY_BIN}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let access_log = Arc::clone(&self.access_log);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut log = access_log.lock().unwrap();
                log.lines.push(line);
                log.last = Instant::now();
            }
        });
        let stderr = child.stderr.take().unwrap();
        let log = Arc::clone(&self.log);
        let (tx, rx) = mpsc::channel();
        // Keeps draining stderr for the process's whole life so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(port) = listening_port(&line) {
                    let _ = tx.send(port);
                }
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        self.child = Some(child);
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(port) => self.port = port,
            Err(_) => {
                self.kill();
                panic!(
                    "docker-registry did not report `listening on` within {START_TIMEOUT:?}; log:\n{}",
                    self.log()
                );
            }
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the registry process (SIGKILL); storage and port are kept for [`Self::restart`].
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts the process again on the same port and storage directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Whether the process is up (a frozen one counts as up, a stopped one not).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Freezes the process (SIGSTOP): connections stay open but nothing answers.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Resumes a frozen process (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let child = self.child.as_ref().expect("registry is not running");
        let status = Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {sig} failed");
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.host())
    }

    /// `127.0.0.1:PORT`, the registry part of an image reference.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn variant(&self) -> &Variant {
        &self.variant
    }

    /// The filesystem driver's root directory.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the registry keeps the bytes of blob `digest` (for corruption tests).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.storage_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// PEM file of the CA that signed the TLS certificate (the certificate itself for
    /// [`Variant::TlsSelfSigned`]); panics for the variants without TLS.
    pub fn ca_pem_path(&self) -> &Path {
        self.ca.as_deref().expect("only the TLS variants have a CA")
    }

    /// Writes the CA where rootless containers tools look for it under `home`:
    /// `<home>/.config/containers/certs.d/<host:port>/ca.crt`. Returns that path.
    pub fn install_ca_in_home(&self, home: &Path) -> PathBuf {
        let dir = home.join(".config/containers/certs.d").join(self.host());
        fs::create_dir_all(&dir).unwrap();
        let dest = dir.join("ca.crt");
        fs::copy(self.ca_pem_path(), &dest).unwrap();
        dest
    }

    /// The token server of [`Variant::Token`].
    pub fn token_server(&self) -> Option<&TokenServer> {
        self.token.as_ref()
    }

    /// The credentials a client needs: the htpasswd user, or the Basic credentials
    /// the token endpoint requires.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        match &self.variant {
            Variant::Htpasswd { user, password } => Some((user, password)),
            Variant::Token(TokenOptions {
                basic: Some((user, password)),
                ..
            }) => Some((user, password)),
            _ => None,
        }
    }

    /// Writes `<dir>/config.json` in Docker's format with [`Self::credentials`] for
    /// [`Self::host`] (point `DOCKER_CONFIG` at `dir`). Returns the file's path.
    pub fn write_docker_config(&self, dir: &Path) -> PathBuf {
        let (user, password) = self
            .credentials()
            .expect("this registry variant takes no credentials");
        let auth = STANDARD.encode(format!("{user}:{password}"));
        let config = serde_json::json!({ "auths": { self.host(): { "auth": auth } } });
        fs::create_dir_all(dir).unwrap();
        let path = dir.join("config.json");
        fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        path
    }

    /// An HTTP client that trusts the registry's CA (if any); no credentials attached.
    pub fn client(&self) -> &reqwest::blocking::Client {
        &self.client
    }

    /// An `Authorization` value that lets the harness push to and pull from `repo`.
    pub fn admin_authorization(&self, repo: &str) -> Option<String> {
        match &self.variant {
            Variant::Htpasswd { user, password } => Some(format!(
                "Basic {}",
                STANDARD.encode(format!("{user}:{password}"))
            )),
            Variant::Token(_) => Some(format!(
                "Bearer {}",
                self.token.as_ref().unwrap().mint(repo, &["pull", "push"])
            )),
            Variant::Plain | Variant::Tls | Variant::TlsSelfSigned => None,
        }
    }

    /// The access log (stdout), one line per request answered, across restarts:
    /// `127.0.0.1 - - [date] "GET /v2/… HTTP/1.1" 206 …`. The registry writes a line just
    /// after its response, so this first waits [`ACCESS_LOG_SETTLE`], then until no line
    /// has come for as long (at most 5 s in all).
    pub fn access_log(&self) -> Vec<String> {
        let give_up = Instant::now() + Duration::from_secs(5);
        std::thread::sleep(ACCESS_LOG_SETTLE);
        loop {
            let log = self.access_log.lock().unwrap();
            if log.last.elapsed() >= ACCESS_LOG_SETTLE || Instant::now() >= give_up {
                return log.lines.clone();
            }
            drop(log);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Requests whose request line contains `needle` (e.g. `"GET /v2/x/blobs/"`).
    pub fn requests_matching(&self, needle: &str) -> usize {
        self.access_log()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Everything the process has written to stderr (across restarts).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The port of a `msg="listening on 127.0.0.1:PORT"` log line.
fn listening_port(line: &str) -> Option<u16> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let addr = rest.split(['"', ' ', ',']).next()?;
    addr.rsplit(':').next()?.parse().ok()
}
