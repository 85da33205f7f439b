//! The fault proxy's own tests: each fault, as a plain HTTP client sees it, in front of a real
//! registry (Debian's `docker-registry`, Distribution 2.8).

#[path = "common/proxy.rs"]
mod proxy;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lazypull::digest::Digest;
use proxy::{Fault, FaultProxy, Rule};
use reqwest::blocking::{Client, RequestBuilder};
use reqwest::redirect::Policy;

const REPO: &str = "test/blob";
const USER: &str = "alice";
const PASSWORD: &str = "s3cret";
const REALM: &str = "proxy-test-realm";

/// A registry of the test's own, on a free loopback port, with its storage in a temp dir.
struct Registry {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start(with_auth: bool) -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n",
            dir.path().join("data").display()
        );
        if with_auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", USER, PASSWORD])
                .output()
                .expect("run htpasswd");
            assert!(out.status.success(), "htpasswd failed");
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, out.stdout).expect("write htpasswd");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: {REALM}\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("write config");
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start docker-registry");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let addr = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|line| {
                let rest = line.split("listening on ").nth(1)?;
                Some(rest.split('"').next()?.to_string())
            })
            .expect("registry exited before listening");
        // Keep draining the log so the registry never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Registry {
            child,
            url: format!("http://{addr}"),
            _dir: dir,
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> Client {
    Client::builder()
        .redirect(Policy::none())
        .build()
        .expect("client")
}

fn authed(builder: RequestBuilder, auth: bool) -> RequestBuilder {
    if auth {
        builder.basic_auth(USER, Some(PASSWORD))
    } else {
        builder
    }
}

fn blob_data() -> Vec<u8> {
    let mut data = vec![0u8; 300_000];
    fastrand::Rng::with_seed(7).fill(&mut data);
    data
}

/// Monolithic upload: POST for a session, PUT the bytes with their digest. Returns the digest.
fn push_blob(base: &str, auth: bool, data: &[u8]) -> String {
    let client = client();
    let post = authed(
        client.post(format!("{base}/v2/{REPO}/blobs/uploads/")),
        auth,
    )
    .send()
    .expect("start upload");
    assert_eq!(post.status(), 202, "upload session");
    let location = post.headers()["location"].to_str().expect("location");
    let location = if location.starts_with('/') {
        format!("{base}{location}")
    } else {
        location.to_string()
    };
    let digest = Digest::of(data).to_string();
    let sep = if location.contains('?') { '&' } else { '?' };
    let put = authed(client.put(format!("{location}{sep}digest={digest}")), auth)
        .body(data.to_vec())
        .send()
        .expect("finish upload");
    assert_eq!(put.status(), 201, "upload finished");
    digest
}

/// A registry holding one blob, behind a fresh proxy.
struct Setup {
    proxy: FaultProxy,
    _registry: Registry,
    data: Vec<u8>,
    blob_url: String,
}

fn setup(auth: bool) -> Setup {
    let registry = Registry::start(auth);
    let data = blob_data();
    let digest = push_blob(&registry.url, auth, &data);
    let proxy = FaultProxy::start(&registry.url);
    let blob_url = format!("{}/v2/{REPO}/blobs/{digest}", proxy.url());
    Setup {
        proxy,
        _registry: registry,
        data,
        blob_url,
    }
}

/// Reads a body until it ends or fails: the bytes that arrived, and the error if any.
fn read_all(mut body: impl Read) -> (Vec<u8>, Option<std::io::Error>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match body.read(&mut buf) {
            Ok(0) => return (got, None),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return (got, Some(e)),
        }
    }
}

/// Whether `err` or anything under it is an io::Error of `kind`.
fn has_io_kind(err: &(dyn std::error::Error + 'static), kind: std::io::ErrorKind) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == kind)
        {
            return true;
        }
        cur = e.source();
    }
    false
}

