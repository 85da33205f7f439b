//! lazypull: mount an OCI image straight out of a registry.
//!
//! Data flows one way: `reference` → `registry` → `layer` → `tree` → `fs`.
//! `blob` is the seam between the registry and everything above it; beside
//! the pipeline stand `cache` (files on disk, chunks, spans in memory),
//! `materialize` (layer states, background download and verification),
//! `foreign` (readers of the eStargz, zstd:chunked and SOCI indexes other tools publish),
//! `runtime` (OCI bundles) and `cli`. See ARCHITECTURE.md.

pub mod blob;
pub mod cache;
pub mod cli;
pub mod digest;
pub mod foreign;
pub mod fs;
pub mod layer;
pub mod materialize;
pub mod reference;
pub mod registry;
pub mod runtime;
pub mod time;
pub mod tree;
