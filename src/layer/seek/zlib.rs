//! A safe wrapper around one zlib inflate stream (libz-rs-sys).
//!
//! flate2's safe API hides block boundaries, pending bits and the window,
//! which seek points need, so this is the one place of the crate that talks to
//! the raw zlib API. Every `unsafe` block lives here; the rest of the seek
//! module sees only [`Inflater`].

use std::ffi::{CStr, c_int, c_uint};

use libz_rs_sys as z;

/// Window bits for a gzip member (15 + 16: gzip header and trailer checked).
pub(super) const GZIP_WINDOW_BITS: c_int = 31;
/// Window bits for a raw deflate stream (no header, no trailer).
pub(super) const RAW_WINDOW_BITS: c_int = -15;
/// The largest deflate window, and so the largest dictionary.
pub(super) const WINDOW_SIZE: usize = 32 * 1024;

/// How far one call to [`Inflater::inflate`] went.
#[derive(Debug, Clone, Copy)]
pub(super) struct Step {
    pub consumed: usize,
    pub produced: usize,
    pub status: Status,
    /// zlib's `data_type`: unused bits of the last input byte (low 6 bits),
    /// +64 while in the last block, +128 at a block boundary.
    data_type: c_int,
}

impl Step {
    /// At a boundary that a raw inflate can resume from: the end of the
    /// gzip header or of a block that is not the member's last. Returns the
    /// number of bits of the last consumed byte that belong to what follows.
    pub fn resumable_boundary(&self) -> Option<u8> {
        let at_boundary = self.data_type & 128 != 0 && self.data_type & 64 == 0;
        let bits = self.data_type & 63;
        // inflatePrime takes the bits from one byte only: a boundary that
        // left more than 7 bits buffered is skipped rather than recorded.
        (at_boundary && bits < 8).then_some(bits as u8)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    /// Progress, or no progress possible without more input or output space.
    Ok,
    /// The end of the deflate stream (and, in gzip mode, of a checked trailer).
    StreamEnd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flush {
    None,
    /// Return at every deflate block boundary too.
    Block,
}

/// One inflate stream. The `z_stream` is boxed because zlib keeps a pointer
/// back to it in its state; it is ended on drop.
pub(super) struct Inflater {
    strm: Box<z::z_stream>,
}

// SAFETY: the stream owns its state exclusively; no pointer in it refers to
// thread-local data, and input/output pointers are only set during a call.
unsafe impl Send for Inflater {}

impl Inflater {
    pub fn new(window_bits: c_int) -> Result<Self, String> {
        let mut strm = Box::new(z::z_stream::default());
        let size = std::mem::size_of::<z::z_stream>() as c_int;
        // SAFETY: `strm` is a valid, default-initialised z_stream (allocator
        // set) and zlibVersion() is a static NUL-terminated string.
        let ret = unsafe { z::inflateInit2_(&mut *strm, window_bits, z::zlibVersion(), size) };
        if ret != z::Z_OK {
            return Err(format!("inflateInit2 failed with code {ret}"));
        }
        Ok(Self { strm })
    }

    /// Starts a new stream in the given mode, discarding any state.
    pub fn reset(&mut self, window_bits: c_int) -> Result<(), String> {
        // SAFETY: the stream was initialised by `new`.
        let ret = unsafe { z::inflateReset2(&mut *self.strm, window_bits) };
        self.check(ret, "inflateReset2")
    }

    /// Feeds the low `bits` bits of `value` before the next input byte
    /// (raw mode only, before the first inflate after init or reset).
    pub fn prime(&mut self, bits: u8, value: u8) -> Result<(), String> {
        // SAFETY: the stream was initialised by `new`.
        let ret =
            unsafe { z::inflatePrime(&mut *self.strm, c_int::from(bits), c_int::from(value)) };
        self.check(ret, "inflatePrime")
    }

    pub fn set_dictionary(&mut self, dictionary: &[u8]) -> Result<(), String> {
        let len = c_uint::try_from(dictionary.len())
            .map_err(|_| format!("dictionary of {} bytes is too large", dictionary.len()))?;
        // SAFETY: `dictionary` is a valid slice of `len` bytes for the call.
        let ret = unsafe { z::inflateSetDictionary(&mut *self.strm, dictionary.as_ptr(), len) };
        self.check(ret, "inflateSetDictionary")
    }

    /// The last (up to) 32 KiB of output of the current stream.
    pub fn dictionary(&self) -> Result<Vec<u8>, String> {
        let mut buf = vec![0u8; WINDOW_SIZE];
        let mut len: c_uint = 0;
        // SAFETY: `buf` has room for the largest window (32 KiB), which is
        // all inflateGetDictionary ever writes.
        let ret = unsafe { z::inflateGetDictionary(&*self.strm, buf.as_mut_ptr(), &mut len) };
        self.check(ret, "inflateGetDictionary")?;
        buf.truncate(len as usize);
        Ok(buf)
    }

    /// Inflates from `input` into `output`. A data error comes back as
    /// `Err` with zlib's message.
    pub fn inflate(
        &mut self,
        input: &[u8],
        output: &mut [u8],
        flush: Flush,
    ) -> Result<Step, String> {
        // zlib counts in u32: hand it at most that much per call.
        let in_len = input.len().min(c_uint::MAX as usize);
        let out_len = output.len().min(c_uint::MAX as usize);
        self.strm.next_in = input.as_ptr();
        self.strm.avail_in = in_len as c_uint;
        self.strm.next_out = output.as_mut_ptr();
        self.strm.avail_out = out_len as c_uint;
        let flush = match flush {
            Flush::None => z::Z_NO_FLUSH,
            Flush::Block => z::Z_BLOCK,
        };
        // SAFETY: next_in/avail_in and next_out/avail_out describe the two
        // live slices borrowed for the duration of this call.
        let ret = unsafe { z::inflate(&mut *self.strm, flush) };
        let step = Step {
            consumed: in_len - self.strm.avail_in as usize,
            produced: out_len - self.strm.avail_out as usize,
            status: Status::Ok,
            data_type: self.strm.data_type,
        };
        // Drop the pointers so that nothing refers to the slices after the call.
        self.strm.next_in = std::ptr::null();
        self.strm.avail_in = 0;
        self.strm.next_out = std::ptr::null_mut();
        self.strm.avail_out = 0;
        match ret {
            z::Z_OK | z::Z_BUF_ERROR => Ok(step),
            z::Z_STREAM_END => Ok(Step {
                status: Status::StreamEnd,
                ..step
            }),
            z::Z_NEED_DICT => Err("stream needs a preset dictionary".to_string()),
            _ => Err(self.message(ret)),
        }
    }

    fn check(&self, ret: c_int, what: &str) -> Result<(), String> {
        if ret == z::Z_OK {
            Ok(())
        } else {
            Err(format!("{what}: {}", self.message(ret)))
        }
    }

    fn message(&self, ret: c_int) -> String {
        if self.strm.msg.is_null() {
            return format!("zlib error code {ret}");
        }
        // SAFETY: zlib sets `msg` to a static NUL-terminated string or null.
        let msg = unsafe { CStr::from_ptr(self.strm.msg) };
        msg.to_string_lossy().into_owned()
    }
}

impl Drop for Inflater {
    fn drop(&mut self) {
        // SAFETY: the stream was initialised by `new` and is ended once.
        unsafe {
            z::inflateEnd(&mut *self.strm);
        }
    }
}
