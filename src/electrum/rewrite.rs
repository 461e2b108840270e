//! Replies the backend must not send to the public as they are (DESIGN §2): server.features would
//! announce the private host and ports, server.peers.subscribe can list private and backend addresses.
//! These are rare requests, so a full JSON parse and re-serialisation is fine here.

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

/// server.features reply with `hosts` replaced. `None` if the reply has no result object (an error is
/// passed on unchanged).
pub fn features(reply: &[u8], hosts: &Value) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(reply).ok()?;
    let result = v.get_mut("result")?.as_object_mut()?;
    result.insert("hosts".into(), hosts.clone());
    serde_json::to_vec(&v).ok()
}

/// server.peers.subscribe reply without private, loopback, link-local or backend entries.
pub fn peers(reply: &[u8], backends: &[SocketAddr]) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(reply).ok()?;
    let list = v.get_mut("result")?.as_array_mut()?;
    list.retain(|peer| {
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
    serde_json::to_vec(&v).ok()
}

fn is_public(ip: IpAddr) -> bool {
    match crate::guard::addr::canonical(ip) {
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
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["result"]["hosts"],
            serde_json::json!({"electrum.example.org": {"ssl_port": 50002, "tcp_port": 50001}})
        );
        assert_eq!(v["result"]["server_version"], "ElectrumX 1.16");
        assert!(!String::from_utf8(out).unwrap().contains("10.0.0.5"));
    }

    #[test]
    fn peers_filtered() {
        let reply = br#"{"jsonrpc":"2.0","id":1,"result":[["10.0.0.5","backend",["v1.4"]],["127.0.0.1","lo",["v1.4"]],["203.0.113.9","pub",["v1.4"]],["8.8.4.4","good",["v1.4","s50002"]],["abcdef.onion","abcdef.onion",["v1.4"]],["fd00::1","ula",[]]]}"#;
        let out = peers(reply, &["8.8.4.4:50001".parse().unwrap()]).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        let names: Vec<&str> = v["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[1].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["abcdef.onion"]);
    }
}