#[test]
fn relays_blobs_ranges_and_heads_and_logs_them() {
    let s = setup(false);
    let c = client();
    let full = c.get(&s.blob_url).send().expect("get");
    assert_eq!(full.status(), 200);
    assert_eq!(full.headers()["connection"], "close");
    assert_eq!(full.bytes().expect("body").as_ref(), s.data.as_slice());

    let part = c
        .get(&s.blob_url)
        .header("Range", "bytes=100-199")
        .send()
        .expect("range");
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 100-199/{}", s.data.len()).as_str()
    );
    assert_eq!(part.bytes().expect("body").as_ref(), &s.data[100..200]);

    let head = c.head(&s.blob_url).send().expect("head");
    assert_eq!(head.status(), 200);
    // reqwest's content_length() is the body's size, 0 for a HEAD: read the header.
    assert_eq!(
        head.headers()["content-length"],
        s.data.len().to_string().as_str()
    );

    let log = s.proxy.log();
    let summary: Vec<_> = log
        .iter()
        .map(|e| {
            (
                e.method.as_str(),
                e.range.as_deref(),
                e.status,
                e.body_bytes,
            )
        })
        .collect();
    let n = s.data.len() as u64;
    assert_eq!(
        summary,
        [
            ("GET", None, 200, n),
            ("GET", Some("bytes=100-199"), 206, 100),
            ("HEAD", None, 200, 0)
        ]
    );
    assert!(log.iter().all(|e| !e.authorization && e.fault.is_none()));
    assert_eq!(s.proxy.requests("get", "/blobs/sha256:").len(), 2);
    assert!(s.proxy.requests("*", "/manifests/").is_empty());
    s.proxy.clear_log();
    assert!(s.proxy.log().is_empty());
}

#[test]
fn pushes_go_through_with_bodies_queries_and_rewritten_locations() {
    let registry = Registry::start(false);
    let proxy = FaultProxy::start(&registry.url);
    let data = b"pushed through the proxy".to_vec();
    let digest = push_blob(proxy.url(), false, &data);
    let put = proxy.requests("PUT", "/blobs/uploads/");
    assert_eq!(
        put.len(),
        1,
        "the upload session URL pointed back at the proxy"
    );
    assert!(
        put[0]
            .query
            .as_deref()
            .is_some_and(|q| q.contains("digest="))
    );
    let direct = client()
        .get(format!("{}/v2/{REPO}/blobs/{digest}", registry.url))
        .send()
        .expect("get");
    assert_eq!(direct.bytes().expect("body").as_ref(), data.as_slice());
}

#[test]
fn ignore_range_answers_200_with_the_whole_blob() {
    let s = setup(false);
    s.proxy
        .add_rule(Rule::new("GET", "/blobs/", Fault::IgnoreRange));
    let resp = client()
        .get(&s.blob_url)
        .header("Range", "bytes=10-19")
        .send()
        .expect("get");
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("content-range").is_none());
    assert_eq!(resp.bytes().expect("body").as_ref(), s.data.as_slice());
    let log = s.proxy.log();
    assert_eq!(log[0].range.as_deref(), Some("bytes=10-19"));
    assert_eq!(log[0].fault, Some(Fault::IgnoreRange));
}

#[test]
fn wrong_content_range_names_bytes_the_body_does_not_hold() {
    let s = setup(false);
    s.proxy
        .add_rule(Rule::new("GET", "/blobs/", Fault::WrongContentRange));
    let resp = client()
        .get(&s.blob_url)
        .header("Range", "bytes=100-199")
        .send()
        .expect("get");
    assert_eq!(resp.status(), 206);
    assert_eq!(
        resp.headers()["content-range"],
        format!("bytes 101-200/{}", s.data.len()).as_str()
    );
    assert_eq!(resp.bytes().expect("body").as_ref(), &s.data[100..200]);
}

#[test]
fn reset_after_fails_the_body_with_a_reset_after_exactly_n_bytes() {
    let s = setup(false);
    s.proxy
        .add_rule(Rule::new("GET", "/blobs/", Fault::ResetAfter(70_000)));
    let resp = client().get(&s.blob_url).send().expect("headers arrive");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.content_length(), Some(s.data.len() as u64));
    let (got, err) = read_all(resp);
    let err = err.expect("the body must fail");
    assert!(
        has_io_kind(&err, std::io::ErrorKind::ConnectionReset),
        "expected a connection reset, got {err:?}"
    );
    assert_eq!(got.as_slice(), &s.data[..70_000]);
    assert_eq!(s.proxy.log()[0].body_bytes, 70_000);
}

