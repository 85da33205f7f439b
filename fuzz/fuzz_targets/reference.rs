//! Arbitrary strings as image references and digests. A parsed reference prints as a reference
//! that parses to the same image.
#![no_main]

use lazypull::digest::Digest;
use lazypull::reference::Reference;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(digest) = text.parse::<Digest>() {
        assert_eq!(digest.to_string().parse::<Digest>().ok(), Some(digest));
    }
    let Ok(reference) = text.parse::<Reference>() else {
        return;
    };
    let _ = (reference.api_host(), reference.manifest_key());
    let printed = reference.to_string();
    let again = printed
        .parse::<Reference>()
        .unwrap_or_else(|e| panic!("{text:?} printed as {printed:?}, which does not parse: {e}"));
    assert_eq!(
        again.registry, reference.registry,
        "{text:?} -> {printed:?}"
    );
    assert_eq!(
        again.repository, reference.repository,
        "{text:?} -> {printed:?}"
    );
    assert_eq!(again.digest, reference.digest, "{text:?} -> {printed:?}");
    assert_eq!(
        again.tag_or_default(),
        reference.tag_or_default(),
        "{text:?} -> {printed:?}"
    );
});
