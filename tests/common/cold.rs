//! A cold-read scenario behind the fault proxy, for the mount fault tests: one gzip layer
//! whose index is cached and whose blob is not, the background download held back, and a
//! daemon with small `--timeout` and `--retries`, so every read goes to the registry and a
//! failing one ends soon.

use std::fs;
use std::time::Duration;

use super::image::{self, Compression, ImageSpec, PushedImage, PushedLayer};
use super::mount::{FOREVER, Mount, Sandbox, background_rules, random, within};
use super::proxy::{Fault, FaultProxy, LogEntry, Rule};
use super::registry::{TestRegistry, Variant};
use super::tarball::TarBuilder;

pub const REPO: &str = "test/faults";
/// The daemon's `--retries` and `--timeout` (seconds): small, so a failing read ends soon.
pub const RETRIES: u64 = 2;
pub const TIMEOUT: u64 = 2;

/// The longest a read may take with those options: each attempt may wait `--timeout` to
/// connect, for the headers, for body bytes and for a 429's Retry-After, plus the backoff
/// between attempts (under a second here); generous, as the machine is shared.
pub fn read_bound() -> Duration {
    Duration::from_secs((RETRIES + 1) * 4 * TIMEOUT + 30)
}

/// An image whose one gzip layer holds `head`, then `cold` (random bytes, so the blob is as
/// large as they are), then `etc/motd`; with 2.5 MiB of `head`, a read of `cold` is a Range
/// request well inside the blob. The index is cached (1 MiB spans), the blob is
/// not, and the proxy holds the background download back until a test clears its rules,
/// so every read below goes to the registry.
pub struct Cold {
    pub reg: TestRegistry,
    pub image: PushedImage,
    pub cold: Vec<u8>,
    pub head: Vec<u8>,
    pub sandbox: Sandbox,
    pub proxy: FaultProxy,
}

impl Cold {
    pub fn start(variant: Variant, head_len: usize, cold_len: usize) -> Cold {
        let reg = TestRegistry::start(variant);
        let (head, cold) = (random(head_len, 1), random(cold_len, 2));
        let spec = ImageSpec::new(vec![(
            TarBuilder::new()
                .file("head", &head, 0o644)
                .file("cold", &cold, 0o644)
                .file("etc/motd", "still answering\n", 0o644)
                .build(),
            Compression::Gzip,
        )]);
        let image = image::push_image(&reg, REPO, "v1", &spec);
        let sandbox = Sandbox::new();
        let proxy = FaultProxy::start(&reg.base_url());
        if let Some((user, password)) = reg.credentials() {
            sandbox.login(&[&reg.host(), proxy.host()], user, password);
        }
        sandbox.index(&format!("{}/{REPO}:v1", reg.host()), &["--span", "1048576"]);
        sandbox.prune_blobs();
        let cold = Cold {
            reg,
            image,
            cold,
            head,
            sandbox,
            proxy,
        };
        cold.clear_faults();
        cold
    }

    /// Ends the faults of a test (if any) and holds the background download back, which
    /// was held throughout: were the rules cleared first, its requests could slip through
    /// in between.
    pub fn clear_faults(&self) {
        self.proxy.replace_rules(self.background_rules());
    }

    /// Rules that hold the background download back: its whole-blob and rest-of-blob
    /// requests, and, once a read got chunks of `cold`, the run before them, from byte 0,
    /// which no read of `cold` asks for when `head` comes first.
    fn background_rules(&self) -> Vec<Rule> {
        let mut rules = background_rules(&self.image, Fault::Stall(FOREVER));
        if !self.head.is_empty() {
            rules.push(
                Rule::new("GET", &self.blob_path(), Fault::Stall(FOREVER))
                    .with_range(true)
                    .range_starting_at(0),
            );
        }
        rules
    }

    pub fn plain() -> Cold {
        Cold::start(Variant::Plain, 5 << 19, 300_000)
    }

    pub fn mount(&self) -> Mount<'_> {
        let mount = self.sandbox.mount(
            &format!("{}/{REPO}:v1", self.proxy.host()),
            &[
                "--timeout",
                &TIMEOUT.to_string(),
                "--retries",
                &RETRIES.to_string(),
            ],
        );
        assert_eq!(mount.states(), ["fetching"]);
        mount
    }

    pub fn layer(&self) -> &PushedLayer {
        &self.image.layers[0]
    }

    pub fn blob_path(&self) -> String {
        format!("/blobs/{}", self.layer().digest)
    }

    /// A rule for the layer's lazy reads (its Range GETs), which neither fires on nor
    /// counts the background download's requests.
    pub fn on_reads(&self, fault: Fault) -> Rule {
        let rule = Rule::new("GET", &self.blob_path(), fault).with_range(true);
        if self.head.is_empty() {
            rule
        } else {
            rule.read_not_from(0)
        }
    }

    /// The attempts of the last cold read: the Range GETs of the layer since the log was
    /// cleared that ask for the same bytes as the first read. The background download's
    /// requests are left out: it asks for the rest of the blob, or, once it wakes up
    /// between two reads of a test, for the run from byte 0, which no read of `cold`
    /// asks for when `head` comes first.
    pub fn read_attempts(&self) -> Vec<LogEntry> {
        let reads: Vec<LogEntry> = self
            .proxy
            .requests("GET", &self.blob_path())
            .into_iter()
            .filter(|e| {
                e.range.as_deref().is_some_and(|r| {
                    !r.trim_end().ends_with('-')
                        && (self.head.is_empty() || !r.starts_with("bytes=0-"))
                })
            })
            .collect();
        let Some(first) = reads.first().map(|e| e.range.clone()) else {
            return reads;
        };
        reads.into_iter().filter(|e| e.range == first).collect()
    }

    /// Lets the background download go and checks the end state: the layer verified,
    /// every file right, the daemon answering.
    pub fn clear_and_verify(&self, mount: &Mount) {
        self.proxy.clear_rules();
        let status = mount.wait_all_ready();
        assert_eq!(
            status["layers"][0]["digest"],
            self.layer().digest.to_string()
        );
        assert_eq!(status["layers"][0]["bytes_fetched"], self.layer().size);
        for (name, want) in [("cold", &self.cold), ("head", &self.head)] {
            let got = read(mount, name);
            assert!(
                got.as_ref().is_ok_and(|g| g == want),
                "{name} after the fault"
            );
        }
        assert_eq!(
            fs::read(mount.join("etc/motd")).unwrap(),
            b"still answering\n"
        );
    }
}

/// Reads a file of the mount, failing the test if that takes longer than [`read_bound`].
pub fn read(mount: &Mount, name: &str) -> std::io::Result<Vec<u8>> {
    let path = mount.join(name);
    within(read_bound(), &format!("reading {name}"), move || {
        fs::read(path)
    })
}

/// The daemon log's lines that contain every one of `needles`.
pub fn log_lines(sandbox: &Sandbox, needles: &[&str]) -> Vec<String> {
    sandbox
        .daemon_log()
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_string)
        .collect()
}
