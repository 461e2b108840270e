//! `[front.api]` of `profile = "ledger"`: validated into `front::api::ledger::settings::LedgerSettings`,
//! and the keys each profile does not take refused by name.

use super::schema::RawFrontApi;
use super::{ConfigError, Validator};
use crate::front::api::ledger::commands::{judge, Fields, Verdict};
use crate::front::api::ledger::settings::{self as d, Fees, LedgerSettings};
use crate::front::api::settings as api;
use crate::wire::units;
use std::collections::HashSet;
use toml::Spanned;

impl Validator<'_> {
    /// The bitcoind profile takes none of the ledger profile's keys.
    pub(super) fn ledger_keys_absent(&self, key: &str, a: &RawFrontApi) -> Result<(), ConfigError> {
        let only = |k: &str, span: Option<std::ops::Range<usize>>| {
            Err(self.err(format!("{key}.{k}"), span, "only for profile = \"ledger\""))
        };
        if let Some(f) = &a.fees {
            let at = [&f.reference, &f.medium, &f.high, &f.malformed]
                .into_iter()
                .flatten()
                .chain(f.commands.values())
                .map(Spanned::span)
                .next();
            return only("fees", at);
        }
        if let Some(c) = a.extra_commands.first() {
            return only("extra_commands", Some(c.span()));
        }
        let spans = [
            ("max_subscriptions", a.max_subscriptions.as_ref().map(Spanned::span)),
            (
                "max_subscriptions_per_group",
                a.max_subscriptions_per_group.as_ref().map(Spanned::span),
            ),
            ("max_message", a.max_message.as_ref().map(Spanned::span)),
            ("max_pending_output", a.max_pending_output.as_ref().map(Spanned::span)),
            ("slow_reader_timeout", a.slow_reader_timeout.as_ref().map(Spanned::span)),
        ];
        for (k, span) in spans {
            if span.is_some() {
                return only(k, span);
            }
        }
        Ok(())
    }

    pub(super) fn ledger_api(&self, key: &str, a: &RawFrontApi) -> Result<LedgerSettings, ConfigError> {
        let span = Some(a.profile.span());
        let bitcoind_only = |k: &str, at: Option<std::ops::Range<usize>>| {
            Err(self.err(format!("{key}.{k}"), at, "only for profile = \"bitcoind\""))
        };
        if let Some(u) = &a.backend_user {
            return bitcoind_only("backend_user", Some(u.span()));
        }
        if let Some(f) = &a.backend_password_file {
            return bitcoind_only("backend_password_file", Some(f.span()));
        }
        if let Some(f) = &a.backend_cookie_file {
            return bitcoind_only("backend_cookie_file", Some(f.span()));
        }
        if let Some(u) = a.users.first() {
            return bitcoind_only("users", Some(u.name.span()));
        }
        if !a.public_methods.is_empty() {
            return bitcoind_only("public_methods", span);
        }
        if let Some(c) = a.method_costs.values().next() {
            return bitcoind_only("method_costs", Some(c.span()));
        }
        if let Some(n) = &a.max_batch {
            return bitcoind_only("max_batch", Some(n.span()));
        }
        if let Some(t) = a.tokens.first() {
            return bitcoind_only("tokens", Some(t.name.span()));
        }
        if let Some(r) = a.rest.values().next() {
            return bitcoind_only("rest", Some(r.span()));
        }
        if let Some(b) = &a.max_body {
            return Err(self.err(
                format!("{key}.max_body"),
                Some(b.span()),
                "profile = \"ledger\" caps requests with max_message",
            ));
        }
        let fee = |k: &str, v: &Option<Spanned<f64>>, dflt: f64| match v {
            Some(f) if !f.get_ref().is_finite() || *f.get_ref() < 0.0 => Err(self.err(
                format!("{key}.fees.{k}"),
                Some(f.span()),
                "must be a finite number, 0 or more",
            )),
            Some(f) => Ok(*f.get_ref()),
            None => Ok(dflt),
        };
        let mut fees = Fees::default();
        if let Some(f) = &a.fees {
            fees.reference = fee("reference", &f.reference, d::DEFAULT_FEE_REFERENCE)?;
            fees.medium = fee("medium", &f.medium, d::DEFAULT_FEE_MEDIUM)?;
            fees.high = fee("high", &f.high, d::DEFAULT_FEE_HIGH)?;
            fees.malformed = fee("malformed", &f.malformed, d::DEFAULT_FEE_MALFORMED)?;
            for (c, v) in &f.commands {
                let v = fee(&format!("commands.{c}"), &Some(v.clone()), 0.0)?;
                fees.commands.insert(c.clone(), v);
            }
        }
        let mut extra_commands = HashSet::new();
        for (i, c) in a.extra_commands.iter().enumerate() {
            let name = c.get_ref();
            let k = format!("{key}.extra_commands[{i}]");
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(self.err(k, Some(c.span()), "a command name: lowercase letters, digits and `_`"));
            }
            match judge(name, &Fields::new(), &HashSet::new()) {
                Verdict::Admin => {
                    return Err(self.err(
                        k,
                        Some(c.span()),
                        format!("`{name}` is an admin command of the node: it is never let through"),
                    ))
                }
                Verdict::Public(_) => {
                    return Err(self.err(k, Some(c.span()), format!("`{name}` is already a public command")))
                }
                Verdict::Unknown => {}
            }
            extra_commands.insert(name.clone());
        }
        let count = |v: &Option<Spanned<usize>>, k: &str, dflt: usize| match v {
            Some(n) if *n.get_ref() == 0 => Err(self.err(format!("{key}.{k}"), Some(n.span()), "must be at least 1")),
            Some(n) => Ok(*n.get_ref()),
            None => Ok(dflt),
        };
        let size = |v: &Option<Spanned<units::ByteSize>>, k: &str, dflt: usize| match v {
            Some(b) if b.get_ref().0 == 0 => {
                Err(self.err(format!("{key}.{k}"), Some(b.span()), "must be greater than 0"))
            }
            Some(b) => Ok(usize::try_from(b.get_ref().0).unwrap_or(usize::MAX)),
            None => Ok(dflt),
        };
        let time = |v: &Option<Spanned<units::Duration>>, k: &str, dflt: std::time::Duration| match v {
            Some(t) if t.get_ref().0.is_zero() => {
                Err(self.err(format!("{key}.{k}"), Some(t.span()), "must be greater than 0s"))
            }
            Some(t) => Ok(t.get_ref().0),
            None => Ok(dflt),
        };
        Ok(LedgerSettings {
            fees,
            extra_commands,
            max_subscriptions: count(&a.max_subscriptions, "max_subscriptions", d::DEFAULT_MAX_SUBSCRIPTIONS)?,
            max_subscriptions_per_group: count(
                &a.max_subscriptions_per_group,
                "max_subscriptions_per_group",
                d::DEFAULT_MAX_SUBSCRIPTIONS_PER_GROUP,
            )?,
            max_message: size(&a.max_message, "max_message", d::DEFAULT_MAX_MESSAGE)?,
            max_response: size(&a.max_response, "max_response", d::DEFAULT_MAX_RESPONSE)?,
            max_pending_output: size(
                &a.max_pending_output,
                "max_pending_output",
                d::DEFAULT_MAX_PENDING_OUTPUT,
            )?,
            slow_reader_timeout: time(
                &a.slow_reader_timeout,
                "slow_reader_timeout",
                d::DEFAULT_SLOW_READER_TIMEOUT,
            )?,
            header_timeout: time(&a.header_timeout, "header_timeout", api::DEFAULT_HEADER_TIMEOUT)?,
            keepalive_timeout: time(
                &a.keepalive_timeout,
                "keepalive_timeout",
                api::DEFAULT_KEEPALIVE_TIMEOUT,
            )?,
            request_timeout: time(&a.request_timeout, "request_timeout", api::DEFAULT_REQUEST_TIMEOUT)?,
            forwarded: a.forwarded.as_ref().is_some_and(|f| *f.get_ref()),
        })
    }
}
