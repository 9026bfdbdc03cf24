//! The messages of GraphQL over WebSocket: graphql-transport-ws (the `graphql-ws` npm
//! library, <https://github.com/enisdenjo/graphql-ws/blob/master/PROTOCOL.md>) and the older
//! subscriptions-transport-ws (sub-protocol `graphql-ws`), which differ mostly in names.

use serde::Deserialize;

/// The sub-protocol a connection speaks (`Sec-WebSocket-Protocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `graphql-transport-ws`.
    TransportWs,
    /// `graphql-ws`: Apollo's subscriptions-transport-ws.
    Legacy,
}

/// Sub-protocols in order of preference.
pub const PROTOCOLS: [&str; 2] = ["graphql-transport-ws", "graphql-ws"];

impl Protocol {
    pub fn from_name(name: &str) -> Option<Protocol> {
        match name {
            "graphql-transport-ws" => Some(Protocol::TransportWs),
            "graphql-ws" => Some(Protocol::Legacy),
            _ => None,
        }
    }
}

/// Close codes (graphql-transport-ws names them; the legacy protocol has none of its own).
pub mod close {
    /// The client broke the protocol (a message that is not one).
    pub const BAD_REQUEST: u16 = 4400;
    /// The credential is missing, invalid, revoked or logged out: sign in again.
    pub const UNAUTHORIZED: u16 = 4401;
    /// No `connection_init` in time.
    pub const INIT_TIMEOUT: u16 = 4408;
    /// A `subscribe` reused the id of a running operation.
    pub const SUBSCRIBER_EXISTS: u16 = 4409;
    /// A second `connection_init`.
    pub const TOO_MANY_INITS: u16 = 4429;
    /// RFC 6455 "try again later": the credential could not be checked (an outage).
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// RFC 6455 normal closure.
    pub const NORMAL: u16 = 1000;
}

/// A message from the client.
#[derive(Debug)]
pub enum ClientMessage {
    ConnectionInit {
        payload: Option<serde_json::Value>,
    },
    /// `subscribe` (legacy: `start`): run an operation under `id`.
    Subscribe {
        id: String,
        payload: serde_json::Value,
    },
    /// `complete` (legacy: `stop`): the client no longer wants operation `id`.
    Complete {
        id: String,
    },
    /// Legacy `connection_terminate`.
    Terminate,
    Ping {
        payload: Option<serde_json::Value>,
    },
    Pong,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Wire {
    ConnectionInit {
        #[serde(default)]
        payload: Option<serde_json::Value>,
    },
    #[serde(alias = "start")]
    Subscribe {
        id: String,
        payload: serde_json::Value,
    },
    #[serde(alias = "stop")]
    Complete {
        id: String,
    },
    ConnectionTerminate,
    Ping {
        #[serde(default)]
        payload: Option<serde_json::Value>,
    },
    Pong {
        #[serde(default)]
        #[allow(dead_code)]
        payload: Option<serde_json::Value>,
    },
}

/// Longest operation id accepted: ids are UUIDs or counters, and every running one is kept.
const MAX_ID_BYTES: usize = 128;

impl ClientMessage {
    /// Parses a text message; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<ClientMessage, String> {
        let wire: Wire =
            serde_json::from_str(text).map_err(|e| format!("invalid message received: {e}"))?;
        let id_ok = |id: String| {
            if id.is_empty() || id.len() > MAX_ID_BYTES {
                Err(format!(
                    "invalid message received: an id must be 1 to {MAX_ID_BYTES} bytes"
                ))
            } else {
                Ok(id)
            }
        };
        Ok(match wire {
            Wire::ConnectionInit { payload } => ClientMessage::ConnectionInit { payload },
            Wire::Subscribe { id, payload } => ClientMessage::Subscribe {
                id: id_ok(id)?,
                payload,
            },
            Wire::Complete { id } => ClientMessage::Complete { id },
            Wire::ConnectionTerminate => ClientMessage::Terminate,
            Wire::Ping { payload } => ClientMessage::Ping { payload },
            Wire::Pong { .. } => ClientMessage::Pong,
        })
    }
}

/// Server messages, as text.
impl Protocol {
    pub fn ack(self) -> String {
        r#"{"type":"connection_ack"}"#.to_owned()
    }

    pub fn pong(self, payload: Option<serde_json::Value>) -> String {
        match payload {
            Some(p) => serde_json::json!({ "type": "pong", "payload": p }).to_string(),
            None => r#"{"type":"pong"}"#.to_owned(),
        }
    }

    /// A result of operation `id`; `payload` is a serialized GraphQL response.
    pub fn next(self, id: &str, payload: &str) -> String {
        let kind = match self {
            Protocol::TransportWs => "next",
            Protocol::Legacy => "data",
        };
        format!(
            r#"{{"type":"{kind}","id":{},"payload":{payload}}}"#,
            serde_json::Value::from(id)
        )
    }

    /// Operation `id` ended with these errors (a JSON array of GraphQL errors); nothing
    /// follows for it.
    pub fn error(self, id: &str, errors: &serde_json::Value) -> String {
        serde_json::json!({ "type": "error", "id": id, "payload": errors }).to_string()
    }

    /// Operation `id` is done.
    pub fn complete(self, id: &str) -> String {
        serde_json::json!({ "type": "complete", "id": id }).to_string()
    }

    /// Legacy only: `connection_init` was refused (graphql-transport-ws just closes).
    pub fn connection_error(self, message: &str) -> Option<String> {
        (self == Protocol::Legacy).then(|| {
            serde_json::json!({ "type": "connection_error", "payload": { "message": message } })
                .to_string()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_protocols_and_refuses_garbage() {
        assert!(matches!(
            ClientMessage::parse(r#"{"type":"subscribe","id":"1","payload":{"query":"{a}"}}"#),
            Ok(ClientMessage::Subscribe { .. })
        ));
        assert!(matches!(
            ClientMessage::parse(r#"{"type":"start","id":"1","payload":{}}"#),
            Ok(ClientMessage::Subscribe { .. })
        ));
        assert!(matches!(
            ClientMessage::parse(r#"{"type":"stop","id":"1"}"#),
            Ok(ClientMessage::Complete { .. })
        ));
        assert!(matches!(
            ClientMessage::parse(r#"{"type":"connection_init"}"#),
            Ok(ClientMessage::ConnectionInit { payload: None })
        ));
        for bad in [
            "",
            "[]",
            r#"{"type":"nope"}"#,
            r#"{"type":"subscribe","id":"","payload":{}}"#,
        ] {
            assert!(ClientMessage::parse(bad).is_err(), "{bad}");
        }
        let long = format!(
            r#"{{"type":"subscribe","id":"{}","payload":{{}}}}"#,
            "x".repeat(129)
        );
        assert!(ClientMessage::parse(&long).is_err());
    }

    #[test]
    fn names_messages_per_protocol() {
        assert_eq!(
            Protocol::TransportWs.next("a\"b", r#"{"data":1}"#),
            r#"{"type":"next","id":"a\"b","payload":{"data":1}}"#
        );
        assert!(
            Protocol::Legacy
                .next("1", "{}")
                .contains(r#""type":"data""#)
        );
        assert!(Protocol::TransportWs.connection_error("x").is_none());
    }
}
