//! Replies the backend must not send to the public as they are: server.features would
//! announce the private host and ports, server.peers.subscribe can list private and backend addresses.
//! These are rare requests, so a full JSON parse and re-serialisation of the `result` is fine here; the
//! session writes the reply around it with the client's id, byte for byte.

use serde_json::Value;
use std::net::{IpAddr, SocketAddr};

/// The `hosts` object announced in server.features: the public names with Gatehouse's own ports.
pub fn hosts_json(public_hosts: &[String], ports: &[(&'static str, u16)]) -> Value {
    let mut ports_obj = serde_json::Map::new();
    for key in ["tcp_port", "ssl_port", "ws_port", "wss_port"] {
        if let Some((_, p)) = ports.iter().find(|(k, _)| *k == key) {
            ports_obj.insert(key.into(), Value::from(*p));
        }
    }
    let mut hosts = serde_json::Map::new();
    for h in public_hosts {
        hosts.insert(h.clone(), Value::Object(ports_obj.clone()));
    }
    Value::Object(hosts)
}

/// The `result` of a reply, parsed alone: the id and the rest are skipped unread, so the client's id
/// is never turned into a value (which would lose big integers and escapes).
fn result_of(reply: &[u8]) -> Option<Value> {
    #[derive(serde::Deserialize)]
    struct Reply {
        result: Option<Value>,
    }
    serde_json::from_slice::<Reply>(reply).ok()?.result
}

/// Whether a reply is an error reply (a non-null `error`).
pub fn is_error(reply: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Reply {
        error: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Reply>(reply).is_ok_and(|r| r.error.is_some())
}

/// The `result` of a server.features reply with `hosts` replaced. `None` if the reply has no result
/// object (an error is passed on unchanged).
pub fn features(reply: &[u8], hosts: &Value) -> Option<String> {
    let mut result = result_of(reply)?;
    result.as_object_mut()?.insert("hosts".into(), hosts.clone());
    serde_json::to_string(&result).ok()
}

/// The `result` of a server.peers.subscribe reply without private, loopback, link-local or backend
/// entries. `None` if the reply has no result array.
pub fn peers(reply: &[u8], backends: &[SocketAddr]) -> Option<String> {
    let mut result = result_of(reply)?;
    result.as_array_mut()?.retain(|peer| {
        let ip = peer
            .get(0)
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<IpAddr>().ok());
        let host = peer.get(1).and_then(Value::as_str).unwrap_or("");
        match ip {
            Some(ip) => is_public(ip) && !backends.iter().any(|b| b.ip() == ip),
            // Tor peers have no IP entry; their onion name is public by design.
            None => host.ends_with(".onion"),
        }
    });
    serde_json::to_string(&result).ok()
}

fn is_public(ip: IpAddr) -> bool {
    match crate::wire::addr::canonical(ip) {
        IpAddr::V4(a) => {
            !(a.is_private()
                || a.is_loopback()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.is_documentation()
                || a.octets()[0] == 100 && (a.octets()[1] & 0xC0) == 64)
        }
        IpAddr::V6(a) => {
            let seg0 = a.segments()[0];
            !(a.is_loopback() || a.is_unspecified() || (seg0 & 0xfe00) == 0xfc00 || (seg0 & 0xffc0) == 0xfe80)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_hosts_replaced() {
        let hosts = hosts_json(
            &["electrum.example.org".into()],
            &[("ssl_port", 50002), ("tcp_port", 50001)],
        );
        let reply = br#"{"jsonrpc":"2.0","id":3,"result":{"hosts":{"10.0.0.5":{"tcp_port":50001}},"server_version":"ElectrumX 1.16"}}"#;
        let out = features(reply, &hosts).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v["hosts"],
            serde_json::json!({"electrum.example.org": {"ssl_port": 50002, "tcp_port": 50001}})
        );
        assert_eq!(v["server_version"], "ElectrumX 1.16");
        assert!(!out.contains("10.0.0.5"));
        let error = br#"{"id":1,"error":{"code":1,"message":"x"}}"#;
        assert_eq!(features(error, &hosts), None);
        assert!(is_error(error));
        assert!(!is_error(br#"{"id":1,"error":null,"result":"10.0.0.5"}"#));
        assert_eq!(features(br#"{"id":1,"error":null,"result":"10.0.0.5"}"#, &hosts), None);
    }

    #[test]
    fn peers_filtered() {
        let reply = br#"{"jsonrpc":"2.0","id":1,"result":[["10.0.0.5","backend",["v1.4"]],["127.0.0.1","lo",["v1.4"]],["203.0.113.9","pub",["v1.4"]],["8.8.4.4","good",["v1.4","s50002"]],["abcdef.onion","abcdef.onion",["v1.4"]],["fd00::1","ula",[]]]}"#;
        let out = peers(reply, &["8.8.4.4:50001".parse().unwrap()]).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        let names: Vec<&str> = v.as_array().unwrap().iter().map(|p| p[1].as_str().unwrap()).collect();
        assert_eq!(names, vec!["abcdef.onion"]);
    }
}
