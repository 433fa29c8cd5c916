//! GoBGP's v3 API (package `apipb`), generated at build time from
//! `proto/gobgp` (see `build.rs`): messages and the `GobgpApi` client.
#![allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]

tonic::include_proto!("apipb");
