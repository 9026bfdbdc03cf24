//! How many subscriptions run at once: caps per connection and per user, and the gauges.
//!
//! A subscription holds memory and a task for as long as it runs, and one socket can ask for
//! thousands in a second; without a cap, one client exhausts the process for everyone. Each
//! subscription takes a [`Permit`] before it starts (refused with `BAD_USER_INPUT`,
//! `extensions.limit = "subscriptions"` beyond a cap) and gives it back when it ends for any
//! reason: completed, cancelled by the client, or its socket closed. The counts are kept per
//! process: a user with sockets on two processes may hold up to the per-user cap on each.

use std::{collections::HashMap, sync::Arc};

use crate::{
    domain::UserId,
    error::{AppError, AppResult},
};

/// The caps (`ATELIER_WS_MAX_SUBSCRIPTIONS`, `ATELIER_WS_MAX_USER_SUBSCRIPTIONS`).
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    /// Subscriptions one connection may run at once.
    pub per_connection: usize,
    /// Subscriptions one user may run at once, over all their connections to this process.
    pub per_user: usize,
}

impl Default for Caps {
    fn default() -> Self {
        Caps {
            per_connection: 100,
            per_user: 500,
        }
    }
}

/// This process's live subscriptions and open sockets.
#[derive(Default)]
pub struct Subscriptions {
    caps: Caps,
    state: std::sync::Mutex<State>,
}

#[derive(Default)]
struct State {
    next_connection: u64,
    /// Open connection → its live subscriptions.
    connections: HashMap<u64, usize>,
    /// User → live subscriptions (entries at zero are removed).
    users: HashMap<i64, usize>,
    live: usize,
    /// Counters for `/metrics`.
    refused: u64,
    slow_consumers: u64,
}

impl Subscriptions {
    pub fn new(caps: Caps) -> Subscriptions {
        Subscriptions {
            caps,
            state: Default::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Every change is a few counter updates: a panicking holder leaves them consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers an open connection; it is forgotten when the returned value drops.
    pub fn open(self: &Arc<Self>) -> Connection {
        let mut state = self.state();
        state.next_connection += 1;
        let id = state.next_connection;
        state.connections.insert(id, 0);
        Connection {
            registry: self.clone(),
            id,
        }
    }

    /// A connection was closed because its client did not read what it was sent.
    pub fn record_slow_consumer(&self) {
        self.state().slow_consumers += 1;
    }

    /// Live subscriptions in this process.
    pub fn live(&self) -> usize {
        self.state().live
    }

    /// Prometheus text: open sockets, live subscriptions, refusals, slow consumers.
    pub fn render_metrics(&self) -> String {
        let state = self.state();
        format!(
            "# HELP atelier_ws_connections Open WebSocket connections (GET /graphql/ws).\n\
             # TYPE atelier_ws_connections gauge\natelier_ws_connections {}\n\
             # HELP atelier_ws_subscriptions Subscriptions running in this process.\n\
             # TYPE atelier_ws_subscriptions gauge\natelier_ws_subscriptions {}\n\
             # HELP atelier_ws_subscriptions_refused_total Subscriptions refused at a cap (per connection or per user).\n\
             # TYPE atelier_ws_subscriptions_refused_total counter\natelier_ws_subscriptions_refused_total {}\n\
             # HELP atelier_ws_slow_consumers_total Connections closed because the client did not read its messages.\n\
             # TYPE atelier_ws_slow_consumers_total counter\natelier_ws_slow_consumers_total {}\n",
            state.connections.len(),
            state.live,
            state.refused,
            state.slow_consumers,
        )
    }
}

/// One open connection's share of the registry.
pub struct Connection {
    registry: Arc<Subscriptions>,
    id: u64,
}

impl Connection {
    /// The right to run one more subscription on this connection for `user`, or
    /// `LimitExceeded` when either cap is reached.
    pub fn admit(&self, user: Option<UserId>) -> AppResult<Permit> {
        let caps = self.registry.caps;
        let mut state = self.registry.state();
        let on_connection = state.connections.get(&self.id).copied().unwrap_or(0);
        let of_user = user.map_or(0, |u| state.users.get(&u.0).copied().unwrap_or(0));
        let refused = if on_connection >= caps.per_connection {
            Some(format!(
                "too many subscriptions: at most {} at once on one connection",
                caps.per_connection
            ))
        } else if user.is_some() && of_user >= caps.per_user {
            Some(format!(
                "too many subscriptions: at most {} at once per user",
                caps.per_user
            ))
        } else {
            None
        };
        if let Some(message) = refused {
            state.refused += 1;
            tracing::info!(
                connection.subscriptions = on_connection,
                user.subscriptions = of_user,
                user.id = user.map(|u| u.0),
                "subscription_refused_at_cap"
            );
            return Err(AppError::LimitExceeded {
                limit: "subscriptions",
                field: None,
                message,
            });
        }
        *state.connections.entry(self.id).or_default() += 1;
        if let Some(u) = user {
            *state.users.entry(u.0).or_default() += 1;
        }
        state.live += 1;
        Ok(Permit {
            registry: self.registry.clone(),
            connection: self.id,
            user: user.map(|u| u.0),
        })
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.registry.state().connections.remove(&self.id);
    }
}

/// One running subscription; dropping it frees its place under both caps.
pub struct Permit {
    registry: Arc<Subscriptions>,
    connection: u64,
    user: Option<i64>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut state = self.registry.state();
        state.live = state.live.saturating_sub(1);
        if let Some(n) = state.connections.get_mut(&self.connection) {
            *n = n.saturating_sub(1);
        }
        if let Some(u) = self.user
            && let Some(n) = state.users.get_mut(&u)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                state.users.remove(&u);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_connection_and_per_user_and_frees_on_drop() {
        let registry = Arc::new(Subscriptions::new(Caps {
            per_connection: 2,
            per_user: 3,
        }));
        let (a, b) = (registry.open(), registry.open());
        let alice = Some(UserId(1));
        let p1 = a.admit(alice).ok().unwrap();
        let _p2 = a.admit(alice).ok().unwrap();
        assert!(matches!(
            a.admit(alice),
            Err(AppError::LimitExceeded {
                limit: "subscriptions",
                ..
            })
        ));
        let _p3 = b.admit(alice).ok().unwrap();
        assert!(b.admit(alice).is_err(), "the user's cap spans connections");
        assert!(
            b.admit(Some(UserId(2))).is_ok(),
            "another user is not held back"
        );
        assert_eq!(registry.live(), 3);
        drop(p1);
        assert!(a.admit(alice).is_ok(), "a freed place can be taken again");
        drop(a);
        assert_eq!(registry.state().connections.len(), 1);
    }
}
