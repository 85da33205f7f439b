//! OCI distribution client: manifests, configs and blobs from a registry.
