//! Test peers shared by the integration tests (`tests/`) and the benchmarks (`bench/`): never
//! part of the server.

pub mod oidc;
pub mod pg;
