//! `lazypull mount` behind the fault proxy, continued (`mount_proxy_faults.rs` has the
//! faults a retry cures): a flipped byte in a Range answer, a redirect to a storage host,
//! a token that expires mid-download, and a body that drips at 10 KB/s.

mod common;

use std::fs;
use std::time::Duration;

use common::cold::{Cold, log_lines, read, read_bound};
use common::mount::{FOREVER, assert_eio, hold_background, within};
use common::proxy::{Fault, Rule};
use common::registry::Variant;
use common::token::TokenOptions;
use lazypull::digest::Digest;

/// A byte flipped in transit on a lazy read. Until the layer is verified nothing can tell:
/// the read inflates the span from the damaged chunk, and `cold`'s random bytes sit in
/// stored deflate blocks, so the flip is not even an inflate error and may reach the
/// reader (the one thing here that is not guaranteed). What is guaranteed: the damaged
/// chunk is kept for the layer's verification, which fails on it; from then on every read
/// of the layer is EIO, `status` names the expected and the served digest, and nothing of
/// it stays in the cache, so a remount once the fault is gone serves the right bytes.
#[test]
fn flipped_byte_in_a_range_answer_fails_the_layer() {
    let c = Cold::plain();
    let mount = c.mount();
    // Past the start of the answer, inside `cold`'s bytes.
    c.proxy
        .add_rule(c.on_reads(Fault::FlipByte(600_000)).nth(1));
    // Right bytes, wrong ones (see above) or EIO; but within the bound.
    let _ = read(&mount, "cold");
    let attempts = c.read_attempts();
    assert_eq!(attempts.len(), 1, "{attempts:#?}");
    assert_eq!(attempts[0].fault, Some(Fault::FlipByte(600_000)));

    c.proxy.clear_rules();
    let status = mount.wait_for("failed", |s| s.iter().all(|s| s == "failed"));
    let digest = c.layer().digest.to_string();
    let error = status["layers"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&digest) && error.contains("digest mismatch"),
        "{status:#}"
    );
    // The served digest is that of the blob with the flip, which the status names too.
    let mut damaged = fs::read(c.reg.blob_path(&c.layer().digest)).unwrap();
    let at = 600_000 + attempts[0].range.as_deref().map_or(0, range_start) as usize;
    damaged[at] ^= 0xff;
    let actual = Digest::of(&damaged).to_string();
    assert!(error.contains(&actual), "{error}");
    assert!(mount.status_text().contains(&actual));
    assert!(
        !log_lines(&c.sandbox, &["layer failed", &digest, &actual]).is_empty(),
        "{}",
        c.sandbox.daemon_log()
    );

    assert_eio(read(&mount, "cold"), "the damaged file");
    assert_eio(read(&mount, "head"), "another file of the failed layer");
    assert_eq!(mount.status()["pid"], mount.pid(), "the daemon lives on");
    mount.umount();

    hold_background(&c.proxy, &c.image, Fault::Stall(FOREVER));
    let again = c.mount();
    c.clear_and_verify(&again);
    again.umount();
}

fn range_start(range: &str) -> u64 {
    range
        .trim_start_matches("bytes=")
        .split('-')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(0)
}

/// A registry with Basic auth that hands blobs to a storage host: the lazy read and the
/// background download both follow the redirect, and the password never reaches it.
#[test]
fn redirect_to_storage_keeps_the_credentials_at_the_registry() {
    let c = Cold::start(
        Variant::Htpasswd {
            user: "alice".into(),
            password: "s3cret".into(),
        },
        5 << 19,
        300_000,
    );
    let mount = c.mount();
    c.proxy.clear_log();
    c.proxy.add_rule(c.on_reads(Fault::RedirectToStorage));
    assert!(read(&mount, "cold").is_ok_and(|b| b == c.cold));

    c.proxy.clear_rules();
    c.proxy
        .add_rule(Rule::new("GET", &c.blob_path(), Fault::RedirectToStorage));
    mount.wait_all_ready();

    let redirected: Vec<_> = c
        .proxy
        .requests("GET", &c.blob_path())
        .into_iter()
        .filter(|e| e.fault == Some(Fault::RedirectToStorage))
        .collect();
    assert!(
        redirected.len() >= 2
            && redirected
                .iter()
                .all(|e| e.status == 307 && e.authorization),
        "the registry got the credentials and redirected the read and the download: {redirected:#?}"
    );
    let storage = c.proxy.storage_log();
    assert!(
        storage.iter().any(|e| e.range.is_some()),
        "the lazy read came through the storage: {storage:#?}"
    );
    for e in &storage {
        assert!(matches!(e.status, 200 | 206), "{e:#?}");
        assert!(
            !e.authorization && e.header("authorization").is_none(),
            "the credentials reached the storage host: {e:#?}"
        );
    }
    c.clear_and_verify(&mount);
    mount.umount();
}

