//! The command line: the only place that uses `anyhow`.

mod bundle;
mod cache;
mod daemon;
mod helper;
mod index;
mod inspect;
mod layers;
mod ls;
mod mount;
mod run;

use std::ffi::OsString;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::reference::Reference;
use crate::registry::{Platform, RegistryClient, ResolvedImage, TransportOptions};

#[derive(Parser)]
#[command(
    name = "lazypull",
    version,
    about = "Mount a container image straight out of an OCI registry, without pulling it first",
    after_help = "Examples:\n  lazypull inspect alpine\n  lazypull inspect --json localhost:5000/team/app:1.4"
)]
struct Cli {
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Inspect(inspect::InspectArgs),
    Ls(ls::LsArgs),
    Index(index::IndexArgs),
    Mount(mount::MountArgs),
    Umount(mount::UmountArgs),
    Status(mount::StatusArgs),
    Cache(cache::CacheCommand),
    Bundle(bundle::BundleArgs),
    Unbundle(bundle::UnbundleArgs),
    Run(run::RunArgs),
}

/// How to reach the registry: shared by every command that does.
#[derive(Args, Clone, Debug)]
pub struct RegistryArgs {
    /// Accept any TLS certificate and fall back to plain http (loopback
    /// registries get the http fallback without this).
    #[arg(long)]
    insecure: bool,

    /// Platform to choose from a multi-platform image: OS/ARCH[/VARIANT]
    /// (default: this machine's); a single-platform image of another one is refused.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    platform: Option<String>,

    /// Seconds to wait for a registry's answer or for the next bytes of a body.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    timeout: u64,

    /// Extra attempts after a transient failure (reset, timeout, 429, 5xx).
    #[arg(long, value_name = "N", default_value_t = 4)]
    retries: u32,
}

impl RegistryArgs {
    /// The same options as command-line arguments, for a child lazypull.
    fn to_argv(&self) -> Vec<String> {
        let mut argv = vec![
            format!("--timeout={}", self.timeout),
            format!("--retries={}", self.retries),
        ];
        if self.insecure {
            argv.push("--insecure".into());
        }
        if let Some(p) = &self.platform {
            argv.push(format!("--platform={p}"));
        }
        argv
    }

    fn options(&self) -> TransportOptions {
        TransportOptions {
            insecure: self.insecure,
            timeout: Duration::from_secs(self.timeout.max(1)),
            retries: self.retries,
            ..TransportOptions::default()
        }
    }

    /// Parses the reference and the platform before any network traffic,
    /// then resolves the image.
    fn resolve(&self, reference: &str) -> anyhow::Result<(RegistryClient, ResolvedImage)> {
        let reference: Reference = reference.parse()?;
        let platform = self
            .platform
            .as_deref()
            .map(str::parse::<Platform>)
            .transpose()?;
        let client = RegistryClient::connect(&reference, &self.options())?;
        let image = client.resolve(platform.as_ref())?;
        Ok((client, image))
    }
}

pub fn main() -> ExitCode {
    let mut argv: Vec<OsString> = std::env::args_os().collect();
    if argv.first().is_some_and(|a| helper::invoked_as_helper(a)) {
        argv = match helper::translate(&argv[1..]) {
            Ok(Some(argv)) => argv,
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => return failure(&e),
        };
    }
    let cli = Cli::parse_from(&argv);
    init_logging(cli.verbose);
    let done = |r: anyhow::Result<()>| r.map(|()| ExitCode::SUCCESS);
    let result = match cli.command {
        Command::Inspect(args) => done(inspect::run(&args)),
        Command::Ls(args) => done(ls::run(&args)),
        Command::Index(args) => done(index::run(&args)),
        Command::Mount(args) => done(mount::run(&args, argv.split_off(1))),
        Command::Umount(args) => done(mount::umount(&args)),
        Command::Status(args) => done(mount::status(&args)),
        Command::Cache(args) => done(cache::run(&args)),
        Command::Bundle(args) => done(bundle::run(&args)),
        Command::Unbundle(args) => done(bundle::unbundle(&args)),
        // The container's exit status is the command's.
        Command::Run(args) => run::run(&args),
    };
    result.unwrap_or_else(|e| failure(&e))
}

fn failure(e: &anyhow::Error) -> ExitCode {
    eprintln!("lazypull: error: {}", error_message(e));
    ExitCode::FAILURE
}

/// The error and its causes on one line. Our errors already name their
/// source in their own message, so a cause is added only when it says
/// something new (`{:#}` would repeat it).
fn error_message(e: &anyhow::Error) -> String {
    let mut message = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
    }
    message
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "lazypull=info",
        _ => "lazypull=debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_message_names_each_cause_once() {
        let e = anyhow::Error::from("x/y@sha256:abc".parse::<Reference>().unwrap_err());
        let message = error_message(&e);
        assert_eq!(message.matches("invalid digest").count(), 1, "{message}");
        let e = anyhow::Error::from(std::io::Error::other("disk on fire")).context("writing");
        assert_eq!(error_message(&e), "writing: disk on fire");
    }
}
