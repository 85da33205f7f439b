//! `lazypull ls`: the merged tree of an image, from its layer indexes.

use std::io::Write;

use clap::Args;

use super::RegistryArgs;
use super::layers::{CacheArgs, IndexedImage};
use crate::layer::seek::DEFAULT_SPAN;
use crate::tree::{LsRecord, Node, NodeKind};

#[derive(Args)]
#[command(
    about = "List the files of an image without pulling it (builds and caches the layer indexes first)",
    after_help = "Examples:\n  lazypull ls alpine /etc\n  lazypull ls -R localhost:5000/team/app:1.4 /usr/bin\n  \
                  lazypull ls -R --json localhost:5000/team/app:1.4 | jq -r 'select(.type==\"file\") | .path'"
)]
pub struct LsArgs {
    #[command(flatten)]
    registry: RegistryArgs,

    #[command(flatten)]
    cache: CacheArgs,

    /// List the whole subtree.
    #[arg(short = 'R', long)]
    recursive: bool,

    /// One JSON object per line: path, type, mode, uid, gid, size, mtime, link, rdev, nlink, inode, xattrs.
    #[arg(long)]
    json: bool,

    /// Image reference: [REGISTRY/]NAME[:TAG][@DIGEST]
    reference: String,

    /// Path inside the image.
    #[arg(default_value = "/")]
    path: String,
}

pub fn run(args: &LsArgs) -> anyhow::Result<()> {
    let image = IndexedImage::load(&args.registry, &args.cache, &args.reference, DEFAULT_SPAN)?;
    let tree = image.tree()?;
    let path = args.path.as_bytes();
    let mut walk = tree.walk_from(path).ok_or_else(|| {
        anyhow::anyhow!(
            "{}: no such file or directory in {}",
            args.path,
            image.image.reference
        )
    })?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.recursive {
        for (path, node) in walk {
            print_entry(&mut out, &path, node, args.json)?;
        }
    } else if let Some((path, node)) = walk.next() {
        // Like ls: a directory's children, or the entry itself.
        match node.children() {
            Some(children) if node.is_dir() => {
                let prefix = if path == b"/" { Vec::new() } else { path };
                for child in children {
                    if let Some(kid) = tree.get(child.ino) {
                        let kid_path = [prefix.as_slice(), b"/", &child.name].concat();
                        print_entry(&mut out, &kid_path, kid, args.json)?;
                    }
                }
            }
            _ => print_entry(&mut out, &path, node, args.json)?,
        }
    }
    out.flush()?;
    Ok(())
}

fn print_entry(out: &mut impl Write, path: &[u8], node: &Node, json: bool) -> anyhow::Result<()> {
    let record = LsRecord::new(path, node);
    if json {
        serde_json::to_writer(&mut *out, &record)?;
        writeln!(out)?;
        return Ok(());
    }
    let size = match node.rdev() {
        Some((major, minor)) => format!("{major}, {minor}"),
        None => node.size().to_string(),
    };
    write!(
        out,
        "{}{} {:>3} {:>5} {:>5} {:>10} {} {}",
        type_char(&node.kind),
        mode_string(node.mode),
        node.nlink,
        node.uid,
        node.gid,
        size,
        format_time(node.mtime.sec),
        record.path
    )?;
    if let Some(link) = &record.link {
        write!(out, " -> {link}")?;
    }
    writeln!(out)?;
    Ok(())
}

fn type_char(kind: &NodeKind) -> char {
    match kind {
        NodeKind::File(_) => '-',
        NodeKind::Dir(_) => 'd',
        NodeKind::Symlink(_) => 'l',
        NodeKind::Char { .. } => 'c',
        NodeKind::Block { .. } => 'b',
        NodeKind::Fifo => 'p',
    }
}

/// `rwsr-xr-t` style permission string.
fn mode_string(mode: u32) -> String {
    let bit = |m: u32, c: char| if mode & m != 0 { c } else { '-' };
    let exec = |x: u32, special: u32, set: char| match (mode & x != 0, mode & special != 0) {
        (true, true) => set,
        (false, true) => set.to_ascii_uppercase(),
        (true, false) => 'x',
        (false, false) => '-',
    };
    [
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        exec(0o100, 0o4000, 's'),
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        exec(0o010, 0o2000, 's'),
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        exec(0o001, 0o1000, 't'),
    ]
    .iter()
    .collect()
}

/// `YYYY-MM-DD HH:MM` in UTC.
fn format_time(secs: i64) -> String {
    let (year, month, day, hour, minute, _) = crate::time::utc(secs);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_read_like_ls() {
        assert_eq!(mode_string(0o755), "rwxr-xr-x");
        assert_eq!(mode_string(0o4755), "rwsr-xr-x");
        assert_eq!(mode_string(0o2644), "rw-r-Sr--");
        assert_eq!(mode_string(0o1777), "rwxrwxrwt");
    }

    #[test]
    fn times_are_utc_dates() {
        assert_eq!(format_time(0), "1970-01-01 00:00");
        assert_eq!(format_time(1_700_000_000), "2023-11-14 22:13");
        assert_eq!(format_time(951_782_400), "2000-02-29 00:00");
    }
}