#[test]
fn truncate_keeps_content_length_but_ends_early() {
    let s = setup(false);
    s.proxy
        .add_rule(Rule::new("GET", "/blobs/", Fault::Truncate(5_000)));
    let resp = client().get(&s.blob_url).send().expect("headers arrive");
    assert_eq!(resp.content_length(), Some(s.data.len() as u64));
    let (got, err) = read_all(resp);
    let err = err.expect("a short body must fail");
    assert!(
        !has_io_kind(&err, std::io::ErrorKind::ConnectionReset),
        "a truncation is a clean close, got {err:?}"
    );
    assert_eq!(got.as_slice(), &s.data[..5_000]);
}

#[test]
fn stall_sends_headers_then_nothing_and_ends_when_the_client_gives_up() {
    let s = setup(false);
    s.proxy.add_rule(Rule::new(
        "GET",
        "/blobs/",
        Fault::Stall(Duration::from_secs(60)),
    ));
    let c = Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .expect("client");
    let start = Instant::now();
    let resp = c.get(&s.blob_url).send().expect("headers arrive");
    assert_eq!(resp.status(), 200);
    let (got, err) = read_all(resp);
    let err = err.expect("the body must time out");
    assert!(got.is_empty(), "no body byte may arrive");
    assert!(start.elapsed() < Duration::from_secs(5), "{err}");
    let log = s.proxy.log();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "the stall ends when the client hangs up"
    );
    assert_eq!(log[0].body_bytes, 0);
}

#[test]
fn flip_byte_changes_exactly_that_byte() {
    let s = setup(false);
    s.proxy
        .add_rule(Rule::new("GET", "/blobs/", Fault::FlipByte(123_456)));
    let body = client().get(&s.blob_url).send().expect("get").bytes();
    let body = body.expect("body");
    assert_eq!(body.len(), s.data.len());
    let diffs: Vec<usize> = (0..body.len()).filter(|&i| body[i] != s.data[i]).collect();
    assert_eq!(diffs, [123_456]);
    assert_eq!(body[123_456], !s.data[123_456]);
}

#[test]
fn status_answers_without_asking_the_upstream() {
    // Nothing listens on port 1: any request that reaches the upstream gets 502.
    let proxy = FaultProxy::start("http://127.0.0.1:1");
    proxy.add_rule(Rule::new("GET", "/blobs/", Fault::Status(503, Some(7))));
    let c = client();
    let resp = c
        .get(format!("{}/v2/{REPO}/blobs/sha256:00", proxy.url()))
        .send()
        .expect("get");
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "7");
    let other = c.get(format!("{}/v2/", proxy.url())).send().expect("get");
    assert_eq!(other.status(), 502);
    let statuses: Vec<u16> = proxy.log().iter().map(|e| e.status).collect();
    assert_eq!(statuses, [503, 502]);
}

#[test]
fn rules_fire_on_the_requests_they_count() {
    let s = setup(false);
    let statuses = |n: usize| -> Vec<u16> {
        (0..n)
            .map(|_| {
                client()
                    .head(&s.blob_url)
                    .send()
                    .expect("head")
                    .status()
                    .as_u16()
            })
            .collect()
    };
    s.proxy
        .add_rule(Rule::new("HEAD", "/blobs/", Fault::Status(500, None)).nth(2));
    assert_eq!(statuses(3), [200, 500, 200]);

    s.proxy.clear_rules();
    s.proxy
        .add_rule(Rule::new("*", "/blobs/", Fault::Status(429, Some(1))).times(2));
    assert_eq!(statuses(3), [429, 429, 200]);

    s.proxy.clear_rules();
    // A rule for other requests neither fires nor counts these.
    s.proxy
        .add_rule(Rule::new("GET", "/blobs/", Fault::Status(418, None)));
    s.proxy
        .add_rule(Rule::new("HEAD", "/manifests/", Fault::Status(418, None)));
    s.proxy.add_rule(
        Rule::new("HEAD", "/blobs/", Fault::Status(502, None))
            .after(1)
            .times(2),
    );
    // The first rule added wins when two fire.
    s.proxy
        .add_rule(Rule::new("HEAD", "/blobs/", Fault::Status(503, None)).after(2));
    assert_eq!(statuses(5), [200, 502, 502, 503, 503]);
}

