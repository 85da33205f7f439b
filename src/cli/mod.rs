//! The command line: the only place that uses `anyhow`.

mod index;
mod inspect;
mod layers;
mod ls;

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
}

/// How to reach the registry: shared by every command that does.
#[derive(Args, Clone, Debug)]
pub struct RegistryArgs {
    /// Accept any TLS certificate and fall back to plain http (loopback
    /// registries get the http fallback without this).
    #[arg(long)]
    insecure: bool,

    /// Platform to choose from a multi-platform image: OS/ARCH[/VARIANT]
    /// (default: this machine's).
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
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Inspect(args) => inspect::run(&args),
        Command::Ls(args) => ls::run(&args),
        Command::Index(args) => index::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lazypull: error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and each of its causes, once: most errors here already say their source's message,
/// which `{:#}` would repeat after them.
fn describe(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
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

    #[derive(Debug, thiserror::Error)]
    #[error("layer L: {source}")]
    struct Embeds {
        source: std::io::Error,
    }

    #[test]
    fn causes_are_said_once() {
        let io = || std::io::Error::other("stream cut short");
        let embedded = anyhow::Error::new(Embeds { source: io() });
        assert_eq!(describe(&embedded), "layer L: stream cut short");
        let bare = anyhow::Error::new(io()).context("reading layer L");
        assert_eq!(describe(&bare), "reading layer L: stream cut short");
    }
}
