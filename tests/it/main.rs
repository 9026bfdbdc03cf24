//! Integration tests: one binary, the real server over HTTP, every scenario on SQLite and
//! PostgreSQL.

mod harness;

mod assets;
mod authority;
mod cli;
mod crash;
mod errors;
mod http;
mod migrations;
mod outage;
mod projects;
mod reads;
mod schema;
