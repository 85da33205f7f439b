//! A fault-injecting HTTP proxy that sits in front of a real registry.
//!
//! `FaultProxy::start(upstream)` listens on a loopback port, forwards every request to the
//! upstream registry (one request per connection, answered with `Connection: close`) and
//! relays the answer, unless a scripted `Rule` matches: then it damages the answer the way
//! a flaky registry, proxy or object store would. It also runs a second loopback server,
//! the "storage", which plays the object store a registry redirects blob downloads to: it
//! serves what the upstream serves but records the headers of every request, so a test can
//! check that the registry's credentials never reached it.
//!
//! Every request is logged (method, path, Range, whether Authorization was sent, status,
//! body bytes sent) so tests can count fetches and retries.

// Several test binaries include this file and each uses a subset of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, Response};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

/// What to do to a matching request's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Send the headers and this many body bytes, then reset the connection (RST).
    ResetAfter(u64),
    /// Send the headers, then nothing for this long, then close the connection.
    /// Ends early when the client hangs up or the proxy is dropped.
    Stall(Duration),
    /// Send the upstream's (correct) Content-Length but only this many body bytes, then close.
    Truncate(u64),
    /// Invert every bit of the body byte at this offset (offset within the body sent).
    FlipByte(u64),
    /// Forward without the Range header: the client gets 200 and the whole blob.
    IgnoreRange,
    /// Relay the 206 answer but with a Content-Range one byte later than what the body holds.
    WrongContentRange,
    /// Answer this status (with `Retry-After: <secs>` if given) without asking the upstream.
    Status(u16, Option<u32>),
    /// Answer 307 to the storage server, like a registry handing a blob to object storage.
    RedirectToStorage,
    /// Answer 401 with the challenge the upstream gives the same request without credentials,
    /// as for an expired token (no WWW-Authenticate if the upstream asks for none).
    Unauthorized,
    /// Relay the whole answer, but the body at this rate.
    Drip { bytes_per_sec: u64 },
}

/// Which of the two servers a rule applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    Registry,
    Storage,
}

/// A scripted fault: which requests it hits and what it does.
///
/// A rule counts the requests that match its server, method and path substring from the moment
/// it is added; by default it fires on every one of them. When several rules fire on one
/// request, the one added first wins (every matching rule still counts the request).
#[derive(Clone, Debug)]
pub struct Rule {
    server: Server,
    method: Option<String>,
    path_contains: String,
    /// Whether the request must carry a Range header (`Some(true)`) or lack one (`Some(false)`).
    range: Option<bool>,
    /// Matches only requests for a whole blob or for the rest of one (`Range: bytes=N-`):
    /// what lazypull's background download sends, never a read.
    rest_of_blob: bool,
    /// Matches only Range requests that start at this byte.
    range_start: Option<u64>,
    /// Matches only requests with a closed Range (`bytes=A-B`) that does not start at
    /// this byte: reads, never the background download's requests.
    read_not_from: Option<u64>,
    skip: u64,
    times: Option<u64>,
    fault: Fault,
}

impl Rule {
    /// Matches requests of `method` ("*" for any) whose path contains `path_contains`.
    pub fn new(method: &str, path_contains: &str, fault: Fault) -> Rule {
        Rule {
            server: Server::Registry,
            method: (method != "*").then(|| method.to_ascii_uppercase()),
            path_contains: path_contains.to_string(),
            range: None,
            rest_of_blob: false,
            range_start: None,
            read_not_from: None,
            skip: 0,
            times: None,
            fault,
        }
    }

    /// Fires only on the `n`th matching request (1-based).
    pub fn nth(self, n: u64) -> Rule {
        assert!(n >= 1, "requests are counted from 1");
        Rule {
            skip: n - 1,
            times: Some(1),
            ..self
        }
    }

    /// Lets the first `k` matching requests through before firing.
    pub fn after(self, k: u64) -> Rule {
        Rule { skip: k, ..self }
    }

    /// Fires on `n` matching requests (the next `n`, or the `n` after those skipped by `after`).
    pub fn times(self, n: u64) -> Rule {
        Rule {
            times: Some(n),
            ..self
        }
    }

