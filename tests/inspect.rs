//! `lazypull inspect` end to end: the real binary against real registries (plain, TLS,
//! htpasswd, token auth), behind a fault proxy where a test needs one, and every error a
//! user can meet, checked by its message.

mod common;

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::image::{
    self, Compression, DOCKER_LIST, DOCKER_MANIFEST, Format, ImageSpec, OCI_INDEX, OCI_MANIFEST,
    PushedImage,
};
use common::proxy::{Fault, FaultProxy, Rule};
use common::registry::{TestRegistry, Variant};
use common::tarball::TarBuilder;
use common::token::TokenOptions;
use lazypull::digest::Digest;
use serde_json::{Value, json};
use tempfile::TempDir;

const REPO: &str = "test/app";
const USER: &str = "alice";
const PASSWORD: &str = "s3cret-pass";
const ERROR_PREFIX: &str = "lazypull: error: ";

/// A sandbox for one run of the binary: its own HOME, docker config dir, auth file and
/// runtime dir, so no test reads the machine's credentials or certificates.
struct Cli {
    dir: TempDir,
    /// Prepended to PATH (for credential helpers).
    bin: Option<PathBuf>,
}

/// What one run printed and how it ended.
struct Run {
    success: bool,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Cli {
    fn new() -> Cli {
        let dir = tempfile::Builder::new()
            .prefix("lazypull-cli-")
            .tempdir()
            .unwrap();
        for sub in ["home", "docker", "xdg"] {
            fs::create_dir(dir.path().join(sub)).unwrap();
        }
        Cli { dir, bin: None }
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// `$DOCKER_CONFIG`.
    fn docker_config(&self) -> PathBuf {
        self.dir.path().join("docker")
    }

    /// `$REGISTRY_AUTH_FILE` (absent unless a test writes it).
    fn auth_file(&self) -> PathBuf {
        self.dir.path().join("auth.json")
    }

    /// `$XDG_RUNTIME_DIR`.
    fn xdg(&self) -> PathBuf {
        self.dir.path().join("xdg")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lazypull"));
        cmd.args(args)
            .stdin(Stdio::null())
            .env_clear()
            .env("HOME", self.home())
            .env("DOCKER_CONFIG", self.docker_config())
            .env("REGISTRY_AUTH_FILE", self.auth_file())
            .env("XDG_RUNTIME_DIR", self.xdg());
        let path = std::env::var("PATH").unwrap_or_default();
        match &self.bin {
            Some(bin) => cmd.env("PATH", format!("{}:{path}", bin.display())),
            None => cmd.env("PATH", path),
        };
        cmd
    }

    fn run_command(mut cmd: Command) -> Run {
        let start = Instant::now();
        let out = cmd.output().expect("run lazypull");
        let run = Run {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: start.elapsed(),
        };
        for word in ["panicked", "backtrace", "RUST_BACKTRACE"] {
            assert!(
                !run.stderr.contains(word),
                "lazypull panicked:\n{}",
                run.stderr
            );
        }
        run
    }

    fn run(&self, args: &[&str]) -> Run {
        Self::run_command(self.command(args))
    }

    /// `lazypull inspect --json ARGS…`, which must succeed; its JSON.
    fn inspect_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["inspect", "--json"];
        all.extend_from_slice(args);
        self.run(&all).json()
    }

    /// `lazypull inspect ARGS…`, which must fail; its error message.
    fn inspect_error(&self, args: &[&str]) -> String {
        let mut all = vec!["inspect"];
        all.extend_from_slice(args);
        self.run(&all).error()
    }

    /// Writes `$DOCKER_CONFIG/config.json` with `user:password` for `host`.
    fn docker_login(&self, host: &str, user: &str, password: &str) {
        write_auths(
            &self.docker_config().join("config.json"),
            host,
            user,
            password,
        );
    }

    /// Installs `docker-credential-<name>` answering `user:password` for `host` only, and
    /// recording every server it was asked about in `<dir>/helper.log`.
    fn install_helper(&mut self, name: &str, host: &str, user: &str, password: &str) {
        let bin = self.dir.path().join("bin");
        fs::create_dir_all(&bin).unwrap();
        let log = self.dir.path().join("helper.log");
        let script = format!(
            "#!/bin/sh\n\
             [ \"$1\" = get ] || exit 2\n\
             read -r server\n\
             echo \"$server\" >> '{log}'\n\
             if [ \"$server\" = '{host}' ]; then\n\
             \x20 printf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{password}\"}}' \"$server\"\n\
             else\n\
             \x20 echo 'credentials not found in native keychain'; exit 1\n\
             fi\n",
            log = log.display()
        );
        let path = bin.join(format!("docker-credential-{name}"));
        fs::write(&path, script).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        self.bin = Some(bin);
    }

    fn helper_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("helper.log")).unwrap_or_default()
    }
}

