//! Certificates and signatures made with the `openssl` command line tool, so the
//! harness needs no crypto crate (and no C toolchain) of its own.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Runs `openssl` with `args` in `dir`; panics with its stderr on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Key algorithm of a generated certificate.
#[derive(Clone, Copy)]
pub enum KeyKind {
    /// P-256: fast to generate, fine for TLS.
    Ec,
    /// RSA 2048: needed for RS256 token signatures.
    Rsa,
}

/// Generates `<dir>/<name>.key` (PEM).
pub fn genkey(dir: &Path, name: &str, kind: KeyKind) -> PathBuf {
    let key = format!("{name}.key");
    match kind {
        KeyKind::Ec => openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                &key,
            ],
        ),
        KeyKind::Rsa => openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                &key,
            ],
        ),
    }
    dir.join(key)
}

/// A self-signed certificate authority kept in a directory.
pub struct Ca {
    dir: PathBuf,
    pub cert: PathBuf,
    key: PathBuf,
}

/// A certificate issued by a [`Ca`], with its private key.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Ca {
    /// Creates `<name>.crt` / `<name>.key` in `dir`.
    pub fn new(dir: &Path, name: &str) -> Ca {
        let key = genkey(dir, name, KeyKind::Ec);
        let cert = dir.join(format!("{name}.crt"));
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                path_str(&key),
                "-out",
                path_str(&cert),
                "-days",
                "3",
                "-subj",
                &format!("/CN={name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        Ca {
            dir: dir.to_path_buf(),
            cert,
            key,
        }
    }

    /// Issues a leaf certificate `<name>.crt` for `sans` (`IP:…`/`DNS:…`, may be empty).
    pub fn issue(&self, name: &str, kind: KeyKind, sans: &[&str]) -> Issued {
        let key = genkey(&self.dir, name, kind);
        let csr = self.dir.join(format!("{name}.csr"));
        let cert = self.dir.join(format!("{name}.crt"));
        let ext = self.dir.join(format!("{name}.ext"));
        let mut ext_text = String::from(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n",
        );
        if !sans.is_empty() {
            ext_text.push_str(&format!(
                "extendedKeyUsage=serverAuth\nsubjectAltName={}\n",
                sans.join(",")
            ));
        }
        fs::write(&ext, ext_text).unwrap();
        openssl(
            &self.dir,
            &[
                "req",
                "-new",
                "-key",
                path_str(&key),
                "-out",
                path_str(&csr),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                path_str(&csr),
                "-CA",
                path_str(&self.cert),
                "-CAkey",
                path_str(&self.key),
                "-CAcreateserial",
                "-days",
                "3",
                "-extfile",
                path_str(&ext),
                "-out",
                path_str(&cert),
            ],
        );
        Issued { cert, key }
    }
}

/// `<name>.crt` / `<name>.key` in `dir`: a certificate for `sans` signed by its own key, as
/// `openssl req -x509` makes it with the distribution's defaults, which mark it a CA (CA:TRUE).
pub fn self_signed(dir: &Path, name: &str, sans: &[&str]) -> Issued {
    let key = genkey(dir, name, KeyKind::Ec);
    let cert = dir.join(format!("{name}.crt"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            path_str(&key),
            "-out",
            path_str(&cert),
            "-days",
            "3",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            &format!("subjectAltName={}", sans.join(",")),
        ],
    );
    Issued { cert, key }
}

/// DER bytes of the first certificate of a PEM file.
pub fn cert_der(pem: &Path) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(["x509", "-in", path_str(pem), "-outform", "DER"])
        .stdin(Stdio::null())
        .output()
        .expect("cannot run openssl");
    assert!(
        out.status.success(),
        "openssl x509 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The modulus of an RSA key (big-endian bytes); its exponent is openssl's 65537.
pub fn rsa_modulus(key: &Path) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(["rsa", "-in", path_str(key), "-noout", "-modulus"])
        .stdin(Stdio::null())
        .output()
        .expect("cannot run openssl");
    assert!(
        out.status.success(),
        "openssl rsa failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    hex::decode(text.trim().trim_start_matches("Modulus=")).unwrap()
}

/// RSASSA-PKCS1-v1_5 with SHA-256 (JWS `RS256`) of `data` under the PEM key `key`.
pub fn sign_rs256(key: &Path, data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign", path_str(key)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run openssl");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl dgst failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}