    /// Applies to the storage server instead of the registry side. There, `Status` and the
    /// faults that damage a body (`ResetAfter`, `Stall`, `Truncate`, `FlipByte`, `Drip`) act;
    /// the others are ignored.
    pub fn on_storage(self) -> Rule {
        Rule {
            server: Server::Storage,
            ..self
        }
    }

    /// Matches only requests with a Range header (`true`: random reads) or without one
    /// (`false`: whole-blob downloads).
    pub fn with_range(self, present: bool) -> Rule {
        Rule {
            range: Some(present),
            ..self
        }
    }

    /// Matches only the background download's requests: no Range, or one to the end.
    pub fn rest_of_blob(self) -> Rule {
        Rule {
            rest_of_blob: true,
            ..self
        }
    }

    /// Matches only Range requests that start at byte `start`.
    pub fn range_starting_at(self, start: u64) -> Rule {
        Rule {
            range_start: Some(start),
            ..self
        }
    }

    /// Matches only reads (a closed Range) that do not start at byte `start` (where the
    /// background download's runs start when reads got the chunks after them).
    pub fn read_not_from(self, start: u64) -> Rule {
        Rule {
            read_not_from: Some(start),
            ..self
        }
    }

    fn matches(&self, server: Server, request: &Request) -> bool {
        self.server == server
            && self.method.as_deref().is_none_or(|m| m == request.method)
            && request.path.contains(&self.path_contains)
            && self
                .range
                .is_none_or(|r| r == request.header("range").is_some())
            && self.range_start.is_none_or(|start| {
                request
                    .header("range")
                    .is_some_and(|r| r.starts_with(&format!("bytes={start}-")))
            })
            && self.read_not_from.is_none_or(|start| {
                request.header("range").is_some_and(|r| {
                    !r.trim_end().ends_with('-') && !r.starts_with(&format!("bytes={start}-"))
                })
            })
            && (!self.rest_of_blob
                || request
                    .header("range")
                    .is_none_or(|r| r.trim_end().ends_with('-')))
    }

    /// Whether the rule fires on its `seen`th (0-based) matching request.
    fn fires_on(&self, seen: u64) -> bool {
        seen >= self.skip && self.times.is_none_or(|t| seen - self.skip < t)
    }
}

/// One request as the proxy or the storage server saw and answered it.
#[derive(Clone, Debug)]
pub struct LogEntry {
    pub method: String,
    /// The path without the query.
    pub path: String,
    pub query: Option<String>,
    /// The client's Range header, verbatim.
    pub range: Option<String>,
    /// Whether the client sent an Authorization header.
    pub authorization: bool,
    /// Every header the client sent (names lowercased), in order.
    pub headers: Vec<(String, String)>,
    /// The status sent to the client (502 when the upstream could not be reached).
    pub status: u16,
    /// Body bytes written to the client.
    pub body_bytes: u64,
    /// The fault applied, if a rule fired.
    pub fault: Option<Fault>,
}

