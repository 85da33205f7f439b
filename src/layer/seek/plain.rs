//! Uncompressed layers: the blob offset is the uncompressed offset.

use std::io::Read;

use super::{Compression, SeekError, SeekIndex, read_some};
use crate::blob::BlobReader;

pub(super) struct PlainDecoder<R> {
    reader: R,
    count: u64,
}

impl<R: Read> PlainDecoder<R> {
    pub fn new(reader: R) -> Self {
        Self { reader, count: 0 }
    }

    pub fn read(&mut self, out: &mut [u8]) -> Result<usize, SeekError> {
        let n = read_some(&mut self.reader, out)?;
        self.count += n as u64;
        Ok(n)
    }

    pub fn finish(self) -> SeekIndex {
        SeekIndex {
            compression: Compression::None,
            span: 0,
            compressed_size: self.count,
            uncompressed_size: self.count,
            points: Vec::new(),
        }
    }
}

pub(super) fn read_at(
    blob: &dyn BlobReader,
    index: &SeekIndex,
    offset: u64,
    want: u64,
) -> Result<Vec<u8>, SeekError> {
    let mut bytes = blob
        .read_at(offset, want)
        .map_err(|source| SeekError::Blob {
            offset,
            len: want,
            source,
        })?;
    bytes.truncate(want as usize);
    if (bytes.len() as u64) < want {
        return Err(SeekError::Truncated {
            compression: index.compression,
            offset: offset + bytes.len() as u64,
        });
    }
    Ok(bytes)
}