#[test]
fn redirect_to_storage_keeps_the_registry_credentials_away_from_it() {
    let s = setup(true);
    s.proxy
        .add_rule(Rule::new("GET", "/blobs/", Fault::RedirectToStorage));
    let c = client();
    let resp = authed(c.get(&s.blob_url), true).send().expect("get");
    assert_eq!(resp.status(), 307);
    let location = resp.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    assert!(location.starts_with(s.proxy.storage_url()), "{location}");

    // Followed by hand, without the credentials, as a client must.
    let whole = c.get(&location).send().expect("storage get");
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.bytes().expect("body").as_ref(), s.data.as_slice());
    let part = c
        .get(&location)
        .header("Range", "bytes=5-9")
        .send()
        .expect("storage range");
    assert_eq!(part.status(), 206);
    assert_eq!(part.bytes().expect("body").as_ref(), &s.data[5..10]);
    assert!(s.proxy.log().iter().all(|e| e.authorization));
    let storage = s.proxy.storage_log();
    assert_eq!(storage.len(), 2);
    assert!(
        storage
            .iter()
            .all(|e| !e.authorization && e.header("authorization").is_none())
    );
    assert_eq!(storage[1].range.as_deref(), Some("bytes=5-9"));

    // The storage log does see credentials when a client leaks them.
    let leaked = authed(c.get(&location), true).send().expect("leak");
    assert_eq!(leaked.status(), 200);
    assert!(s.proxy.storage_log()[2].authorization);

    // Storage faults and bad signatures.
    s.proxy.add_rule(
        Rule::new("GET", "/blobs/", Fault::Status(403, None))
            .on_storage()
            .nth(1),
    );
    assert_eq!(c.get(&location).send().expect("get").status(), 403);
    assert_eq!(c.get(&location).send().expect("get").status(), 200);
    let forged = format!(
        "{}?signature=forged",
        location.split('?').next().unwrap_or("")
    );
    assert_eq!(c.get(forged).send().expect("get").status(), 403);
}

#[test]
fn unauthorized_relays_the_upstream_challenge_once() {
    let s = setup(true);
    s.proxy
        .add_rule(Rule::new("GET", "/blobs/", Fault::Unauthorized).nth(1));
    let c = client();
    let first = authed(c.get(&s.blob_url), true).send().expect("get");
    assert_eq!(first.status(), 401);
    assert_eq!(
        first.headers()["www-authenticate"],
        format!("Basic realm=\"{REALM}\"").as_str()
    );
    // Credentials and Range reach the upstream: without them it would answer 401 or 200.
    let second = authed(c.get(&s.blob_url), true)
        .header("Range", "bytes=0-3")
        .send()
        .expect("get");
    assert_eq!(second.status(), 206);
    assert_eq!(second.bytes().expect("body").as_ref(), &s.data[..4]);
    let anonymous = c.get(&s.blob_url).send().expect("get");
    assert_eq!(anonymous.status(), 401);
}

#[test]
fn drip_paces_the_body() {
    let s = setup(false);
    s.proxy.add_rule(Rule::new(
        "GET",
        "/blobs/",
        Fault::Drip {
            bytes_per_sec: 40_000,
        },
    ));
    let start = Instant::now();
    let body = client()
        .get(&s.blob_url)
        .header("Range", "bytes=0-19999")
        .send()
        .expect("get")
        .bytes()
        .expect("body");
    let elapsed = start.elapsed();
    assert_eq!(body.as_ref(), &s.data[..20_000]);
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_secs(3),
        "20 kB at 40 kB/s took {elapsed:?}"
    );
}