impl LogEntry {
    /// The value of a header the client sent (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The proxy and its storage server; both stop accepting when this is dropped.
pub struct FaultProxy {
    shared: Arc<Shared>,
}

struct Shared {
    upstream: String,
    registry_url: String,
    storage_url: String,
    client: Client,
    rules: Mutex<Vec<(Rule, u64)>>,
    registry_log: Mutex<Vec<LogEntry>>,
    storage_log: Mutex<Vec<LogEntry>>,
    /// Redirect signatures → the Authorization header of the redirected request, so the storage
    /// can fetch from an upstream that requires auth (as a presigned URL would) while the client
    /// sends it none.
    grants: Mutex<HashMap<String, Option<String>>>,
    next_grant: AtomicU64,
    in_flight: Mutex<usize>,
    idle: Condvar,
    shutdown: AtomicBool,
}

/// Locks, ignoring poisoning: a panicking handler thread must not hide the log from the test.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FaultProxy {
    /// Starts the proxy and its storage server in front of `upstream` (e.g. `http://127.0.0.1:5000`).
    pub fn start(upstream: &str) -> FaultProxy {
        let registry = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let storage = TcpListener::bind("127.0.0.1:0").expect("bind storage");
        let client = Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(120))
            .build()
            .expect("build upstream client");
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            registry_url: format!("http://{}", registry.local_addr().expect("proxy addr")),
            storage_url: format!("http://{}", storage.local_addr().expect("storage addr")),
            client,
            rules: Mutex::new(Vec::new()),
            registry_log: Mutex::new(Vec::new()),
            storage_log: Mutex::new(Vec::new()),
            grants: Mutex::new(HashMap::new()),
            next_grant: AtomicU64::new(1),
            in_flight: Mutex::new(0),
            idle: Condvar::new(),
            shutdown: AtomicBool::new(false),
        });
        for (listener, server) in [(registry, Server::Registry), (storage, Server::Storage)] {
            let shared = Arc::clone(&shared);
            thread::spawn(move || accept_loop(&shared, &listener, server));
        }
        FaultProxy { shared }
    }

    /// Base URL of the proxy, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> &str {
        &self.shared.registry_url
    }

    /// The proxy's `host:port`, for image references.
    pub fn host(&self) -> &str {
        host_of(&self.shared.registry_url)
    }

    /// Base URL of the storage server.
    pub fn storage_url(&self) -> &str {
        &self.shared.storage_url
    }

    pub fn add_rule(&self, rule: Rule) {
        lock(&self.shared.rules).push((rule, 0));
    }

    pub fn clear_rules(&self) {
        lock(&self.shared.rules).clear();
    }

    /// Replaces every rule with `rules` at once: no request sees a moment without them.
    pub fn replace_rules(&self, rules: Vec<Rule>) {
        *lock(&self.shared.rules) = rules.into_iter().map(|r| (r, 0)).collect();
    }

    /// Requests the registry side has answered, oldest first. Waits (up to 5 s) for requests
    /// still being answered, so an answer the client has just read is in the log; an answer
    /// still dripping or stalled after that shows the bytes sent so far.
    pub fn log(&self) -> Vec<LogEntry> {
        self.wait_idle();
        lock(&self.shared.registry_log).clone()
    }

    /// Requests the storage server has answered, oldest first (waits like `log`).
    pub fn storage_log(&self) -> Vec<LogEntry> {
        self.wait_idle();
        lock(&self.shared.storage_log).clone()
    }

    /// Registry-side requests of `method` ("*" for any) whose path contains `path_contains`.
    pub fn requests(&self, method: &str, path_contains: &str) -> Vec<LogEntry> {
        self.log()
            .into_iter()
            .filter(|e| method == "*" || e.method.eq_ignore_ascii_case(method))
            .filter(|e| e.path.contains(path_contains))
            .collect()
    }

    /// Forgets both logs.
    pub fn clear_log(&self) {
        self.wait_idle();
        lock(&self.shared.registry_log).clear();
        lock(&self.shared.storage_log).clear();
    }

    fn wait_idle(&self) {
        let guard = lock(&self.shared.in_flight);
        let _ = self
            .shared
            .idle
            .wait_timeout_while(guard, Duration::from_secs(5), |n| *n > 0);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        // Wake both accept loops so they see the flag and release their ports.
        for url in [&self.shared.registry_url, &self.shared.storage_url] {
            let _ = TcpStream::connect(host_of(url));
        }
    }
}

fn host_of(url: &str) -> &str {
    url.trim_start_matches("http://")
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener, server: Server) {
    for stream in listener.incoming() {
        if shared.shutdown.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        // Counted before the handler runs: the client cannot see an answer before this.
        *lock(&shared.in_flight) += 1;
        let shared = Arc::clone(shared);
        thread::spawn(move || {
            // Errors here are the client hanging up or the fault itself: nothing to report.
            let _ = handle(&shared, stream, server);
            let mut n = lock(&shared.in_flight);
            *n -= 1;
            shared.idle.notify_all();
        });
    }
}

struct Request {
    method: String,
    path: String,
    query: Option<String>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }
}

fn read_request(stream: &TcpStream) -> io::Result<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad request line",
        ));
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let mut request = Request {
        method: method.to_string(),
        path,
        query,
        headers,
        body: Vec::new(),
    };
    if let Some(len) = request.header("content-length") {
        let len: u64 = len
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad content-length"))?;
        reader.take(len).read_to_end(&mut request.body)?;
    } else if request
        .header("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    {
        request.body = read_chunked(&mut reader)?;
    }
    Ok(request)
}

fn read_chunked(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let size = line.trim().split(';').next().unwrap_or("");
        let size = u64::from_str_radix(size, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        reader.by_ref().take(size).read_to_end(&mut body)?;
        let mut crlf = String::new();
        reader.read_line(&mut crlf)?;
    }
}