impl Run {
    fn ok(&self) -> &Run {
        assert!(
            self.success,
            "lazypull failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    fn json(&self) -> Value {
        self.ok();
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }

    /// Checks the run failed the way every error must end (non-zero exit, nothing on
    /// stdout, one `lazypull: error: ` line, last on stderr) and returns that line's message.
    fn error(&self) -> String {
        assert!(
            !self.success,
            "lazypull succeeded but should have failed:\n{}",
            self.stdout
        );
        assert!(
            self.stdout.is_empty(),
            "output on failure:\n{}",
            self.stdout
        );
        let errors: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| l.starts_with(ERROR_PREFIX))
            .collect();
        assert_eq!(errors.len(), 1, "one error line expected:\n{}", self.stderr);
        assert_eq!(
            self.stderr.lines().last(),
            Some(errors[0]),
            "the error line must come last:\n{}",
            self.stderr
        );
        let message = &errors[0][ERROR_PREFIX.len()..];
        let parts: Vec<&str> = message.split(": ").collect();
        for (i, part) in parts.iter().enumerate() {
            assert!(
                part.len() < 12 || !parts[i + 1..].contains(part),
                "the message repeats itself: {message}"
            );
        }
        message.to_string()
    }
}

fn write_auths(path: &Path, host: &str, user: &str, password: &str) {
    let auth = STANDARD.encode(format!("{user}:{password}"));
    let doc = json!({ "auths": { host: { "auth": auth } } });
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
}

fn htpasswd() -> Variant {
    Variant::Htpasswd {
        user: USER.into(),
        password: PASSWORD.into(),
    }
}

/// A layer whose content (and so digest) depends on `tag`.
fn layer(tag: &str) -> Vec<u8> {
    TarBuilder::new()
        .dir("etc", 0o755)
        .file("etc/layer", format!("{tag}\n"), 0o644)
        .file(&format!("opt/{tag}/data"), tag.repeat(500), 0o644)
        .build()
}

fn image(tag: &str, compressions: &[Compression]) -> ImageSpec {
    let layers = compressions
        .iter()
        .enumerate()
        .map(|(i, c)| (layer(&format!("{tag}-{i}")), *c))
        .collect();
    ImageSpec::new(layers)
}

/// `host/test/app:tag`.
fn reference(host: &str, tag: &str) -> String {
    format!("{host}/{REPO}:{tag}")
}

/// Checks `json` describes exactly the image the harness pushed.
fn assert_image(json: &Value, pushed: &PushedImage) {
    assert_eq!(
        json["digest"],
        pushed.manifest_digest.to_string(),
        "{json:#}"
    );
    assert_eq!(json["media_type"], pushed.manifest_media_type, "{json:#}");
    assert_eq!(json["config"]["digest"], pushed.config_digest.to_string());
    assert_eq!(json["config"]["size"], pushed.config_size);
    let layers = json["layers"].as_array().expect("layers is an array");
    assert_eq!(layers.len(), pushed.layers.len(), "{json:#}");
    for (got, want) in layers.iter().zip(&pushed.layers) {
        assert_eq!(got["digest"], want.digest.to_string());
        assert_eq!(got["media_type"], want.media_type);
        assert_eq!(got["size"], want.size);
        assert_eq!(got["diff_id"], want.diff_id.to_string());
    }
}

/// Checks `json` is a single-platform image for this host, reached without an index.
fn assert_single_host_image(json: &Value, pushed: &PushedImage) {
    assert_image(json, pushed);
    assert!(json.get("index_digest").is_none(), "{json:#}");
    assert_eq!(
        json["platform"],
        json!({ "os": "linux", "architecture": image::host_arch() })
    );
}

