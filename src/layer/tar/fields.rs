//! Decoding of one header's fields and of PAX records, as Go's archive/tar decodes them.

use super::{Mtime, PaxRecords};

/// The name a header holds itself. A GNU header whose access or change time is no number is read
/// as having a USTAR prefix there, as Go's reader (and so umoci) does: Go writers before 1.8 put
/// one in GNU headers by mistake.
pub(super) fn header_name(header: &tar::Header) -> Vec<u8> {
    let name = header.path_bytes().into_owned();
    let Some(gnu) = header.as_gnu() else {
        return name;
    };
    let garbled = |time: &[u8; 12]| time[0] != 0 && parse_numeric(time).is_none();
    if !garbled(&gnu.atime) && !garbled(&gnu.ctime) {
        return name;
    }
    let prefix = until_nul(&header.as_bytes()[345..500]);
    if prefix.is_empty() || !prefix.is_ascii() {
        return name;
    }
    [prefix, b"/", &name].concat()
}

/// Whether a header block's checksum field matches the sum of its bytes (the field counted as
/// spaces), taken unsigned or signed as old writers did; GNU tar and Go's reader take both.
pub(super) fn checksum_ok(header: &tar::Header) -> bool {
    let Some(stored) = parse_octal(&header.as_old().cksum).and_then(|s| i64::try_from(s).ok())
    else {
        return false;
    };
    let field = |i: usize, b: u8| if (148..156).contains(&i) { b' ' } else { b };
    let bytes = header.as_bytes().iter().enumerate();
    let unsigned: i64 = bytes.clone().map(|(i, &b)| i64::from(field(i, b))).sum();
    let signed: i64 = bytes.map(|(i, &b)| i64::from(field(i, b) as i8)).sum();
    stored == unsigned || stored == signed
}

pub(super) fn until_nul(data: &[u8]) -> &[u8] {
    data.iter()
        .position(|&b| b == 0)
        .map_or(data, |end| &data[..end])
}

/// PAX records: `<len> <key>=<value>\n`, where `len` counts the whole record.
pub(super) fn parse_pax(mut data: &[u8]) -> Result<PaxRecords, String> {
    let mut records = Vec::new();
    while !data.is_empty() {
        let bad = || "malformed PAX record".to_string();
        let space = data.iter().position(|&b| b == b' ').ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(bad());
        }
        let record = &data[space + 1..len - 1];
        let eq = record.iter().position(|&b| b == b'=').ok_or_else(bad)?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        // Go's reader refuses these records (and GNU tar most of them): a NUL in a key, or in a
        // value that names something.
        if key.is_empty() {
            return Err("PAX record with an empty key".into());
        }
        let names = matches!(key, b"path" | b"linkpath" | b"uname" | b"gname");
        if key.contains(&0) || (names && value.contains(&0)) {
            return Err(format!(
                "PAX record `{}` holds a NUL byte",
                key.escape_ascii()
            ));
        }
        records.push((key.to_vec(), value.to_vec()));
        data = &data[len..];
    }
    Ok(records)
}

/// Seconds with an optional fraction, possibly negative (PAX `mtime`).
pub(super) fn parse_pax_time(value: &[u8]) -> Option<Mtime> {
    let text = std::str::from_utf8(value).ok()?;
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(frac) {
        return None;
    }
    let sec: i64 = whole.parse().ok()?;
    let mut nsec: u32 = 0;
    for (i, digit) in frac.bytes().take(9).enumerate() {
        nsec += u32::from(digit - b'0') * 10u32.pow(8 - i as u32);
    }
    if !negative {
        return Some(Mtime { sec, nsec });
    }
    // -1.25 is 1.25 s before the epoch: sec -2, nsec 750_000_000.
    Some(if nsec == 0 {
        Mtime { sec: -sec, nsec }
    } else {
        Mtime {
            sec: -sec - 1,
            nsec: 1_000_000_000 - nsec,
        }
    })
}
/// A numeric header field as Go's reader reads it: base-256 (two's complement) when the high
/// bit of its first byte is set, else octal. The whole field counts (the `tar` crate reads only
/// the last 8 bytes of a base-256 one).
pub(super) fn parse_numeric(field: &[u8]) -> Option<i128> {
    let Some(&first) = field.first().filter(|&&b| b & 0x80 != 0) else {
        return parse_octal(field).map(i128::from);
    };
    if field.len() > 12 {
        return None;
    }
    // Bit 6 of the first byte is the sign; the bits below it start the number.
    let negative = first & 0x40 != 0;
    let start = i128::from(first & 0x3f) - if negative { 0x40 } else { 0 };
    Some(
        field[1..]
            .iter()
            .fold(start, |n, &b| (n << 8) | i128::from(b)),
    )
}

/// An octal field between NULs and spaces, up to a NUL inside; blank reads as 0.
fn parse_octal(field: &[u8]) -> Option<u64> {
    let pad = |b: &u8| *b == 0 || *b == b' ';
    let start = field.iter().position(|b| !pad(b)).unwrap_or(field.len());
    let end = field.iter().rposition(|b| !pad(b)).map_or(start, |i| i + 1);
    let digits = until_nul(&field[start..end]);
    if !digits.iter().all(|b| (b'0'..=b'7').contains(b)) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(8)?.checked_add(u64::from(d - b'0'))
    })
}

pub(super) fn parse_decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}
