//! `lazypull mount` behind the fault proxy, continued (`mount_proxy_faults.rs` has the
//! faults a retry cures): a flipped byte in one Range answer and in every one, a redirect
//! to a storage host, a token that expires mid-download, and a body that drips at 10 KB/s.

mod common;

use std::fs;
use std::time::Duration;

use common::cold::{Cold, log_lines, read, read_bound};
use common::mount::{assert_eio, within};
use common::proxy::{Fault, LogEntry, Rule};
use common::registry::Variant;
use common::token::TokenOptions;
use lazypull::blob::CHUNK_SIZE;
use lazypull::digest::Digest;

/// Where in an answer a byte is flipped: inside its first chunk (answers start at a chunk
/// boundary), so that a chunk fetched again on its own is damaged too.
const FLIP_AT: u64 = 30_000;

/// Where a flip in an answer to `range` lands: the chunk number and the chunk's right and
/// damaged sha256.
fn flipped_chunk(c: &Cold, range: &str, flip: u64) -> (u64, Digest, Digest) {
    let blob = fs::read(c.reg.blob_path(&c.layer().digest)).unwrap();
    let at = range_start(range) + flip;
    let chunk = at / CHUNK_SIZE;
    let span =
        (chunk * CHUNK_SIZE) as usize..((chunk + 1) * CHUNK_SIZE).min(blob.len() as u64) as usize;
    let mut damaged = blob[span.clone()].to_vec();
    damaged[(at - chunk * CHUNK_SIZE) as usize] ^= 0xff;
    (chunk, Digest::of(&blob[span]), Digest::of(&damaged))
}

fn range_start(range: &str) -> u64 {
    range
        .trim_start_matches("bytes=")
        .split('-')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(0)
}

/// The Range GETs of the layer since the log was cleared.
fn range_reads(c: &Cold) -> Vec<LogEntry> {
    c.proxy
        .requests("GET", &c.blob_path())
        .into_iter()
        .filter(|e| e.range.is_some())
        .collect()
}

/// A byte flipped in transit on a lazy read. `cold`'s random bytes sit in stored deflate
/// blocks, so inflate cannot notice; the chunk's sha256 in the index (recorded by the pass
/// that verified the layer) does: the damaged chunk is fetched again, the reader gets the
/// right bytes, and the layer is verified and ready in the end.
#[test]
fn flipped_byte_in_a_range_answer_is_fetched_again() {
    let c = Cold::plain();
    let mount = c.mount();
    c.proxy.clear_log();
    c.proxy
        .add_rule(c.on_reads(Fault::FlipByte(FLIP_AT)).nth(1));
    assert!(
        read(&mount, "cold").is_ok_and(|b| b == c.cold),
        "right bytes"
    );

    let reads = range_reads(&c);
    assert!(reads.len() >= 2, "{reads:#?}");
    assert_eq!(reads[0].fault, Some(Fault::FlipByte(FLIP_AT)));
    let (chunk, expected, actual) = flipped_chunk(&c, reads[0].range.as_deref().unwrap(), FLIP_AT);
    let size = c.layer().size;
    let again = format!(
        "bytes={}-{}",
        chunk * CHUNK_SIZE,
        ((chunk + 1) * CHUNK_SIZE).min(size) - 1
    );
    assert_eq!(
        reads[1].range.as_deref(),
        Some(again.as_str()),
        "{reads:#?}"
    );
    assert_eq!((reads[1].status, reads[1].fault.clone()), (206, None));
    let digest = c.layer().digest.to_string();
    assert!(
        !log_lines(
            &c.sandbox,
            &[
                "fetching it again",
                &digest,
                &expected.to_string(),
                &actual.to_string()
            ]
        )
        .is_empty(),
        "{}",
        c.sandbox.daemon_log()
    );
    c.clear_and_verify(&mount);
    mount.umount();
}

/// A registry that damages every answer: reads of the damaged chunk fail with EIO, never
/// with wrong bytes, the log says which chunk of which layer differs from the verified
/// index and how, the layer is not failed for it (the background download judges the
/// layer) and the daemon answers; once the answers are right again, so are the reads.
#[test]
fn flipped_byte_in_every_range_answer_is_eio_never_wrong_bytes() {
    let c = Cold::plain();
    let mount = c.mount();
    c.proxy.clear_log();
    c.proxy.add_rule(c.on_reads(Fault::FlipByte(FLIP_AT)));
    assert_eio(read(&mount, "cold"), "a file in the damaged chunk");

    let reads = range_reads(&c);
    assert!(
        reads.len() >= 2
            && reads
                .iter()
                .all(|e| e.fault == Some(Fault::FlipByte(FLIP_AT))),
        "{reads:#?}"
    );
    let (chunk, expected, actual) = flipped_chunk(&c, reads[0].range.as_deref().unwrap(), FLIP_AT);
    let digest = c.layer().digest.to_string();
    let lines = log_lines(
        &c.sandbox,
        &[
            "the registry served bytes that differ from the verified index",
            &digest,
            &format!("chunk={chunk}"),
            &expected.to_string(),
            &actual.to_string(),
        ],
    );
    assert!(!lines.is_empty(), "{}", c.sandbox.daemon_log());
    assert_eq!(mount.status()["pid"], mount.pid(), "the daemon lives on");
    assert_eq!(mount.states(), ["fetching"]);
    assert_eq!(
        fs::read(mount.join("etc/motd"))
            .ok()
            .filter(|b| b != b"still answering\n"),
        None,
        "another file reads right or not at all"
    );

    // The fault clears (the background download still held back): the lazy read works.
    c.clear_faults();
    assert!(
        read(&mount, "cold").is_ok_and(|b| b == c.cold),
        "right bytes"
    );
    assert_eq!(mount.states(), ["fetching"]);
    c.clear_and_verify(&mount);
    mount.umount();
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
    assert!(
        got.as_ref().is_ok_and(|b| *b == c.cold),
        "the drip read's bytes: {:?}\n{}",
        got.map(|b| b.len()),
        c.sandbox.daemon_log()
    );
    let attempts = c.read_attempts();
    assert_eq!(attempts.len(), 1, "no retry: {attempts:#?}");
    c.clear_and_verify(&mount);
    mount.umount();
}