#[test]
fn plain_registry_by_tag_by_digest_and_tag_at_digest() {
    let reg = TestRegistry::start(Variant::Plain);
    let cli = Cli::new();
    let host = reg.host();
    let wanted = image::push_image(
        &reg,
        REPO,
        "v1",
        &image("v1", &[Compression::Gzip, Compression::Gzip]),
    );
    let other = image::push_image(&reg, REPO, "other", &image("other", &[Compression::Gzip]));
    assert_ne!(wanted.manifest_digest, other.manifest_digest);

    let by_tag = cli.inspect_json(&[&reference(&host, "v1")]);
    assert_single_host_image(&by_tag, &wanted);
    assert_eq!(by_tag["reference"], reference(&host, "v1"));

    let by_digest_ref = format!("{host}/{REPO}@{}", wanted.manifest_digest);
    let by_digest = cli.inspect_json(&[&by_digest_ref]);
    assert_single_host_image(&by_digest, &wanted);
    assert_eq!(by_digest["reference"], by_digest_ref);

    // The tag points at the other image: the digest must win.
    let both = format!("{host}/{REPO}:other@{}", wanted.manifest_digest);
    assert_single_host_image(&cli.inspect_json(&[&both]), &wanted);
    let manifests = reg.requests_matching(&format!("GET /v2/{REPO}/manifests/other"));
    assert_eq!(
        manifests, 0,
        "the tag was fetched although a digest was given"
    );

    let text = cli.run(&["inspect", &reference(&host, "v1")]);
    let text = &text.ok().stdout;
    assert!(text.contains(&wanted.manifest_digest.to_string()), "{text}");
    assert!(text.contains(&wanted.config_digest.to_string()), "{text}");
    for layer in &wanted.layers {
        assert!(text.contains(&layer.digest.to_string()), "{text}");
        assert!(text.contains(&layer.diff_id.to_string()), "{text}");
        assert!(text.contains(&layer.media_type), "{text}");
    }
}

#[test]
fn oci_gzip_zstd_and_uncompressed_layers() {
    let reg = TestRegistry::start(Variant::Plain);
    let spec = image(
        "mixed",
        &[Compression::Gzip, Compression::Zstd, Compression::None],
    );
    let pushed = image::push_image(&reg, REPO, "mixed", &spec);
    let json = Cli::new().inspect_json(&[&reference(&reg.host(), "mixed")]);
    assert_single_host_image(&json, &pushed);
    assert_eq!(json["media_type"], OCI_MANIFEST);
    let types: Vec<&str> = json["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["media_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.layer.v1.tar+zstd",
            "application/vnd.oci.image.layer.v1.tar",
        ]
    );
}

