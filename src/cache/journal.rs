//! A chunk file's journal: which chunks were written, each with the sha256
//! of its bytes, so a daemon that was stopped or killed resumes a layer's
//! download where it left off.
//!
//! The journal is not trusted on its own: a record only names a candidate,
//! and the chunk is kept after a restart only if the record and its bytes
//! on disk both match the sha256 the layer index holds for it (a kill or
//! power loss may leave a record whose data never reached the disk). Records are fixed-size slots with a
//! checksum, written in place (never appended blindly), so a torn or short
//! write damages one slot and the next record overwrites it.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest as _, Sha256};

/// Chunk number (u64 LE), sha256 of the chunk, first 8 bytes of the sha256
/// of those 40 bytes.
const RECORD: usize = 48;

pub use crate::blob::ChunkSum as Hash;

pub struct Journal {
    path: PathBuf,
    /// The file and the slot the next record goes to.
    state: Mutex<(File, u64)>,
}

impl Journal {
    /// Opens the journal at `path` for a blob of `chunks` chunks: the hash
    /// recorded last for each chunk, if any.
    pub fn open(path: &Path, chunks: usize) -> io::Result<(Self, Vec<Option<Hash>>)> {
        let file = super::private_file()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let bytes = std::fs::read(path)?;
        let mut recorded = vec![None; chunks];
        for slot in bytes.chunks_exact(RECORD) {
            if let Some((chunk, hash)) = decode(slot)
                && let Some(entry) = usize::try_from(chunk)
                    .ok()
                    .and_then(|c| recorded.get_mut(c))
            {
                *entry = Some(hash);
            }
        }
        // A torn last slot is overwritten by the next record.
        let next = (bytes.len() / RECORD) as u64;
        let journal = Self {
            path: path.to_path_buf(),
            state: Mutex::new((file, next)),
        };
        Ok((journal, recorded))
    }

    /// Records that chunk `chunk` holds bytes hashing to `hash`. Call it
    /// only after the bytes were written to the chunk file.
    pub fn record(&self, chunk: usize, hash: &Hash) -> io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (file, next) = &mut *state;
        file.write_all_at(&encode(chunk as u64, hash), *next * RECORD as u64)?;
        // Only a complete write moves on; a failed one's slot is reused.
        *next += 1;
        Ok(())
    }

    /// Forgets every record.
    pub fn clear(&self) -> io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.0.set_len(0)?;
        state.1 = 0;
        Ok(())
    }

    /// Deletes the journal file (its blob is done or thrown away).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn check(head: &[u8]) -> [u8; 8] {
    let digest = Sha256::digest(head);
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

fn encode(chunk: u64, hash: &Hash) -> [u8; RECORD] {
    let mut out = [0u8; RECORD];
    out[..8].copy_from_slice(&chunk.to_le_bytes());
    out[8..40].copy_from_slice(hash);
    let sum = check(&out[..40]);
    out[40..].copy_from_slice(&sum);
    out
}

fn decode(slot: &[u8]) -> Option<(u64, Hash)> {
    let (head, sum) = slot.split_at_checked(40)?;
    if check(head) != sum {
        return None;
    }
    let chunk = u64::from_le_bytes(head[..8].try_into().ok()?);
    let hash = head[8..40].try_into().ok()?;
    Some((chunk, hash))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::chunk_sum as hash;

    #[test]
    fn records_survive_a_reopen_and_the_last_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let (journal, recorded) = Journal::open(&path, 4).unwrap();
        assert_eq!(recorded, vec![None; 4]);
        journal.record(1, &hash(b"one")).unwrap();
        journal.record(3, &hash(b"three")).unwrap();
        journal.record(1, &hash(b"uno")).unwrap();
        drop(journal);
        let (_, recorded) = Journal::open(&path, 4).unwrap();
        assert_eq!(
            recorded,
            vec![None, Some(hash(b"uno")), None, Some(hash(b"three"))]
        );
    }

    #[test]
    fn torn_damaged_and_foreign_records_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let (journal, _) = Journal::open(&path, 4).unwrap();
        journal.record(0, &hash(b"zero")).unwrap();
        journal.record(1, &hash(b"one")).unwrap();
        // A chunk the blob does not have (another chunk size, say).
        journal.record(9, &hash(b"nine")).unwrap();
        drop(journal);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[RECORD + 20] ^= 1;
        // Half of a record, as a kill in the middle of a write leaves it.
        bytes.extend_from_slice(&encode(2, &hash(b"two"))[..30]);
        std::fs::write(&path, &bytes).unwrap();

        let (journal, recorded) = Journal::open(&path, 4).unwrap();
        assert_eq!(recorded, vec![Some(hash(b"zero")), None, None, None]);
        // The next record takes the torn slot and is read back whole.
        journal.record(2, &hash(b"two")).unwrap();
        drop(journal);
        let (journal, recorded) = Journal::open(&path, 4).unwrap();
        assert_eq!(recorded[2], Some(hash(b"two")));
        journal.clear().unwrap();
        let (_, recorded) = Journal::open(&path, 4).unwrap();
        assert_eq!(recorded, vec![None; 4]);
    }
}
