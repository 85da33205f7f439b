//! Blob bytes over HTTP: Range reads for random access, and a resumable
//! stream for whole-blob downloads.

use std::io::{self, Read};
use std::sync::Arc;

use reqwest::blocking::Response;
use reqwest::header::{CONTENT_RANGE, HeaderMap, HeaderValue, RANGE};
use reqwest::{StatusCode, Url};

use super::error::RegistryError;
use super::transport::{Transport, with_root_cause};
use crate::blob::{BlobReader, RangeSource, clamp_len};
use crate::digest::Digest;

/// Reads a whole (small) body of metadata, refusing more than `max` bytes;
/// its request was made with [`Transport::get_metadata`].
pub(super) fn read_body(
    resp: Response,
    max: u64,
    what: &str,
    url: &Url,
    transport: &Transport,
) -> Result<Vec<u8>, RegistryError> {
    if let Some(len) = resp.content_length().filter(|l| *l > max) {
        return Err(RegistryError::Invalid {
            reference: url.to_string(),
            what: what.to_string(),
            detail: format!("{len} bytes is more than the {max} allowed"),
        });
    }
    let mut body = Vec::new();
    resp.take(max + 1)
        .read_to_end(&mut body)
        .map_err(|e| transport.too_slow(body_error(e, what, url, transport)))?;
    if body.len() as u64 > max {
        return Err(RegistryError::Invalid {
            reference: url.to_string(),
            what: what.to_string(),
            detail: format!("more than the {max} bytes allowed"),
        });
    }
    Ok(body)
}

/// A broken or stalled body is transient: the request may be repeated.
fn body_error(e: io::Error, what: &str, url: &Url, transport: &Transport) -> RegistryError {
    if e.kind() == io::ErrorKind::TimedOut
        || e.get_ref()
            .and_then(|i| i.downcast_ref::<reqwest::Error>())
            .is_some_and(|r| r.is_timeout())
    {
        return RegistryError::Timeout {
            host: transport.host().to_string(),
            what: format!("{what} body"),
            timeout: transport.timeout(),
        };
    }
    RegistryError::Transfer {
        what: what.to_string(),
        url: url.to_string(),
        detail: with_root_cause(&e),
    }
}

fn range_header(start: u64, end_inclusive: Option<u64>) -> HeaderMap {
    let value = match end_inclusive {
        Some(end) => format!("bytes={start}-{end}"),
        None => format!("bytes={start}-"),
    };
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(RANGE, v);
    }
    headers
}

/// `bytes a-b/total` → (a, b).
fn content_range(resp: &Response) -> Option<(u64, u64)> {
    let value = resp.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    let range = value.strip_prefix("bytes ")?.split('/').next()?;
    let (a, b) = range.split_once('-')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

/// Sends a Range request for `start..` (to `end_inclusive` if given) and
/// returns a body positioned at `start`, whether the registry honoured the
/// Range (206) or sent the whole blob (200), plus the last byte it covers.
fn get_from(
    transport: &Transport,
    url: &Url,
    start: u64,
    end_inclusive: Option<u64>,
    size: u64,
    what: &str,
) -> Result<(Box<dyn Read + Send>, u64), RegistryError> {
    let mut resp = transport.get(url, range_header(start, end_inclusive), what)?;
    let last = end_inclusive.unwrap_or(size.saturating_sub(1));
    match resp.status() {
        StatusCode::PARTIAL_CONTENT => match content_range(&resp) {
            Some((a, b)) if a == start && b >= a && b <= last => Ok((Box::new(resp), b)),
            other => Err(RegistryError::Transfer {
                what: what.to_string(),
                url: url.to_string(),
                detail: format!(
                    "asked for bytes {start}-{last}, the answer's Content-Range is {}",
                    other.map_or("missing or invalid".to_string(), |(a, b)| format!(
                        "{a}-{b}"
                    ))
                ),
            }),
        },
        StatusCode::OK => {
            tracing::debug!(%url, start, "registry ignored Range, skipping to the offset");
            io::copy(&mut (&mut resp).take(start), &mut io::sink())
                .map_err(|e| body_error(e, what, url, transport))?;
            Ok((Box::new(resp), last))
        }
        status => Err(RegistryError::Http {
            what: what.to_string(),
            url: url.to_string(),
            status: status.as_u16(),
            detail: "unexpected answer to a Range request".into(),
        }),
    }
}

pub(super) fn blob_url(transport: &Transport, digest: &Digest) -> Result<Url, RegistryError> {
    transport.url(&format!("v2/{}/blobs/{digest}", transport.repository()))
}

pub(super) fn map_blob_404(
    transport: &Transport,
    digest: &Digest,
    e: RegistryError,
) -> RegistryError {
    match e {
        RegistryError::Http { status: 404, .. } => RegistryError::BlobNotFound {
            host: transport.host().to_string(),
            repository: transport.repository().to_string(),
            digest: digest.clone(),
        },
        e => e,
    }
}

/// Random access to one blob through Range requests.
pub struct HttpBlob {
    transport: Arc<Transport>,
    digest: Digest,
    size: u64,
}

impl HttpBlob {
    pub(super) fn new(transport: Arc<Transport>, digest: Digest, size: u64) -> Self {
        Self {
            transport,
            digest,
            size,
        }
    }

    fn read_range(&self, offset: u64, len: usize) -> Result<Vec<u8>, RegistryError> {
        let t = &self.transport;
        let url = blob_url(t, &self.digest)?;
        let started = std::time::Instant::now();
        let mut out = Vec::with_capacity(len);
        // A registry may answer a Range with fewer bytes than asked: ask again
        // for the rest until the range is complete.
        while out.len() < len {
            let start = offset + out.len() as u64;
            let last = offset + len as u64 - 1;
            // Names the layer and the bytes in every retry and failure it logs.
            let what = format!("blob {} bytes {start}-{last}", self.digest);
            let chunk = t
                .with_retries(&what, || {
                    let (body, covered) = get_from(t, &url, start, Some(last), self.size, &what)?;
                    let want = covered - start + 1;
                    let mut chunk = Vec::with_capacity(want as usize);
                    body.take(want)
                        .read_to_end(&mut chunk)
                        .map_err(|e| body_error(e, &what, &url, t))?;
                    if (chunk.len() as u64) < want {
                        return Err(RegistryError::Transfer {
                            what: what.clone(),
                            url: url.to_string(),
                            detail: format!("body ended after {} of {want} bytes", chunk.len()),
                        });
                    }
                    Ok(chunk)
                })
                .map_err(|e| map_blob_404(t, &self.digest, e))?;
            out.extend_from_slice(&chunk);
        }
        tracing::debug!(blob = %self.digest, offset, len, elapsed = ?started.elapsed(), "ranged read");
        Ok(out)
    }
}

impl BlobReader for HttpBlob {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let len = clamp_len(self.size, offset, len);
        if len == 0 {
            return Ok(Vec::new());
        }
        self.read_range(offset, len).map_err(io::Error::other)
    }
}