#[test]
fn docker_schema2_image() {
    let reg = TestRegistry::start(Variant::Plain);
    let spec = ImageSpec {
        format: Format::Docker,
        ..image("docker", &[Compression::Gzip, Compression::None])
    };
    let pushed = image::push_image(&reg, REPO, "docker", &spec);
    let json = Cli::new().inspect_json(&[&reference(&reg.host(), "docker")]);
    assert_single_host_image(&json, &pushed);
    assert_eq!(json["media_type"], DOCKER_MANIFEST);
    assert_eq!(
        json["layers"][0]["media_type"],
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
}

fn platform_specs(format: Format) -> Vec<ImageSpec> {
    [("amd64", None), ("arm64", Some("v8")), ("arm", Some("v7"))]
        .into_iter()
        .map(|(arch, variant)| ImageSpec {
            arch: arch.into(),
            variant: variant.map(str::to_string),
            format,
            ..image(
                &format!("{arch}{}", variant.unwrap_or("")),
                &[Compression::Gzip],
            )
        })
        .collect()
}

fn check_multi_platform(format: Format, index_type: &str) {
    let reg = TestRegistry::start(Variant::Plain);
    let cli = Cli::new();
    let specs = platform_specs(format);
    let pushed = image::push_index(&reg, REPO, "multi", &specs, format);
    assert_eq!(pushed.media_type, index_type);
    let name = reference(&reg.host(), "multi");
    let index_digest = pushed.digest.to_string();

    let host = specs
        .iter()
        .position(|s| s.arch == image::host_arch())
        .expect("the host's architecture is one of the three");
    let json = cli.inspect_json(&[&name]);
    assert_image(&json, &pushed.manifests[host]);
    assert_eq!(json["index_digest"], index_digest);
    assert_eq!(json["platform"]["architecture"], image::host_arch());

    let json = cli.inspect_json(&["--platform", "linux/arm/v7", &name]);
    assert_image(&json, &pushed.manifests[2]);
    assert_eq!(json["index_digest"], index_digest);
    assert_eq!(
        json["platform"],
        json!({ "os": "linux", "architecture": "arm", "variant": "v7" })
    );

    // arm64 without a variant means v8.
    let json = cli.inspect_json(&["--platform", "linux/arm64", &name]);
    assert_image(&json, &pushed.manifests[1]);

    let text = cli.run(&["inspect", "--platform", "linux/arm/v7", &name]);
    let text = &text.ok().stdout;
    assert!(text.contains(&index_digest), "{text}");
    assert!(text.contains("linux/arm/v7"), "{text}");

    let err = cli.inspect_error(&["--platform", "linux/s390x", &name]);
    assert!(err.contains("linux/s390x"), "{err}");
    assert!(
        err.contains("linux/amd64, linux/arm64/v8, linux/arm/v7"),
        "the offered platforms must be listed: {err}"
    );
}

#[test]
fn single_platform_image_of_another_platform_is_refused() {
    let reg = TestRegistry::start(Variant::Plain);
    let cli = Cli::new();
    let spec = ImageSpec {
        arch: "amd64".into(),
        ..image("amd64 only", &[Compression::Gzip])
    };
    let pushed = image::push_image(&reg, REPO, "amd64", &spec);
    let name = reference(&reg.host(), "amd64");
    let cache = cli.dir.path().join("cache");
    let cache = cache.to_str().unwrap();
    for args in [
        vec!["inspect", "--platform", "linux/arm64", &name],
        vec![
            "ls",
            "--cache-dir",
            cache,
            "--platform",
            "linux/arm64",
            &name,
            "/",
        ],
    ] {
        let err = cli.run(&args).error();
        for needle in [
            "single-platform image for linux/amd64",
            "not linux/arm64",
            "drop --platform",
        ] {
            assert!(err.contains(needle), "{args:?}: no {needle:?} in: {err}");
        }
    }
    let json = cli.inspect_json(&["--platform", "linux/amd64", &name]);
    assert_image(&json, &pushed);
}

#[test]
fn oci_index_picks_host_or_requested_platform() {
    check_multi_platform(Format::Oci, OCI_INDEX);
}

#[test]
fn docker_manifest_list_picks_host_or_requested_platform() {
    check_multi_platform(Format::Docker, DOCKER_LIST);
}

#[test]
fn tls_registry_with_ca_in_home_without_it_and_insecure() {
    let reg = TestRegistry::start(Variant::Tls);
    let pushed = image::push_image(&reg, REPO, "v1", &image("tls", &[Compression::Gzip]));
    let name = reference(&reg.host(), "v1");

    let trusting = Cli::new();
    reg.install_ca_in_home(&trusting.home());
    assert_single_host_image(&trusting.inspect_json(&[&name]), &pushed);

    let untrusting = Cli::new();
    let err = untrusting.inspect_error(&["--retries", "0", &name]);
    assert!(err.contains(&reg.host()), "the host must be named: {err}");
    assert!(err.contains("certs.d"), "{err}");
    assert!(err.contains("--insecure"), "{err}");

    assert_single_host_image(&untrusting.inspect_json(&["--insecure", &name]), &pushed);
}

#[test]
fn self_signed_certificate_that_is_its_own_ca_is_explained() {
    // What a user gets from `openssl req -x509` and puts in certs.d as the certs.d advice says.
    let reg = TestRegistry::start(Variant::TlsSelfSigned);
    let pushed = image::push_image(&reg, REPO, "v1", &image("tls", &[Compression::Gzip]));
    let name = reference(&reg.host(), "v1");
    let cli = Cli::new();
    reg.install_ca_in_home(&cli.home());
    let err = cli.inspect_error(&["--retries", "0", &name]);
    for needle in [
        reg.host().as_str(),
        "is a CA certificate",
        "openssl req -x509",
        "server certificate signed by it",
        "--insecure",
    ] {
        assert!(err.contains(needle), "no {needle:?} in: {err}");
    }
    assert_single_host_image(&cli.inspect_json(&["--insecure", &name]), &pushed);
}

#[test]
fn htpasswd_registry_without_credentials_asks_for_a_login() {
    let reg = TestRegistry::start(htpasswd());
    image::push_image(&reg, REPO, "v1", &image("auth", &[Compression::Gzip]));
    let err = Cli::new().inspect_error(&["--retries", "0", &reference(&reg.host(), "v1")]);
    assert!(err.contains("docker login"), "{err}");
    assert!(err.contains("REGISTRY_AUTH_FILE"), "{err}");
    assert!(err.contains(REPO), "{err}");
}

#[test]
fn htpasswd_registry_with_credentials_from_every_store() {
    let reg = TestRegistry::start(htpasswd());
    let pushed = image::push_image(&reg, REPO, "v1", &image("auth", &[Compression::Gzip]));
    let host = reg.host();
    let name = reference(&host, "v1");

    let cli = Cli::new();
    cli.docker_login(&host, USER, PASSWORD);
    assert_single_host_image(&cli.inspect_json(&[&name]), &pushed);

    let cli = Cli::new();
    write_auths(&cli.auth_file(), &host, USER, PASSWORD);
    assert_single_host_image(&cli.inspect_json(&[&name]), &pushed);

    let cli = Cli::new();
    write_auths(
        &cli.xdg().join("containers/auth.json"),
        &host,
        USER,
        PASSWORD,
    );
    assert_single_host_image(&cli.inspect_json(&[&name]), &pushed);

    // Without DOCKER_CONFIG, docker's default place.
    let cli = Cli::new();
    write_auths(
        &cli.home().join(".docker/config.json"),
        &host,
        USER,
        PASSWORD,
    );
    let mut cmd = cli.command(&["inspect", "--json", &name]);
    cmd.env_remove("DOCKER_CONFIG");
    assert_single_host_image(&Cli::run_command(cmd).json(), &pushed);

    for key in ["credHelpers", "credsStore"] {
        let mut cli = Cli::new();
        cli.install_helper("lazytest", &host, USER, PASSWORD);
        let config = match key {
            "credHelpers" => json!({ "credHelpers": { host.clone(): "lazytest" } }),
            _ => json!({ "credsStore": "lazytest" }),
        };
        fs::write(cli.docker_config().join("config.json"), config.to_string()).unwrap();
        assert_single_host_image(&cli.inspect_json(&[&name]), &pushed);
        assert_eq!(cli.helper_log().trim(), host, "{key}: helper asked about");
    }
}

#[test]
fn htpasswd_registry_rejects_wrong_credentials() {
    let reg = TestRegistry::start(htpasswd());
    image::push_image(&reg, REPO, "v1", &image("auth", &[Compression::Gzip]));
    let cli = Cli::new();
    cli.docker_login(&reg.host(), USER, "wrong-password");
    let err = cli.inspect_error(&["--retries", "0", &reference(&reg.host(), "v1")]);
    assert!(err.contains("rejected"), "{err}");
    assert!(err.contains(&reg.host()), "{err}");
}

#[test]
fn token_registry_grants_anonymous_pull() {
    let reg = TestRegistry::start(Variant::Token(TokenOptions::default()));
    let pushed = image::push_image(&reg, REPO, "v1", &image("token", &[Compression::Gzip]));
    let json = Cli::new().inspect_json(&[&reference(&reg.host(), "v1")]);
    assert_single_host_image(&json, &pushed);
    let requests = reg.token_server().unwrap().requests();
    assert_eq!(requests.len(), 1, "one token serves the whole inspect");
    assert_eq!(requests[0].scopes, [format!("repository:{REPO}:pull")]);
    assert_eq!(requests[0].user, None);
}

#[test]
fn token_registry_with_basic_credentials_for_the_token_endpoint() {
    let reg = TestRegistry::start(Variant::Token(TokenOptions {
        basic: Some((USER.into(), PASSWORD.into())),
        ..TokenOptions::default()
    }));
    let pushed = image::push_image(&reg, REPO, "v1", &image("token", &[Compression::Gzip]));
    let name = reference(&reg.host(), "v1");

    let cli = Cli::new();
    reg.write_docker_config(&cli.docker_config());
    assert_single_host_image(&cli.inspect_json(&[&name]), &pushed);
    let requests = reg.token_server().unwrap().requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].user.as_deref(), Some(USER));
    assert!(requests[0].granted);

    let err = Cli::new().inspect_error(&["--retries", "0", &name]);
    assert!(err.contains("docker login"), "{err}");

    let cli = Cli::new();
    cli.docker_login(&reg.host(), USER, "wrong-password");
    let err = cli.inspect_error(&["--retries", "0", &name]);
    assert!(err.contains("rejected"), "{err}");
}