/// Bearer tokens: a lazy read whose token the registry suddenly refuses (401), and a
/// background download that breaks off and whose resumption is refused; each time the
/// client gets a new token and goes on.
#[test]
fn token_that_expires_mid_download_is_renewed() {
    let c = Cold::start(Variant::Token(TokenOptions::default()), 5 << 19, 300_000);
    let tokens = c.reg.token_server().unwrap();
    let mount = c.mount();
    c.proxy.clear_log();
    let issued = tokens.tokens_issued();
    c.proxy.add_rule(c.on_reads(Fault::Unauthorized).nth(1));
    assert!(read(&mount, "cold").is_ok_and(|b| b == c.cold));
    let attempts = c.read_attempts();
    let statuses: Vec<u16> = attempts.iter().map(|e| e.status).collect();
    assert_eq!(statuses, [401, 206]);
    assert!(attempts.iter().all(|e| e.authorization));
    assert_eq!(tokens.tokens_issued(), issued + 1, "one new token");

    // The background download breaks off after 1 MB, and the request that resumes it
    // meets the 401.
    let issued = tokens.tokens_issued();
    c.proxy.clear_rules();
    c.proxy.clear_log();
    let blob = c.blob_path();
    c.proxy
        .add_rule(Rule::new("GET", &blob, Fault::ResetAfter(1_000_000)).nth(1));
    c.proxy
        .add_rule(Rule::new("GET", &blob, Fault::Unauthorized).nth(2));
    mount.wait_all_ready();
    let gets = c.proxy.requests("GET", &blob);
    let broke = gets
        .iter()
        .position(|e| e.fault == Some(Fault::ResetAfter(1_000_000)))
        .unwrap_or_else(|| panic!("the download never broke off: {gets:#?}"));
    assert_eq!(gets[broke].body_bytes, 1_000_000);
    let start = gets[broke].range.as_deref().map_or(0, range_start);
    let resumed: Vec<(u16, u64)> = gets[broke + 1..]
        .iter()
        .map(|e| (e.status, e.range.as_deref().map_or(0, range_start)))
        .collect();
    assert_eq!(
        resumed,
        [(401, start + 1_000_000), (206, start + 1_000_000)],
        "{gets:#?}"
    );
    assert_eq!(tokens.tokens_issued(), issued + 1, "one new token");
    c.clear_and_verify(&mount);
    mount.umount();
}

/// A body that drips at 10 KB/s: the read takes its time and returns the right bytes, and
/// meanwhile the mount answers `stat`, `ls` and `status`.
#[test]
fn drip_read_completes_while_the_mount_stays_responsive() {
    // About 100 kB of blob: ten seconds at 10 KB/s.
    let c = Cold::start(Variant::Plain, 0, 100_000);
    let mount = c.mount();
    c.proxy.add_rule(c.on_reads(Fault::Drip {
        bytes_per_sec: 10_000,
    }));
    let path = mount.join("cold");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(fs::read(path));
    });
    std::thread::sleep(Duration::from_secs(1));
    let quick = Duration::from_secs(5);
    let motd = mount.join("etc/motd");
    let size = within(quick, "stat", move || fs::metadata(motd).map(|m| m.len()));
    assert_eq!(size.unwrap(), 16);
    let root = mount.path().to_path_buf();
    let names = within(quick, "ls", move || {
        let mut names: Vec<String> = fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    });
    assert_eq!(names, ["cold", "etc", "head"]);
    assert_eq!(mount.states(), ["fetching"]);
    assert!(
        rx.try_recv().is_err(),
        "the drip read ended before the mount was checked: the check proved nothing"
    );
    let got = rx
        .recv_timeout(read_bound())
        .expect("the drip read finishes");
    assert!(got.is_ok_and(|b| b == c.cold), "the drip read's bytes");
    let attempts = c.read_attempts();
    assert_eq!(attempts.len(), 1, "no retry: {attempts:#?}");
    c.clear_and_verify(&mount);
    mount.umount();
}