impl RangeSource for HttpBlob {
    fn stream(&self, start: u64, end: u64) -> io::Result<Box<dyn Read + Send>> {
        let stream = BlobStream::open(
            self.transport.clone(),
            self.digest.clone(),
            self.size,
            start,
            end,
        )
        .map_err(io::Error::other)?;
        Ok(Box::new(stream))
    }
}

/// A whole blob as a `Read`, resuming with a Range request from where it
/// broke off when a connection fails, so a long download survives resets
/// and token expiry. Reads stop at the descriptor's size.
pub struct BlobStream {
    transport: Arc<Transport>,
    url: Url,
    digest: Digest,
    size: u64,
    pos: u64,
    /// Where the stream stops (exclusive): the blob's size for a whole blob.
    end: u64,
    body: Option<Box<dyn Read + Send>>,
    failures: u32,
}

impl BlobStream {
    /// Streams bytes `start..end` of the blob (`0..size` for all of it).
    pub(super) fn open(
        transport: Arc<Transport>,
        digest: Digest,
        size: u64,
        start: u64,
        end: u64,
    ) -> Result<Self, RegistryError> {
        let url = blob_url(&transport, &digest)?;
        let mut stream = Self {
            transport,
            url,
            digest,
            size,
            pos: start,
            end: end.min(size),
            body: None,
            failures: 0,
        };
        stream.reconnect()?;
        Ok(stream)
    }

    fn reconnect(&mut self) -> Result<(), RegistryError> {
        let t = &self.transport;
        let what = format!("blob {}", self.digest);
        let (pos, end, size) = (self.pos, self.end, self.size);
        let body = t
            .with_retries(&what, || {
                if pos == 0 && end == size {
                    let resp = t.get(&self.url, HeaderMap::new(), &what)?;
                    Ok(Box::new(resp) as Box<dyn Read + Send>)
                } else {
                    let last = end.checked_sub(1).filter(|_| end < size);
                    get_from(t, &self.url, pos, last, size, &what).map(|(body, _)| body)
                }
            })
            .map_err(|e| map_blob_404(t, &self.digest, e))?;
        self.body = Some(body);
        Ok(())
    }
}

impl Read for BlobStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let want = clamp_len(self.end, self.pos, buf.len() as u64);
            if want == 0 {
                return Ok(0);
            }
            let body = match self.body.as_mut() {
                Some(b) => b,
                None => {
                    self.reconnect().map_err(io::Error::other)?;
                    continue;
                }
            };
            let failure = match body.read(&mut buf[..want]) {
                Ok(0) => format!("body ended at byte {} of {}", self.pos, self.end),
                Ok(n) => {
                    self.pos += n as u64;
                    self.failures = 0;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => with_root_cause(&e),
            };
            self.body = None;
            self.failures += 1;
            let what = format!("blob {}", self.digest);
            if self.failures > self.transport.retries() {
                return Err(io::Error::other(RegistryError::Transfer {
                    what,
                    url: self.url.to_string(),
                    detail: format!("{failure}; gave up after {} retries", self.failures - 1),
                }));
            }
            tracing::warn!(blob = %self.digest, at = self.pos, retry = self.failures,
                error = %failure, "blob download broke off, resuming");
        }
    }
}