/// A token registry behind a proxy, with an image pushed as `test/app:v1`.
fn token_registry_behind_proxy(lifetime: Duration) -> (TestRegistry, FaultProxy, PushedImage) {
    let reg = TestRegistry::start(Variant::Token(TokenOptions {
        lifetime,
        ..TokenOptions::default()
    }));
    let pushed = image::push_image(&reg, REPO, "v1", &image("token", &[Compression::Gzip]));
    let proxy = FaultProxy::start(&reg.base_url());
    (reg, proxy, pushed)
}

#[test]
fn token_refreshed_after_a_401_on_the_manifest() {
    let (reg, proxy, pushed) = token_registry_behind_proxy(Duration::from_secs(300));
    proxy.add_rule(Rule::new("GET", "/manifests/", Fault::Unauthorized).nth(1));
    let json = Cli::new().inspect_json(&[&reference(proxy.host(), "v1")]);
    assert_single_host_image(&json, &pushed);
    let manifests = proxy.requests("GET", "/manifests/");
    let statuses: Vec<u16> = manifests.iter().map(|e| e.status).collect();
    assert_eq!(statuses, [401, 200]);
    assert_eq!(
        reg.token_server().unwrap().tokens_issued(),
        2,
        "a new token must be fetched after the 401"
    );
}

