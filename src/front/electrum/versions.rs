//! What each backend answered to `server.version`, so that the gateway can answer it itself.
//!
//! A session opens its backend connection only once it has a request to write there. When the wallet's
//! `server.version` is answered here, a session that never gets a request through (a flood's connection
//! queued behind its own costly group, then cut) never reaches the backend at all: an indexer with one
//! event loop spends none of it on the flood's connects, its handshakes and its disconnects. The backend
//! still hears the negotiated version, first on the connection, once one is opened.
//!
//! What a backend speaks is learned from the answers it gives to the versions the gateway forwards while it
//! knows nothing yet. A server answers the highest version it shares with the range asked (ElectrumX and
//! Fulcrum pick so; an answer outside the range teaches nothing). So a version the backend has answered is
//! one it speaks; an answer below the top of the range asked (or at the gateway's own ceiling) is its best. A client is answered here with the version the
//! backend would pick for its range (the top of the range, or the best below it) when the backend has
//! answered that very version before; any other client's version is forwarded as before.

use super::methods::ProtoVersion;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

/// Backends remembered at most. Addresses come from the configuration only (the pool's targets), so this
/// is never reached in practice; past it, new backends are simply not answered for.
pub const MAX_KNOWN_BACKENDS: usize = 256;
/// Versions remembered per backend: the protocol has a handful, and only those inside the gateway's own
/// range are ever asked for.
const MAX_VERSIONS: usize = 16;

/// What a backend answered: its software string (already a JSON string), the versions it has answered,
/// and its best one once known.
#[derive(Debug)]
struct Known {
    software_json: String,
    best: Option<ProtoVersion>,
    answered: Vec<ProtoVersion>,
}

impl Known {
    /// The version the backend would negotiate for the clamped client range `lo..=hi`, when it has
    /// answered that version before.
    fn pick(&self, lo: ProtoVersion, hi: ProtoVersion) -> Option<ProtoVersion> {
        let v = self.best.map_or(hi, |b| b.min(hi));
        (v >= lo && self.answered.contains(&v)).then_some(v)
    }
}

/// What the backends of every Electrum front said about themselves, by address.
#[derive(Default)]
pub struct BackendVersions {
    known: Mutex<HashMap<SocketAddr, Known>>,
}

impl BackendVersions {
    /// The version `backend` would negotiate for the clamped client range `lo..=hi`, with the `result` of
    /// the server.version reply naming it, when the backend has answered that version before.
    pub fn answer(&self, backend: SocketAddr, lo: ProtoVersion, hi: ProtoVersion) -> Option<(ProtoVersion, String)> {
        let known = self.lock();
        let k = known.get(&backend)?;
        let version = k.pick(lo, hi)?;
        Some((version, format!("[{},\"{version}\"]", k.software_json)))
    }

    /// Learns from `backend`'s answer `answered` (with its software string) to a forwarded range
    /// `asked`, which the gateway had already clamped to its own `ceiling`.
    pub fn learn(
        &self,
        backend: SocketAddr,
        software: &str,
        asked: (ProtoVersion, ProtoVersion),
        answered: ProtoVersion,
        ceiling: ProtoVersion,
    ) {
        let (lo, hi) = asked;
        if answered < lo || answered > hi {
            return;
        }
        let mut known = self.lock();
        if known.len() >= MAX_KNOWN_BACKENDS && !known.contains_key(&backend) {
            return;
        }
        let entry = known.entry(backend).or_insert_with(|| Known {
            software_json: String::new(),
            best: None,
            answered: Vec::new(),
        });
        let software = json_string(software);
        if entry.software_json != software {
            entry.software_json = software;
        }
        if !entry.answered.contains(&answered) && entry.answered.len() < MAX_VERSIONS {
            entry.answered.push(answered);
        }
        // At the top of a range below the ceiling the backend may speak more than it was asked for.
        if answered < hi || hi == ceiling {
            entry.best = Some(answered);
        }
    }