/// The fault of the first rule that fires on this request; counts it for every matching rule.
fn pick_fault(shared: &Shared, server: Server, request: &Request) -> Option<Fault> {
    let mut rules = lock(&shared.rules);
    let mut chosen = None;
    for (rule, seen) in rules.iter_mut() {
        if rule.matches(server, request) {
            if chosen.is_none() && rule.fires_on(*seen) {
                chosen = Some(rule.fault.clone());
            }
            *seen += 1;
        }
    }
    chosen
}

/// Where the answer's progress is recorded; the entry is logged before the first byte is sent.
struct Recorder<'a> {
    log: &'a Mutex<Vec<LogEntry>>,
    index: usize,
}

impl Recorder<'_> {
    fn add_body_bytes(&self, n: u64) {
        if let Some(entry) = lock(self.log).get_mut(self.index) {
            entry.body_bytes += n;
        }
    }
}

fn handle(shared: &Shared, stream: TcpStream, server: Server) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    // Small writes must leave at once: a reset or stall right after them must not hold them back.
    stream.set_nodelay(true)?;
    let request = read_request(&stream)?;
    let fault = pick_fault(shared, server, &request);
    let log = match server {
        Server::Registry => &shared.registry_log,
        Server::Storage => &shared.storage_log,
    };
    let entry = LogEntry {
        method: request.method.clone(),
        path: request.path.clone(),
        query: request.query.clone(),
        range: request.header("range").map(str::to_string),
        authorization: request.header("authorization").is_some(),
        headers: request.headers.clone(),
        status: 0,
        body_bytes: 0,
        fault: fault.clone(),
    };
    let answer = match server {
        Server::Registry => registry_answer(shared, &request, fault.as_ref()),
        Server::Storage => match &fault {
            Some(Fault::Status(code, retry_after)) => status_answer(*code, *retry_after),
            _ => storage_answer(shared, &request),
        },
    };
    let index = {
        let mut log = lock(log);
        log.push(LogEntry {
            status: answer.status,
            ..entry
        });
        log.len() - 1
    };
    let recorder = Recorder { log, index };
    send(shared, stream, answer, fault.as_ref(), &request, &recorder)
}

/// A response head plus where its body comes from.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Body,
}

enum Body {
    Bytes(Vec<u8>),
    Upstream(Response),
}

impl Answer {
    fn simple(status: u16, headers: Vec<(String, String)>, body: &str) -> Answer {
        Answer {
            status,
            headers,
            body: Body::Bytes(body.as_bytes().to_vec()),
        }
    }
}

fn registry_answer(shared: &Shared, request: &Request, fault: Option<&Fault>) -> Answer {
    match fault {
        Some(Fault::Status(code, retry_after)) => return status_answer(*code, *retry_after),
        Some(Fault::RedirectToStorage) => {
            let n = shared.next_grant.fetch_add(1, Ordering::SeqCst);
            let signature = format!("sig{n}-{:016x}", fastrand::u64(..));
            let auth = request.header("authorization").map(str::to_string);
            lock(&shared.grants).insert(signature.clone(), auth);
            let location = format!(
                "{}{}?signature={signature}",
                shared.storage_url, request.path
            );
            return Answer::simple(307, vec![("Location".to_string(), location)], "");
        }
        Some(Fault::Unauthorized) => return unauthorized(shared, request),
        _ => {}
    }
    let skip = |name: &str| name == "range" && fault == Some(&Fault::IgnoreRange);
    let mut answer = match forward(shared, request, &request.path_and_query(), skip, None) {
        Ok(response) => relay(shared, response, |_| true),
        Err(e) => return Answer::simple(502, Vec::new(), &format!("upstream: {e}\n")),
    };
    if fault == Some(&Fault::WrongContentRange) {
        for (name, value) in &mut answer.headers {
            if name.eq_ignore_ascii_case("content-range") {
                *value = shift_content_range(value);
            }
        }
    }
    answer
}

fn status_answer(code: u16, retry_after: Option<u32>) -> Answer {
    let headers = retry_after
        .map(|s| vec![("Retry-After".to_string(), s.to_string())])
        .unwrap_or_default();
    Answer::simple(code, headers, "fault injected\n")
}

