//! Who is asking, and what they may be: token authentication ([`authn`]) and its cache
//! ([`cache`]), the propagation of authority changes to every process ([`propagate`]), and
//! users, groups and tokens ([`users`]).

mod authn;
mod cache;
mod propagate;
mod users;

pub use authn::{authenticate, authenticate_hashed, hash_token};
pub use cache::{Ticket, TokenCache};
pub(crate) use propagate::announce_authority_change;
pub use propagate::{AUTH_CHANNEL, AuthSubscriber, await_authority_propagated};
pub use users::*;
