//! The command table of the ledger profile: which commands the public may send (and what each costs),
//! which the node keeps for its administrators (walled off here), and how a command's parameters move it
//! to a dearer class.
//!
//! Commands the table does not know are answered `unknownCmd` here rather than forwarded: a gateway on
//! the node's own host usually connects from an address the node counts as an administrator's, so only a
//! list of what is public keeps a newer node's admin commands off the public port. An operator lets a
//! newer public command through with `extra_commands`.

use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashSet};

/// A request's fields (the WebSocket message, or the JSON-RPC `params[0]` object), values unparsed.
pub type Fields = BTreeMap<String, Box<RawValue>>;

/// What a command costs, in the node's fee classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeeClass {
    Reference,
    Medium,
    High,
    /// Malformed, unknown or walled off: refused here, charged as the node charges an invalid request.
    Malformed,
}

impl FeeClass {
    pub const ALL: [FeeClass; 4] = [
        FeeClass::Reference,
        FeeClass::Medium,
        FeeClass::High,
        FeeClass::Malformed,
    ];

    /// Its position in [`FeeClass::ALL`] (and in the metrics' class labels).
    pub fn index(self) -> usize {
        match self {
            FeeClass::Reference => 0,
            FeeClass::Medium => 1,
            FeeClass::High => 2,
            FeeClass::Malformed => 3,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FeeClass::Reference => "reference",
            FeeClass::Medium => "medium",
            FeeClass::High => "high",
            FeeClass::Malformed => "malformed",
        }
    }
}

/// Commands the node serves only to its administrators (its handler table's admin role, with those of
/// earlier versions): never forwarded from a public front.
const ADMIN: &[&str] = &[
    "blacklist",
    "can_delete",
    "connect",
    "consensus_info",
    "crawl_shards",
    "download_shard",
    "fetch_info",
    "get_counts",
    "ledger_accept",
    "ledger_cleaner",
    "ledger_request",
    "log_level",
    "logrotate",
    "node_to_shard",
    "peer_reservations_add",
    "peer_reservations_del",
    "peer_reservations_list",
    "peers",
    "print",
    "shed",
    "stop",
    "unl_add",
    "unl_delete",
    "unl_list",
    "validation_create",
    "validation_seed",
    "validator_info",
    "validator_list_sites",
    "validators",
    "wallet_propose",
];

/// Public commands and their base class; `ledger`, `path_find` and `subscribe` depend on their
/// parameters too (see [`judge`]).
const PUBLIC: &[(&str, FeeClass)] = &[
    ("account_channels", FeeClass::Reference),
    ("account_currencies", FeeClass::Reference),
    ("account_info", FeeClass::Reference),
    ("account_lines", FeeClass::Medium),
    ("account_nfts", FeeClass::Reference),
    ("account_objects", FeeClass::Medium),
    ("account_offers", FeeClass::Medium),
    ("account_tx", FeeClass::Medium),
    ("amm_info", FeeClass::Reference),
    ("book_changes", FeeClass::Reference),
    ("book_offers", FeeClass::Medium),
    ("channel_authorize", FeeClass::Reference),
    ("channel_verify", FeeClass::Reference),
    ("deposit_authorized", FeeClass::Reference),
    ("feature", FeeClass::Reference),
    ("fee", FeeClass::Reference),
    ("gateway_balances", FeeClass::High),
    ("get_aggregate_price", FeeClass::Reference),
    ("ledger", FeeClass::Reference),
    ("ledger_closed", FeeClass::Reference),
    ("ledger_current", FeeClass::Reference),
    ("ledger_data", FeeClass::Reference),
    ("ledger_entry", FeeClass::Reference),
    ("ledger_header", FeeClass::Reference),
    ("manifest", FeeClass::Reference),
    ("nft_buy_offers", FeeClass::Reference),
    ("nft_sell_offers", FeeClass::Reference),
    ("noripple_check", FeeClass::Reference),
    ("owner_info", FeeClass::Reference),
    ("path_find", FeeClass::Reference),
    ("ping", FeeClass::Reference),
    ("random", FeeClass::Reference),
    ("ripple_path_find", FeeClass::High),
    ("server_definitions", FeeClass::Reference),
    ("server_info", FeeClass::Reference),
    ("server_state", FeeClass::Reference),
    ("sign", FeeClass::High),
    ("sign_for", FeeClass::High),
    ("simulate", FeeClass::Reference),
    ("submit", FeeClass::Medium),
    ("submit_multisigned", FeeClass::Medium),
    ("subscribe", FeeClass::Reference),
    ("transaction_entry", FeeClass::Reference),
    ("tx", FeeClass::Reference),
    ("tx_history", FeeClass::Reference),
    ("unsubscribe", FeeClass::Reference),
    ("vault_info", FeeClass::Reference),
    ("version", FeeClass::Reference),
];

