//! Helpers shared by the fuzz targets.

const BLOCK: usize = 512;

/// Rewrites the checksum of every header block a tar reader reaches by following the size
/// fields (zero blocks are stepped over, so tars laid end to end are covered too). Without this
/// nearly every mutation of a header is refused at its checksum and the fuzzer never gets past
/// it. Stops at the first size field that is not plain octal.
pub fn fix_tar_checksums(tar: &mut [u8]) {
    let mut at = 0usize;
    while let Some(header) = tar.get_mut(at..at + BLOCK) {
        if header.iter().all(|&b| b == 0) {
            at += BLOCK;
            continue;
        }
        header[148..156].fill(b' ');
        let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
        header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let Some(size) = octal(&header[124..136]) else {
            return;
        };
        let Some(next) = size
            .div_ceil(BLOCK as u64)
            .checked_mul(BLOCK as u64)
            .and_then(|data| usize::try_from(data).ok())
            .and_then(|data| (at + BLOCK).checked_add(data))
        else {
            return;
        };
        at = next;
    }
}

fn octal(field: &[u8]) -> Option<u64> {
    let digits = field
        .iter()
        .skip_while(|&&b| b == b' ')
        .take_while(|&&b| (b'0'..=b'7').contains(&b));
    digits.fold(Some(0u64), |n, &d| {
        n?.checked_mul(8)?.checked_add(u64::from(d - b'0'))
    })
}