#[test]
fn short_lived_token_is_renewed_before_it_expires() {
    // 3 s tokens, and a manifest that takes ~4 s to arrive: the first token is dead at the
    // registry by the time the config is fetched.
    let (reg, proxy, pushed) = token_registry_behind_proxy(Duration::from_secs(3));
    let rate = (pushed.manifest.len() as u64 / 4).max(1);
    proxy.add_rule(Rule::new(
        "GET",
        "/manifests/",
        Fault::Drip {
            bytes_per_sec: rate,
        },
    ));
    let json = Cli::new().inspect_json(&[&reference(proxy.host(), "v1")]);
    assert_single_host_image(&json, &pushed);
    assert!(
        reg.token_server().unwrap().tokens_issued() >= 2,
        "the expired token must have been replaced"
    );
    let config = proxy.requests("GET", &format!("/blobs/{}", pushed.config_digest));
    let statuses: Vec<u16> = config.iter().map(|e| e.status).collect();
    assert_eq!(
        statuses,
        [200],
        "the token must be renewed before the registry refuses it"
    );
}

/// A plain registry with `test/app:v1` behind a fault proxy.
fn plain_behind_proxy() -> (TestRegistry, FaultProxy, PushedImage) {
    let reg = TestRegistry::start(Variant::Plain);
    let pushed = image::push_image(&reg, REPO, "v1", &image("proxied", &[Compression::Gzip]));
    let proxy = FaultProxy::start(&reg.base_url());
    (reg, proxy, pushed)
}

#[test]
fn retries_503_on_the_manifest() {
    let (_reg, proxy, pushed) = plain_behind_proxy();
    proxy.add_rule(Rule::new("GET", "/manifests/", Fault::Status(503, None)).times(2));
    let json = Cli::new().inspect_json(&[&reference(proxy.host(), "v1")]);
    assert_single_host_image(&json, &pushed);
    let statuses: Vec<u16> = proxy
        .requests("GET", "/manifests/")
        .iter()
        .map(|e| e.status)
        .collect();
    assert_eq!(statuses, [503, 503, 200]);
}

#[test]
fn waits_out_429_retry_after() {
    let (_reg, proxy, pushed) = plain_behind_proxy();
    proxy.add_rule(Rule::new("GET", "/manifests/", Fault::Status(429, Some(1))).nth(1));
    let run = Cli::new().run(&["inspect", "--json", &reference(proxy.host(), "v1")]);
    assert_single_host_image(&run.json(), &pushed);
    assert!(
        run.elapsed >= Duration::from_secs(1),
        "Retry-After: 1 was not waited for ({:?})",
        run.elapsed
    );
    let statuses: Vec<u16> = proxy
        .requests("GET", "/manifests/")
        .iter()
        .map(|e| e.status)
        .collect();
    assert_eq!(statuses, [429, 200]);
}