    /// The backend refused a version it answered before (another one answers at its address now): the
    /// versions forwarded to it teach the gateway again.
    pub fn forget(&self, backend: SocketAddr) {
        self.lock().remove(&backend);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Known>> {
        // The map holds plain values: a panic elsewhere while it was held cannot have left it half-written.
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> ProtoVersion {
        s.parse().unwrap()
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn learn(t: &BackendVersions, port: u16, software: &str, asked: (&str, &str), answered: &str) {
        t.learn(addr(port), software, (v(asked.0), v(asked.1)), v(answered), v("1.6"));
    }

    /// The reply's `result` for a client range, if the gateway answers it.
    fn answer(t: &BackendVersions, port: u16, lo: &str, hi: &str) -> Option<String> {
        t.answer(addr(port), v(lo), v(hi)).map(|(version, result)| {
            assert!(result.ends_with(&format!(",\"{version}\"]")), "{result}");
            result
        })
    }

    #[test]
    fn an_answer_below_the_top_of_the_range_is_the_backends_best() {
        let t = BackendVersions::default();
        learn(&t, 1, "ElectrumX 1.20.2", ("1.4", "1.6"), "1.4.3");
        let best = r#"["ElectrumX 1.20.2","1.4.3"]"#;
        assert_eq!(answer(&t, 1, "1.4", "1.6").as_deref(), Some(best));
        assert_eq!(answer(&t, 1, "1.4.3", "1.5").as_deref(), Some(best));
        // Above its best, or a version it never answered: the backend decides.
        assert_eq!(answer(&t, 1, "1.5", "1.6"), None);
        assert_eq!(answer(&t, 1, "1.4", "1.4"), None);
        assert_eq!(answer(&t, 2, "1.4", "1.6"), None);
    }

    #[test]
    fn a_version_answered_at_the_top_of_a_range_is_answered_for_that_top() {
        let t = BackendVersions::default();
        learn(&t, 1, "Fulcrum 2.0", ("1.4", "1.4"), "1.4");
        assert_eq!(answer(&t, 1, "1.4", "1.4").as_deref(), Some(r#"["Fulcrum 2.0","1.4"]"#));
        assert_eq!(answer(&t, 1, "1.4", "1.6"), None, "the backend may speak more than 1.4");
        learn(&t, 1, "Fulcrum 2.0", ("1.4", "1.6"), "1.6");
        assert_eq!(answer(&t, 1, "1.4", "1.6").as_deref(), Some(r#"["Fulcrum 2.0","1.6"]"#));
        assert_eq!(answer(&t, 1, "1.4", "1.4").as_deref(), Some(r#"["Fulcrum 2.0","1.4"]"#));
    }

    #[test]
    fn answers_outside_the_range_asked_teach_nothing() {
        let t = BackendVersions::default();
        learn(&t, 1, "odd", ("1.4", "1.6"), "1.2");
        learn(&t, 1, "odd", ("1.4", "1.5"), "1.6");
        assert!(t.lock().is_empty());
    }

    #[test]
    fn software_strings_are_escaped_and_forgotten_on_demand() {
        let t = BackendVersions::default();
        learn(&t, 1, "say \"hi\"", ("1.4", "1.6"), "1.4");
        assert_eq!(answer(&t, 1, "1.4", "1.6").as_deref(), Some(r#"["say \"hi\"","1.4"]"#));
        t.forget(addr(1));
        assert_eq!(answer(&t, 1, "1.4", "1.6"), None);
    }

    #[test]
    fn the_table_is_capped() {
        let t = BackendVersions::default();
        for p in 0..(MAX_KNOWN_BACKENDS as u16 + 10) {
            learn(&t, p, "x", ("1.4", "1.6"), "1.4");
        }
        assert_eq!(t.lock().len(), MAX_KNOWN_BACKENDS);
        // A backend already known is still updated at the cap.
        learn(&t, 0, "y", ("1.4", "1.6"), "1.5");
        assert_eq!(answer(&t, 0, "1.4", "1.6").as_deref(), Some(r#"["y","1.5"]"#));
    }
}