/// The gateway's verdict on one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Forward it; it costs its class.
    Public(FeeClass),
    /// The node's admin command: refused with `noPermission`.
    Admin,
    /// Not a command this front knows: refused with `unknownCmd`.
    Unknown,
}

/// Whether `fields[key]` is JSON `true`.
pub fn flag(fields: &Fields, key: &str) -> bool {
    fields.get(key).is_some_and(|v| v.get().trim() == "true")
}

/// `fields[key]` when it is a JSON string.
pub fn string(fields: &Fields, key: &str) -> Option<String> {
    fields
        .get(key)
        .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
}

pub fn judge(command: &str, fields: &Fields, extra: &HashSet<String>) -> Verdict {
    if let Ok(i) = PUBLIC.binary_search_by(|(c, _)| (*c).cmp(command)) {
        let base = PUBLIC[i].1;
        let class = match command {
            // A full ledger (every state object) or its accounts dump the whole state tree; binary output
            // still serialises every transaction.
            "ledger" if flag(fields, "full") || flag(fields, "accounts") => FeeClass::High,
            "ledger" if flag(fields, "binary") => FeeClass::Medium,
            "path_find" if string(fields, "subcommand").as_deref() == Some("create") => FeeClass::High,
            "subscribe" if fields.get("books").is_some_and(|b| b.get().trim() != "[]") => FeeClass::Medium,
            _ => base,
        };
        return Verdict::Public(class);
    }
    if ADMIN.binary_search(&command).is_ok() {
        return Verdict::Admin;
    }
    if extra.contains(command) {
        return Verdict::Public(FeeClass::Reference);
    }
    Verdict::Unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: &str) -> Fields {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn tables_are_sorted_and_disjoint() {
        assert!(ADMIN.windows(2).all(|w| w[0] < w[1]));
        assert!(PUBLIC.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(PUBLIC.iter().all(|(c, _)| !ADMIN.contains(c)));
    }

    #[test]
    fn classes_follow_command_and_parameters() {
        let none = HashSet::new();
        let e = fields("{}");
        assert_eq!(judge("server_info", &e, &none), Verdict::Public(FeeClass::Reference));
        assert_eq!(judge("account_tx", &e, &none), Verdict::Public(FeeClass::Medium));
        assert_eq!(judge("ripple_path_find", &e, &none), Verdict::Public(FeeClass::High));
        assert_eq!(judge("ledger", &e, &none), Verdict::Public(FeeClass::Reference));
        assert_eq!(
            judge("ledger", &fields(r#"{"full":true}"#), &none),
            Verdict::Public(FeeClass::High)
        );
        assert_eq!(
            judge("ledger", &fields(r#"{"binary":true}"#), &none),
            Verdict::Public(FeeClass::Medium)
        );
        assert_eq!(
            judge("path_find", &fields(r#"{"subcommand":"create"}"#), &none),
            Verdict::Public(FeeClass::High)
        );
        assert_eq!(
            judge("path_find", &fields(r#"{"subcommand":"close"}"#), &none),
            Verdict::Public(FeeClass::Reference)
        );
        assert_eq!(
            judge("subscribe", &fields(r#"{"books":[{"snapshot":true}]}"#), &none),
            Verdict::Public(FeeClass::Medium)
        );
        assert_eq!(
            judge("subscribe", &fields(r#"{"streams":["ledger"]}"#), &none),
            Verdict::Public(FeeClass::Reference)
        );
        assert_eq!(judge("stop", &e, &none), Verdict::Admin);
        assert_eq!(judge("wallet_propose", &e, &none), Verdict::Admin);
        assert_eq!(judge("no_such_thing", &e, &none), Verdict::Unknown);
        let extra: HashSet<String> = ["no_such_thing".to_string()].into();
        assert_eq!(judge("no_such_thing", &e, &extra), Verdict::Public(FeeClass::Reference));
        // An operator cannot open an admin command by listing it.
        let extra: HashSet<String> = ["stop".to_string()].into();
        assert_eq!(judge("stop", &e, &extra), Verdict::Admin);
    }
}
