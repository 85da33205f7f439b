//! `lazypull mount` behind the fault proxy: for each fault a registry or the network can
//! throw at a cold read, the read either returns the right bytes after bounded retries or
//! fails with EIO and leaves a daemon log line naming the layer, the fault and the retry
//! count; never wrong bytes, never a wait past what `--timeout` and `--retries` allow,
//! never a dead daemon: once the fault is gone, reads work, `status` answers and the
//! layer is verified.
//!
//! Faults that damage bytes (a flipped byte), redirect, or concern auth and slow links are
//! in `mount_proxy_faults_more.rs`.

mod common;

use std::time::Duration;

use common::cold::{Cold, RETRIES, log_lines, read};
use common::mount::{FOREVER, Mount, assert_eio, wait_until};
use common::proxy::Fault;

/// Every cold read fails with `fault`: EIO, each read of the daemon tried once and
/// `--retries` times more, each ending with a "giving up" log line that names the layer,
/// its bytes, the fault (`says`) and the retry count. Then the daemon answers `status` and
/// the layer is still being fetched, not failed.
fn fails_with_eio(c: &Cold, mount: &Mount, fault: Fault, says: &str) {
    c.proxy.clear_log();
    c.proxy.add_rule(c.on_reads(fault.clone()));
    assert_eio(
        read(mount, "cold"),
        "a cold read that always meets the fault",
    );
    let digest = c.layer().digest.to_string();
    let retries = format!("retries={RETRIES}");
    // The kernel may send the read more than once (readahead, then the page itself): the
    // daemon is quiet when every attempt has ended in a read given up.
    let mut attempts = Vec::new();
    let mut lines = Vec::new();
    let quiet = wait_until(Duration::from_secs(30), || {
        attempts = c.read_attempts();
        lines = match attempts.first().and_then(|e| e.range.as_deref()) {
            Some(range) => {
                let bytes = format!("bytes {}", range.trim_start_matches("bytes="));
                log_lines(&c.sandbox, &["giving up", &digest, &bytes, says, &retries])
            }
            None => Vec::new(),
        };
        !lines.is_empty() && attempts.len() == lines.len() * (RETRIES as usize + 1)
    });
    assert!(
        quiet,
        "{} attempts, {} lines naming the layer, its bytes, {says:?} and {retries}:\n{}",
        attempts.len(),
        lines.len(),
        c.sandbox.daemon_log()
    );
    assert!(attempts.iter().all(|e| e.fault.as_ref() == Some(&fault)));
    let status = mount.status();
    assert_eq!(status["pid"], mount.pid());
    assert_eq!(mount.states(), ["fetching"], "{status:#}");
    c.clear_faults();
}

/// The next `times` attempts meet `fault`: the read returns the right bytes after that many
/// retries, each logged with the fault.
fn recovers_after_retries(c: &Cold, mount: &Mount, fault: Fault, times: u64, says: &str) {
    c.proxy.clear_log();
    c.proxy.add_rule(c.on_reads(fault.clone()).times(times));
    let got = read(mount, "cold").expect("a read whose faults stop within --retries");
    assert!(got == c.cold, "the cold read returned other bytes");
    let attempts = c.read_attempts();
    let faults: Vec<Option<Fault>> = attempts.iter().map(|e| e.fault.clone()).collect();
    let mut want = vec![Some(fault); times as usize];
    want.push(None);
    assert_eq!(faults, want, "{attempts:#?}");
    let digest = c.layer().digest.to_string();
    for retry in 1..=times {
        let lines = log_lines(
            &c.sandbox,
            &["retrying", &digest, says, &format!("retry={retry} ")],
        );
        assert!(
            !lines.is_empty(),
            "no log line for retry {retry} with {says:?}:\n{}",
            c.sandbox.daemon_log()
        );
    }
}

/// The whole story for one fault: EIO while it lasts, the right bytes when it stops within
/// the retries, and a verified layer once it is gone.
fn check(fault: Fault, says: &str) {
    let c = Cold::plain();
    let mount = c.mount();
    fails_with_eio(&c, &mount, fault.clone(), says);
    recovers_after_retries(&c, &mount, fault, RETRIES, says);
    c.clear_and_verify(&mount);
    mount.umount();
}

#[test]
fn connection_reset_mid_body() {
    check(Fault::ResetAfter(100_000), "Connection reset by peer");
}

#[test]
fn stalled_body() {
    check(Fault::Stall(FOREVER), "did not answer within 2s");
}

#[test]
fn truncated_body_with_a_correct_content_length() {
    check(
        Fault::Truncate(50_000),
        "end of file before message length reached",
    );
}

#[test]
fn wrong_content_range() {
    check(Fault::WrongContentRange, "Content-Range");
}

#[test]
fn too_many_requests_with_retry_after() {
    check(Fault::Status(429, Some(1)), "HTTP 429");
}

#[test]
fn server_error_bursts() {
    let c = Cold::plain();
    let mount = c.mount();
    fails_with_eio(&c, &mount, Fault::Status(503, None), "HTTP 503");
    // A burst of two different errors, then the registry is back.
    c.proxy.clear_log();
    c.proxy
        .add_rule(c.on_reads(Fault::Status(500, None)).nth(1));
    c.proxy
        .add_rule(c.on_reads(Fault::Status(502, None)).nth(2));
    let got = read(&mount, "cold").expect("a read whose 5xx burst ends within --retries");
    assert!(got == c.cold, "the cold read returned other bytes");
    let statuses: Vec<u16> = c.read_attempts().iter().map(|e| e.status).collect();
    assert_eq!(statuses, [500, 502, 206]);
    let digest = c.layer().digest.to_string();
    for (status, retry) in [("HTTP 500", "retry=1 "), ("HTTP 502", "retry=2 ")] {
        assert!(
            !log_lines(&c.sandbox, &["retrying", &digest, status, retry]).is_empty(),
            "no retry line for {status}:\n{}",
            c.sandbox.daemon_log()
        );
    }
    c.clear_and_verify(&mount);
    mount.umount();
}

#[test]
fn whole_blob_in_reply_to_a_range() {
    let c = Cold::plain();
    let mount = c.mount();
    c.proxy.clear_log();
    c.proxy.add_rule(c.on_reads(Fault::IgnoreRange));
    let got = read(&mount, "cold").expect("a read answered with the whole blob");
    assert!(got == c.cold, "the cold read returned other bytes");
    let attempts = c.read_attempts();
    assert_eq!(attempts.len(), 1, "no retry needed: {attempts:#?}");
    assert_eq!(attempts[0].status, 200);
    let start: u64 = attempts[0]
        .range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|a| a.parse().ok())
        .unwrap();
    assert!(
        start > 1 << 20,
        "the read must start inside the blob for the skip to matter: {start}"
    );
    c.clear_and_verify(&mount);
    mount.umount();
}
