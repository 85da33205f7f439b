//! SOCI index manifests in the shape soci-snapshotter's `MarshalIndex` writes (no SOCI tool can
//! be installed here).

use super::*;

fn hex(n: u8) -> String {
    Digest::of(&[n]).to_string()
}

fn index(config_type: &str, subject: bool, layer_annotations: &str) -> String {
    let subject = if subject {
        format!(
            ",\"subject\":{{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
             \"digest\":\"{}\",\"size\":1234}}",
            hex(9)
        )
    } else {
        String::new()
    };
    format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
         \"config\":{{\"mediaType\":\"{config_type}\",\"digest\":\"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a\",\"size\":2}},\
         \"layers\":[{{\"mediaType\":\"application/octet-stream\",\"digest\":\"{}\",\"size\":4096,\
         \"annotations\":{{{layer_annotations}}}}}]{subject},\
         \"annotations\":{{\"com.amazon.soci.build-tool-identifier\":\"AWS SOCI CLI v0.2\"}}}}",
        hex(1)
    )
}

fn layer_annotations(layer: &str) -> String {
    format!(
        "\"{LAYER_DIGEST_ANNOTATION}\":\"{layer}\",\
         \"{LAYER_MEDIA_TYPE_ANNOTATION}\":\"application/vnd.oci.image.layer.v1.tar+gzip\""
    )
}

#[test]
fn both_versions_name_their_ztocs_and_layers() {
    let v1 = parse_index(index(INDEX_V1, true, &layer_annotations(&hex(2))).as_bytes()).unwrap();
    assert_eq!(v1.version, SociVersion::V1);
    assert_eq!(v1.subject.as_ref().map(ToString::to_string), Some(hex(9)));
    let ztoc = v1.ztoc_for(&hex(2).parse().unwrap()).unwrap();
    assert_eq!(
        (ztoc.digest.to_string(), ztoc.size, ztoc.disable_xattrs),
        (hex(1), 4096, false)
    );
    assert_eq!(
        ztoc.layer_media_type.as_deref(),
        Some("application/vnd.oci.image.layer.v1.tar+gzip")
    );
    assert!(v1.ztoc_for(&hex(3).parse().unwrap()).is_none());

    let annotations = format!(
        "{},\"{DISABLE_XATTRS_ANNOTATION}\":\"true\"",
        layer_annotations(&hex(2))
    );
    let v2 = parse_index(index(INDEX_V2, false, &annotations).as_bytes()).unwrap();
    assert_eq!((v2.version, v2.subject.clone()), (SociVersion::V2, None));
    assert!(v2.ztocs[0].disable_xattrs);

    let image: HashMap<String, String> = [(INDEX_DIGEST_ANNOTATION.to_string(), hex(7))].into();
    assert_eq!(
        index_digest(Some(&image)).unwrap().map(|d| d.to_string()),
        Some(hex(7))
    );
    assert_eq!(index_digest(None).unwrap(), None);
}

#[test]
fn what_is_not_a_usable_soci_index_is_refused() {
    let good = layer_annotations(&hex(2));
    assert!(matches!(parse_index(b"{"), Err(SociError::Manifest(_))));
    assert!(matches!(
        parse_index(index("application/vnd.oci.image.config.v1+json", true, &good).as_bytes()),
        Err(SociError::NotSoci { .. })
    ));
    assert!(matches!(
        parse_index(index(INDEX_V1, true, "").as_bytes()),
        Err(SociError::Ztoc { index: 0, .. })
    ));
    assert!(matches!(
        parse_index(index(INDEX_V1, true, &layer_annotations("sha256:abc")).as_bytes()),
        Err(SociError::Ztoc { index: 0, .. })
    ));
    let image: HashMap<String, String> =
        [(INDEX_DIGEST_ANNOTATION.to_string(), "md5:00".to_string())].into();
    assert!(matches!(
        index_digest(Some(&image)),
        Err(SociError::IndexDigest(_))
    ));
}
