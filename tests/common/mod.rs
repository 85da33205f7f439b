//! Integration-test harness: real `docker-registry` processes (plain, TLS, htpasswd,
//! token auth), an in-process token server, and images built in memory and pushed
//! through the registry API.
//!
//! Every test binary compiles this module and uses a different part of it.
#![allow(dead_code)]

pub mod cli;
pub mod cold;
pub mod debian;
pub mod foreign;
pub mod image;
pub mod mount;
pub mod pki;
pub mod proxy;
pub mod registry;
pub mod setuid;
pub mod tarball;
pub mod tmpfs;
pub mod token;
pub mod unpacked;