#[test]
fn a_manifest_that_trickles_in_fails_within_the_timeout() {
    let (_reg, proxy, pushed) = plain_behind_proxy();
    // A byte every quarter second: never a stall of 2 s, and minutes for the whole manifest.
    let rate = 4;
    assert!(pushed.manifest.len() as u64 / rate > 60);
    proxy.add_rule(Rule::new(
        "GET",
        "/manifests/",
        Fault::Drip {
            bytes_per_sec: rate,
        },
    ));
    let run = Cli::new().run(&[
        "inspect",
        "--timeout",
        "2",
        "--retries",
        "1",
        &reference(proxy.host(), "v1"),
    ]);
    let error = run.error();
    assert!(
        error.contains(&format!(
            "registry {} did not send the whole manifest body within 2s",
            proxy.host()
        )) && error.contains("--timeout"),
        "{error}"
    );
    // Two attempts of at most 2 s each, and a backoff: far from the minutes of the drip.
    assert!(run.elapsed < Duration::from_secs(30), "{:?}", run.elapsed);
    assert_eq!(proxy.requests("GET", "/manifests/").len(), 2);
}

#[test]
fn config_redirected_to_storage_without_credentials() {
    let reg = TestRegistry::start(htpasswd());
    let pushed = image::push_image(&reg, REPO, "v1", &image("redirect", &[Compression::Gzip]));
    let proxy = FaultProxy::start(&reg.base_url());
    let config_path = format!("/blobs/{}", pushed.config_digest);
    proxy.add_rule(Rule::new("GET", &config_path, Fault::RedirectToStorage));
    let cli = Cli::new();
    cli.docker_login(proxy.host(), USER, PASSWORD);
    assert_single_host_image(
        &cli.inspect_json(&[&reference(proxy.host(), "v1")]),
        &pushed,
    );
    let redirected = proxy.requests("GET", &config_path);
    assert_eq!(redirected.len(), 1);
    assert_eq!(redirected[0].status, 307);
    assert!(redirected[0].authorization, "the registry gets credentials");
    let storage = proxy.storage_log();
    assert_eq!(storage.len(), 1, "{storage:?}");
    assert_eq!(storage[0].status, 200);
    assert!(
        !storage[0].authorization,
        "the registry's Authorization header leaked to the storage host"
    );
}

#[test]
fn config_download_reset_is_retried() {
    let (_reg, proxy, pushed) = plain_behind_proxy();
    let config_path = format!("/blobs/{}", pushed.config_digest);
    proxy.add_rule(Rule::new("GET", &config_path, Fault::ResetAfter(10)).nth(1));
    let json = Cli::new().inspect_json(&[&reference(proxy.host(), "v1")]);
    assert_single_host_image(&json, &pushed);
    assert_eq!(proxy.requests("GET", &config_path).len(), 2);
}

