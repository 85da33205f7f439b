//! The deflate window a gzip seek point carries, kept compressed.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::SeekError;
use super::zlib::WINDOW_SIZE;

/// Windows are most of an index's size, and tar data compresses well: a
/// fast zstd level keeps them small without slowing the indexing pass.
const WINDOW_LEVEL: i32 = 3;

/// Up to 32 KiB of uncompressed history, stored zstd-compressed.
///
/// Serialized as bytes in binary formats and as base64 in human-readable
/// ones (JSON), so an index stays compact either way.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Window(pub(super) Vec<u8>);

impl Window {
    pub(super) fn compress(raw: &[u8]) -> Result<Self, SeekError> {
        ::zstd::bulk::compress(raw, WINDOW_LEVEL)
            .map(Self)
            .map_err(|e| SeekError::Codec(format!("compressing a window: {e}")))
    }

    /// The uncompressed window; errors name what is wrong with it.
    pub(super) fn decompress(&self) -> Result<Vec<u8>, String> {
        ::zstd::bulk::decompress(&self.0, WINDOW_SIZE)
            .map_err(|e| format!("undecodable window: {e}"))
    }

    /// Size of the stored (compressed) window in bytes.
    pub fn stored_len(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Debug for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Window({} bytes stored)", self.0.len())
    }
}

impl Serialize for Window {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&STANDARD.encode(&self.0))
        } else {
            serializer.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            deserializer.deserialize_str(WindowVisitor)
        } else {
            deserializer.deserialize_bytes(WindowVisitor)
        }
    }
}

struct WindowVisitor;

impl<'de> Visitor<'de> for WindowVisitor {
    type Value = Window;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a compressed window as bytes or base64")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Window, E> {
        STANDARD.decode(v).map(Window).map_err(E::custom)
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Window, E> {
        Ok(Window(v.to_vec()))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Window, E> {
        Ok(Window(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Window, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(WINDOW_SIZE));
        while let Some(b) = seq.next_element::<u8>()? {
            bytes.push(b);
        }
        Ok(Window(bytes))
    }
}
