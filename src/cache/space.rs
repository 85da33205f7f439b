//! Running out of space in the cache is a local condition, not a fault of
//! the layer or the registry: callers tell it apart to report it as such.

use std::error::Error;
use std::io;

/// Whether `e`, or anything it wraps, is "no space left on device" (or an
/// exceeded disk quota).
pub fn is_disk_full(e: &(dyn Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if matches!(io.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) {
                return true;
            }
            // An io::Error's source() skips the error it wraps.
            if let Some(inner) = io.get_ref()
                && is_disk_full(inner)
            {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_enospc_however_deep() {
        let full = io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(is_disk_full(&full));
        let wrapped = io::Error::other(io::Error::other(full));
        assert!(is_disk_full(&wrapped));
        assert!(!is_disk_full(&io::Error::from_raw_os_error(libc::EIO)));
    }
}