#[test]
fn unknown_tag_names_tag_and_repository() {
    let (_reg, proxy, _) = plain_behind_proxy();
    let err = Cli::new().inspect_error(&["--retries", "0", &reference(proxy.host(), "nope")]);
    assert!(err.contains("\"nope\""), "{err}");
    assert!(err.contains(REPO), "{err}");
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn unknown_repository_is_named() {
    let (_reg, proxy, _) = plain_behind_proxy();
    let name = format!("{}/test/missing:v1", proxy.host());
    let err = Cli::new().inspect_error(&["--retries", "0", &name]);
    assert!(err.contains("repository test/missing not found"), "{err}");
}

#[test]
fn unknown_digest_is_named() {
    let (_reg, proxy, _) = plain_behind_proxy();
    let missing = Digest::of(b"no such manifest");
    let name = format!("{}/{REPO}@{missing}", proxy.host());
    let err = Cli::new().inspect_error(&["--retries", "0", &name]);
    assert!(err.contains(&missing.to_string()), "{err}");
    assert!(err.contains(REPO), "{err}");
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn malformed_input_is_refused_before_any_request() {
    let (_reg, proxy, _) = plain_behind_proxy();
    let host = proxy.host();
    let cli = Cli::new();
    let cases = [
        (vec![format!("{host}/Test/App:v1")], "lowercase"),
        (vec![format!("{host}/{REPO}@sha256:abc")], "sha256:abc"),
        (vec![format!("{host}/{REPO}:bad tag")], "tag"),
        (
            vec![format!("http://{host}/{REPO}:v1")],
            &format!("takes no scheme: use \"{host}/{REPO}:v1\""),
        ),
        (
            vec![
                "--platform".to_string(),
                "linux".to_string(),
                reference(host, "v1"),
            ],
            "--platform",
        ),
    ];
    for (args, needle) in cases {
        let mut all = vec!["--retries", "0"];
        all.extend(args.iter().map(String::as_str));
        let err = cli.inspect_error(&all);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let log = proxy.log();
    assert!(log.is_empty(), "requests were sent: {log:?}");
}

#[test]
fn connection_refused_names_host_and_port() {
    // A port nothing listens on (bound, then released).
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let host = format!("127.0.0.1:{port}");
    let run = Cli::new().run(&["inspect", "--retries", "0", &reference(&host, "v1")]);
    let err = run.error();
    assert!(err.contains(&host), "{err}");
    assert!(err.contains("cannot connect"), "{err}");
    assert!(run.elapsed < Duration::from_secs(5), "{:?}", run.elapsed);
}

#[test]
fn forbidden_says_denied() {
    let (_reg, proxy, _) = plain_behind_proxy();
    proxy.add_rule(Rule::new("GET", "/manifests/", Fault::Status(403, None)));
    let err = Cli::new().inspect_error(&["--retries", "0", &reference(proxy.host(), "v1")]);
    assert!(err.contains("denied"), "{err}");
    assert!(err.contains(REPO), "{err}");
}

#[test]
fn persistent_server_error_gives_up_with_the_status() {
    let (_reg, proxy, _) = plain_behind_proxy();
    proxy.add_rule(Rule::new("GET", "/manifests/", Fault::Status(500, None)));
    let err = Cli::new().inspect_error(&["--retries", "1", &reference(proxy.host(), "v1")]);
    assert!(err.contains("500"), "{err}");
    assert_eq!(proxy.requests("GET", "/manifests/").len(), 2, "one retry");
}

#[test]
fn stalled_registry_times_out() {
    let (_reg, proxy, _) = plain_behind_proxy();
    proxy.add_rule(Rule::new(
        "GET",
        "/manifests/",
        Fault::Stall(Duration::from_secs(20)),
    ));
    let run = Cli::new().run(&[
        "inspect",
        "--timeout",
        "1",
        "--retries",
        "0",
        &reference(proxy.host(), "v1"),
    ]);
    let err = run.error();
    assert!(err.contains(proxy.host()), "{err}");
    // Headers came, the body did not: metadata has to arrive whole within --timeout.
    assert!(
        err.contains("did not send the whole manifest body within 1s (it stalled"),
        "{err}"
    );
    assert!(run.elapsed < Duration::from_secs(10), "{:?}", run.elapsed);
}

#[test]
fn schema1_manifest_asks_for_a_re_push() {
    let reg = TestRegistry::start_schema1(Variant::Plain);
    image::push_schema1(&reg, REPO, "old", &[layer("schema1")]);
    let err = Cli::new().inspect_error(&["--retries", "0", &reference(&reg.host(), "old")]);
    assert!(err.contains("schema 1"), "{err}");
    assert!(err.contains("re-push"), "{err}");
}

#[test]
fn corrupted_manifest_fetched_by_digest_is_refused() {
    let (_reg, proxy, pushed) = plain_behind_proxy();
    proxy.add_rule(Rule::new("GET", "/manifests/", Fault::FlipByte(40)));
    let name = format!("{}/{REPO}@{}", proxy.host(), pushed.manifest_digest);
    let err = Cli::new().inspect_error(&["--retries", "0", &name]);
    assert!(err.contains("digest"), "{err}");
    assert!(err.contains(&pushed.manifest_digest.to_string()), "{err}");
}

#[test]
fn corrupted_config_is_refused() {
    let (_reg, proxy, pushed) = plain_behind_proxy();
    let config_path = format!("/blobs/{}", pushed.config_digest);
    proxy.add_rule(Rule::new("GET", &config_path, Fault::FlipByte(5)));
    let err = Cli::new().inspect_error(&["--retries", "0", &reference(proxy.host(), "v1")]);
    assert!(err.contains("image config"), "{err}");
    assert!(err.contains(&pushed.config_digest.to_string()), "{err}");
}
