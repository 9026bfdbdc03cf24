//! Integration tests: one binary, the real server over HTTP, every scenario on SQLite and
//! PostgreSQL.

mod api;
mod harness;

mod access;
mod access_matrix;
mod assets;
mod authority;
mod backpack;
mod builtin;
mod cli;
mod commit_boundary;
mod crash;
mod editor_browser;
mod editor_page;
mod errors;
mod exports;
mod graphiql;
mod hostile;
mod http;
mod idempotency;
mod imports;
mod migrations;
mod oidc;
mod oidc_e2e;
mod outage;
mod pool;
mod projects;
mod proxy;
mod reads;
mod schema;
mod scratch;
mod scratch_backpack;
mod sharing;
mod ws;
