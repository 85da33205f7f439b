//! A static program that prints its effective uid (to put in an image setuid root), and
//! running programs as `nobody`, who must not get root from an image.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::OnceLock;

pub const NOBODY: u32 = 65534;

/// A static binary printing its effective uid: it runs from any mount and in any root.
pub fn euid_program() -> &'static [u8] {
    static PROGRAM: OnceLock<Vec<u8>> = OnceLock::new();
    PROGRAM.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("euid.c");
        std::fs::write(
            &source,
            "#include <stdio.h>\n#include <unistd.h>\n\
             int main(void) { printf(\"%d\\n\", (int)geteuid()); return 0; }\n",
        )
        .unwrap();
        let binary = dir.path().join("euid");
        let out = Command::new("gcc")
            .args(["-static", "-O2", "-o"])
            .arg(&binary)
            .arg(&source)
            .output()
            .expect("gcc is installed (packages gcc, libc6-dev)");
        assert!(
            out.status.success(),
            "gcc -static failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read(&binary).unwrap()
    })
}

/// `program ARGS…` run as nobody (uid and gid 65534, no supplementary groups).
pub fn as_nobody(program: &Path, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
        ])
        // setpriv still holds root's capabilities when it execs, so it would reach
        // `program` through directories nobody may enter: a shell, already nobody, looks
        // the path up instead.
        .args(["/bin/sh", "-c", "exec \"$0\" \"$@\""])
        .arg(program)
        .args(args)
        .output()
        .expect("setpriv (util-linux) runs")
}

/// A new directory every user may traverse (a test's own temp dirs are 0700), for mount
/// points other users must reach.
pub fn public_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("lazypull-public-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}
