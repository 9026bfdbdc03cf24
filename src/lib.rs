//! Atelier: a GraphQL API server for a Scratch-style classroom platform.
//!
//! Data flows one way: `http → graphql → service → {db, storage}`.

pub mod cli;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod failpoints;
pub mod graphql;
pub mod http;
pub mod metrics;
pub mod service;
pub mod storage;
pub mod telemetry;