/// `bytes a-b/n` → `bytes (a+1)-(b+1)/n`: same length, wrong place.
fn shift_content_range(value: &str) -> String {
    let parsed = value.strip_prefix("bytes ").and_then(|rest| {
        let (span, total) = rest.split_once('/')?;
        let (a, b) = span.split_once('-')?;
        Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?, total))
    });
    match parsed {
        Some((a, b, total)) => format!("bytes {}-{}/{total}", a + 1, b + 1),
        None => value.to_string(),
    }
}

/// 401 with the challenge the upstream gives an unauthenticated request for the same path.
fn unauthorized(shared: &Shared, request: &Request) -> Answer {
    let challenge = forward(
        shared,
        request,
        &request.path_and_query(),
        |n| n == "authorization",
        None,
    )
    .ok()
    .and_then(|r| r.headers().get("www-authenticate").cloned())
    .and_then(|v| v.to_str().ok().map(str::to_string));
    let headers = challenge
        .map(|c| vec![("WWW-Authenticate".to_string(), c)])
        .unwrap_or_default();
    let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"token expired (fault injected)"}]}"#;
    let mut answer = Answer::simple(401, headers, body);
    answer
        .headers
        .push(("Content-Type".to_string(), "application/json".to_string()));
    answer
}

/// The object store: honours a signature from a redirect, fetching with the grant's credentials.
fn storage_answer(shared: &Shared, request: &Request) -> Answer {
    let signature = request.query.as_deref().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("signature=").map(str::to_string))
    });
    let grant = signature.and_then(|s| lock(&shared.grants).get(&s).cloned());
    let Some(auth) = grant else {
        return Answer::simple(403, Vec::new(), "bad signature\n");
    };
    // Only what an object store would act on crosses over; the rest of the client's headers
    // are recorded, not forwarded.
    match forward(shared, request, &request.path, |n| n != "range", auth) {
        Ok(response) => relay(shared, response, |n| {
            matches!(
                n,
                "content-length" | "content-range" | "content-type" | "accept-ranges" | "etag"
            )
        }),
        Err(e) => Answer::simple(502, Vec::new(), &format!("upstream: {e}\n")),
    }
}

const HOP_BY_HOP: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "upgrade",
    "content-length",
];

/// Sends the client's request upstream, minus hop-by-hop headers and those `skip` names.
fn forward(
    shared: &Shared,
    request: &Request,
    path_and_query: &str,
    skip: impl Fn(&str) -> bool,
    authorization: Option<String>,
) -> reqwest::Result<Response> {
    let method =
        reqwest::Method::from_bytes(request.method.as_bytes()).unwrap_or(reqwest::Method::GET);
    let mut headers = HeaderMap::new();
    for (name, value) in &request.headers {
        if HOP_BY_HOP.contains(&name.as_str()) || skip(name) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(n, v);
        }
    }
    if let Some(v) = authorization.and_then(|a| HeaderValue::from_str(&a).ok()) {
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    let mut builder = shared
        .client
        .request(method, format!("{}{path_and_query}", shared.upstream))
        .headers(headers);
    if !request.body.is_empty() {
        builder = builder.body(request.body.clone());
    }
    builder.send()
}

/// The upstream's answer with the headers `keep` accepts; Location is pointed back at the proxy.
fn relay(shared: &Shared, response: Response, keep: impl Fn(&str) -> bool) -> Answer {
    let mut headers = Vec::new();
    for (name, value) in response.headers() {
        let name = name.as_str();
        if (HOP_BY_HOP.contains(&name) && name != "content-length") || !keep(name) {
            continue;
        }
        let Ok(value) = value.to_str() else { continue };
        let value = match value.strip_prefix(&shared.upstream) {
            Some(rest) if name == "location" => format!("{}{rest}", shared.registry_url),
            _ => value.to_string(),
        };
        headers.push((name.to_string(), value));
    }
    Answer {
        status: response.status().as_u16(),
        headers,
        body: Body::Upstream(response),
    }
}

