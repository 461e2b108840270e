//! Subscriptions a WebSocket session holds at the node: streams, accounts, order books and its path_find
//! request, each counted once, capped per session and per client group.
//!
//! They are counted when the request goes out (a refused one never reaches the node) and handed back if
//! the node answers with an error, when the client unsubscribes, and when the session ends. The group's
//! count lives in one table shared by every ledger front; its entries exist only while sessions hold
//! subscriptions, so the table is bounded by the connection caps.

use super::commands::{string, Fields};
use crate::guard::limits::KeyedCounts;
use crate::telemetry::metrics;
use std::collections::HashSet;
use std::net::IpAddr;

/// What a request does to the session's subscriptions.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub add: Vec<String>,
    pub remove: Vec<String>,
}

/// Which cap refused a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Session,
    Group,
}

const PATH_FIND: &str = "path_find";

fn items(fields: &Fields, key: &str, prefix: &str, out: &mut Vec<String>) {
    let Some(raw) = fields.get(key) else { return };
    if key == "books" {
        if let Ok(books) = serde_json::from_str::<Vec<&serde_json::value::RawValue>>(raw.get()) {
            out.extend(books.iter().map(|b| format!("{prefix}{}", b.get())));
        }
    } else if let Ok(names) = serde_json::from_str::<Vec<String>>(raw.get()) {
        out.extend(names.iter().map(|n| format!("{prefix}{n}")));
    }
}

/// The subscriptions `command` with `fields` adds and removes. Anything the node would refuse as
/// malformed counts nothing: the node answers it with an error.
pub fn change(command: &str, fields: &Fields) -> Change {
    let mut keys = Vec::new();
    let mut c = Change::default();
    match command {
        "subscribe" | "unsubscribe" => {
            items(fields, "streams", "stream:", &mut keys);
            items(fields, "accounts", "account:", &mut keys);
            items(fields, "accounts_proposed", "proposed:", &mut keys);
            items(fields, "books", "book:", &mut keys);
            if command == "subscribe" {
                c.add = keys;
            } else {
                c.remove = keys;
            }
        }
        // One path_find request per session: a new one replaces the old at the node.
        "path_find" => match string(fields, "subcommand").as_deref() {
            Some("create") => c.add.push(PATH_FIND.to_string()),
            Some("close") => c.remove.push(PATH_FIND.to_string()),
            _ => {}
        },
        _ => {}
    }
    c
}

/// One session's subscriptions and its share of its group's count.
pub struct Subs<'a> {
    table: &'a KeyedCounts,
    group: IpAddr,
    held: HashSet<String>,
}

impl<'a> Subs<'a> {
    /// `group` is the client's cost group, or its own address when it has none.
    pub fn new(table: &'a KeyedCounts, group: IpAddr) -> Subs<'a> {
        Subs {
            table,
            group,
            held: HashSet::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Applies `c` unless a cap refuses it; returns the keys newly taken (handed back by [`Subs::undo`]
    /// if the node refuses the request).
    pub fn apply(&mut self, c: Change, per_session: usize, per_group: usize) -> Result<Vec<String>, Refused> {
        let mut fresh: Vec<String> = Vec::new();
        for k in c.add {
            if !self.held.contains(&k) && !fresh.contains(&k) {
                fresh.push(k);
            }
        }
        if self.held.len() + fresh.len() > per_session {
            metrics::api_subscription_refused(false);
            return Err(Refused::Session);
        }
        for (i, _) in fresh.iter().enumerate() {
            if !self.table.try_acquire(self.group, Some(per_group)) {
                for _ in 0..i {
                    self.table.release(self.group);
                }
                metrics::api_subscription_refused(true);
                return Err(Refused::Group);
            }
        }
        metrics::api_subscriptions_add(fresh.len() as i64);
        self.held.extend(fresh.iter().cloned());
        for k in c.remove {
            self.drop_key(&k);
        }
        Ok(fresh)
    }

    /// Hands back `keys` taken for a request the node refused.
    pub fn undo(&mut self, keys: &[String]) {
        for k in keys {
            self.drop_key(k);
        }
    }

    fn drop_key(&mut self, k: &str) {
        if self.held.remove(k) {
            self.table.release(self.group);
            metrics::api_subscriptions_add(-1);
        }
    }
}

impl Drop for Subs<'_> {
    fn drop(&mut self) {
        for _ in 0..self.held.len() {
            self.table.release(self.group);
        }
        metrics::api_subscriptions_add(-(self.held.len() as i64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: &str) -> Fields {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn caps_hold_per_session_and_per_group() {
        let table = KeyedCounts::default();
        let g: IpAddr = "192.0.2.1".parse().unwrap();
        let mut a = Subs::new(&table, g);
        let mut b = Subs::new(&table, g);
        let sub = |j| change("subscribe", &fields(j));
        assert_eq!(
            a.apply(sub(r#"{"streams":["ledger","transactions"]}"#), 3, 4)
                .unwrap()
                .len(),
            2
        );
        // The same stream twice counts once.
        assert_eq!(a.apply(sub(r#"{"streams":["ledger"]}"#), 3, 4).unwrap().len(), 0);
        assert_eq!(a.apply(sub(r#"{"accounts":["rA","rB"]}"#), 3, 4), Err(Refused::Session));
        assert_eq!(b.apply(sub(r#"{"accounts":["rA","rB"]}"#), 3, 4).unwrap().len(), 2);
        assert_eq!(b.apply(sub(r#"{"accounts":["rC"]}"#), 3, 4), Err(Refused::Group));
        assert_eq!(table.get(g), 4);
        b.apply(change("unsubscribe", &fields(r#"{"accounts":["rA"]}"#)), 3, 4)
            .unwrap();
        assert_eq!(table.get(g), 3);
        let taken = b
            .apply(change("path_find", &fields(r#"{"subcommand":"create"}"#)), 3, 4)
            .unwrap();
        b.undo(&taken);
        drop(a);
        drop(b);
        assert_eq!(table.get(g), 0);
    }
}