fn send(
    shared: &Shared,
    mut stream: TcpStream,
    answer: Answer,
    fault: Option<&Fault>,
    request: &Request,
    recorder: &Recorder,
) -> io::Result<()> {
    let reason = reqwest::StatusCode::from_u16(answer.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown");
    let mut head = format!("HTTP/1.1 {} {reason}\r\n", answer.status);
    let mut has_length = false;
    for (name, value) in &answer.headers {
        has_length |= name.eq_ignore_ascii_case("content-length");
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let mut body: Box<dyn Read> = match answer.body {
        Body::Bytes(bytes) => {
            if !has_length {
                head.push_str(&format!("Content-Length: {}\r\n", bytes.len()));
            }
            Box::new(io::Cursor::new(bytes))
        }
        Body::Upstream(response) => Box::new(response),
    };
    head.push_str("Connection: close\r\n\r\n");
    stream.write_all(head.as_bytes())?;
    stream.flush()?;
    if request.method == "HEAD" {
        return Ok(());
    }
    let copy = |stream: &mut TcpStream, body: &mut dyn Read, limit, flip, rate| {
        copy_body(shared, stream, body, limit, flip, rate, recorder)
    };
    match fault {
        Some(Fault::ResetAfter(n)) => {
            copy(&mut stream, &mut body, Some(*n), None, None)?;
            reset(stream);
        }
        Some(Fault::Truncate(n)) => {
            copy(&mut stream, &mut body, Some(*n), None, None)?;
            stream.shutdown(std::net::Shutdown::Both)?;
        }
        Some(Fault::Stall(duration)) => stall(shared, &stream, *duration),
        Some(Fault::FlipByte(offset)) => copy(&mut stream, &mut body, None, Some(*offset), None)?,
        Some(Fault::Drip { bytes_per_sec }) => {
            copy(&mut stream, &mut body, None, None, Some(*bytes_per_sec))?
        }
        _ => copy(&mut stream, &mut body, None, None, None)?,
    }
    Ok(())
}

/// Copies at most `limit` body bytes, inverting the byte at `flip`, at most `rate` bytes/s.
fn copy_body(
    shared: &Shared,
    stream: &mut TcpStream,
    body: &mut dyn Read,
    limit: Option<u64>,
    flip: Option<u64>,
    rate: Option<u64>,
    recorder: &Recorder,
) -> io::Result<()> {
    // Drip in ~20 slices a second so the rate is smooth at any size.
    let chunk = rate.map_or(64 * 1024, |r| (r / 20).clamp(1, 64 * 1024)) as usize;
    let mut buf = vec![0u8; chunk];
    let mut sent = 0u64;
    let start = Instant::now();
    loop {
        if shared.shutdown.load(Ordering::SeqCst) {
            return Ok(());
        }
        let want = limit.map_or(chunk as u64, |l| (l - sent).min(chunk as u64)) as usize;
        if want == 0 {
            return Ok(());
        }
        let n = body.read(&mut buf[..want])?;
        if n == 0 {
            return Ok(());
        }
        if let Some(offset) = flip
            && (sent..sent + n as u64).contains(&offset)
        {
            buf[(offset - sent) as usize] ^= 0xff;
        }
        if let Some(rate) = rate {
            // Wait until the bytes already sent plus these are due.
            let due = Duration::from_secs_f64((sent + n as u64) as f64 / rate.max(1) as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                thread::sleep(wait);
            }
        }
        stream.write_all(&buf[..n])?;
        sent += n as u64;
        recorder.add_body_bytes(n as u64);
    }
}

/// Waits for `duration` without sending, ending early if the client hangs up or the proxy stops.
fn stall(shared: &Shared, stream: &TcpStream, duration: Duration) {
    let deadline = Instant::now() + duration;
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let mut probe = [0u8; 1];
    while Instant::now() < deadline && !shared.shutdown.load(Ordering::SeqCst) {
        match stream.peek(&mut probe) {
            Ok(0) => return,
            Ok(_) => thread::sleep(Duration::from_millis(50)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// Drops the connection with an RST once the client has every byte sent so far.
fn reset(stream: TcpStream) {
    let fd = stream.as_raw_fd();
    // An RST discards unsent data, so wait until the send queue is empty (all bytes acked).
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let mut queued: libc::c_int = 0;
        // SAFETY: fd is an open socket owned by `stream`; TIOCOUTQ writes one c_int.
        let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) };
        if rc != 0 || queued == 0 || Instant::now() > deadline {
            break;
        }
        thread::sleep(Duration::from_millis(1));
    }
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: fd is an open socket owned by `stream`; the option value is a valid `linger`.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    // Closing with a zero linger sends RST instead of FIN.
    drop(stream);
}
