//! The in-flight budget keys of `[front.upstream]` (`max_in_flight`, `heavy_in_flight`,
//! `throttled_heavy_in_flight`, `throttled_heavy_share`, `max_queued`):
//! validated into `upstream::budget::BudgetSettings`, on Electrum fronts only, and one budget per backend
//! address across the fronts that name it.

use super::schema::{RawCount, RawFront};
use super::{ConfigError, Validator};
use crate::front::{Front, FrontKind};
use crate::upstream::budget::{
    BudgetSettings, HeavyInFlight, InFlight, Share, DEFAULT_MAX_QUEUED, DEFAULT_THROTTLED_HEAVY_IN_FLIGHT,
    DEFAULT_THROTTLED_HEAVY_SHARE, MAX_CONFIGURED,
};
use std::net::SocketAddr;
use toml::Spanned;

impl Validator<'_> {
    /// The front's budget settings; `key` is `front[i].upstream`.
    pub(super) fn budget(&self, key: &str, f: &RawFront) -> Result<BudgetSettings, ConfigError> {
        let u = &f.upstream;
        if f.kind != FrontKind::Electrum {
            let present = [
                ("max_in_flight", u.max_in_flight.as_ref().map(Spanned::span)),
                ("heavy_in_flight", u.heavy_in_flight.as_ref().map(Spanned::span)),
                (
                    "throttled_heavy_in_flight",
                    u.throttled_heavy_in_flight.as_ref().map(Spanned::span),
                ),
                (
                    "throttled_heavy_share",
                    u.throttled_heavy_share.as_ref().map(Spanned::span),
                ),
                ("max_queued", u.max_queued.as_ref().map(Spanned::span)),
            ];
            if let Some((k, span)) = present.into_iter().find(|(_, s)| s.is_some()) {
                return Err(self.err(
                    format!("{key}.{k}"),
                    span,
                    "only Electrum fronts (kind = \"electrum\") have an in-flight budget",
                ));
            }
            return Ok(BudgetSettings {
                max_in_flight: InFlight::Off,
                ..BudgetSettings::default()
            });
        }
        let max_in_flight = match &u.max_in_flight {
            None => InFlight::default(),
            Some(v) => match v.get_ref() {
                RawCount::Word(w) if w == "auto" => InFlight::Auto,
                RawCount::Word(w) if w == "off" => InFlight::Off,
                RawCount::Count(n) => InFlight::Fixed(self.count(&format!("{key}.max_in_flight"), v, *n)?),
                RawCount::Word(w) => {
                    return Err(self.err(
                        format!("{key}.max_in_flight"),
                        Some(v.span()),
                        format!("expected \"auto\", \"off\" or a number of requests, not {w:?}"),
                    ))
                }
            },
        };
        let off = max_in_flight == InFlight::Off;
        let heavy_in_flight = match &u.heavy_in_flight {
            None => HeavyInFlight::default(),
            Some(v) => {
                let k = format!("{key}.heavy_in_flight");
                self.needs_budget(off, &k, v)?;
                match v.get_ref() {
                    RawCount::Word(w) if w == "auto" => HeavyInFlight::Auto,
                    RawCount::Count(n) => {
                        let h = self.count(&k, v, *n)?;
                        if let InFlight::Fixed(m) = max_in_flight {
                            if h > m {
                                return Err(self.err(
                                    k,
                                    Some(v.span()),
                                    format!("{h} exceeds max_in_flight = {m}: heavy requests count against both"),
                                ));
                            }
                        }
                        HeavyInFlight::Fixed(h)
                    }
                    RawCount::Word(w) => {
                        return Err(self.err(
                            k,
                            Some(v.span()),
                            format!("expected \"auto\" or a number of requests, not {w:?}"),
                        ))
                    }
                }
            }
        };
        let throttled_heavy_in_flight = match &u.throttled_heavy_in_flight {
            None => Some(DEFAULT_THROTTLED_HEAVY_IN_FLIGHT),
            Some(v) => {
                let k = format!("{key}.throttled_heavy_in_flight");
                self.needs_budget(off, &k, v)?;
                match v.get_ref() {
                    RawCount::Word(w) if w == "off" => None,
                    RawCount::Count(n) => Some(self.count(&k, v, *n)?),
                    RawCount::Word(w) => {
                        return Err(self.err(
                            k,
                            Some(v.span()),
                            format!("expected \"off\" or a number of requests, not {w:?}"),
                        ))
                    }
                }
            }
        };
        let throttled_heavy_share = match &u.throttled_heavy_share {
            None => Some(DEFAULT_THROTTLED_HEAVY_SHARE),
            Some(v) => {
                let k = format!("{key}.throttled_heavy_share");
                self.needs_budget(off, &k, v)?;
                if throttled_heavy_in_flight.is_none() && v.get_ref() != "off" {
                    return Err(self.err(
                        k,
                        Some(v.span()),
                        "needs a throttled budget: throttled_heavy_in_flight is \"off\"",
                    ));
                }
                match v.get_ref().as_str() {
                    "off" => None,
                    text => Some(parse_share(text).ok_or_else(|| {
                        self.err(
                            k,
                            Some(v.span()),
                            format!("expected \"off\" or a percentage from \"0.1%\" to \"100%\", not {text:?}"),
                        )
                    })?),
                }
            }
        };
        let max_queued = match &u.max_queued {
            None => DEFAULT_MAX_QUEUED,
            Some(v) => {
                let k = format!("{key}.max_queued");
                self.needs_budget(off, &k, v)?;
                self.count(&k, v, *v.get_ref())? as usize
            }
        };
        Ok(BudgetSettings {
            max_in_flight,
            heavy_in_flight,
            throttled_heavy_in_flight,
            throttled_heavy_share,
            max_queued,
        })
    }

    /// A key that tunes the budget, refused on a front whose budget is switched off.
    fn needs_budget<T>(&self, off: bool, key: &str, at: &Spanned<T>) -> Result<(), ConfigError> {
        if off {
            return Err(self.err(key, Some(at.span()), "needs a budget: max_in_flight is \"off\""));
        }
        Ok(())
    }

    fn count<T>(&self, key: &str, at: &Spanned<T>, n: i64) -> Result<u32, ConfigError> {
        if n < 1 {
            return Err(self.err(
                key,
                Some(at.span()),
                format!(
                    "{n} would never let a request through: at least 1 (\"off\" on max_in_flight turns the budget off)"
                ),
            ));
        }
        u32::try_from(n)
            .ok()
            .filter(|&n| n <= MAX_CONFIGURED)
            .ok_or_else(|| self.err(key, Some(at.span()), format!("{n} is more than {MAX_CONFIGURED}")))
    }

    /// A backend has one budget, whichever Electrum fronts name it: they must agree on its settings.
    pub(super) fn budgets_agree(&self, fronts: &[Front], raw: &[RawFront]) -> Result<(), ConfigError> {
        let mut seen: Vec<(SocketAddr, BudgetSettings, &str)> = Vec::new();
        for (i, (f, rf)) in fronts.iter().zip(raw).enumerate() {
            if f.kind != FrontKind::Electrum {
                continue;
            }
            for (j, addr) in f.upstreams.iter().enumerate() {
                match seen.iter().find(|(a, _, _)| a == addr) {
                    Some((_, s, name)) if *s != f.budget => {
                        return Err(self.err(
                            format!("front[{i}].upstreams[{j}]"),
                            rf.upstreams.get(j).map(Spanned::span),
                            format!(
                                "{addr} is also an upstream of front `{name}`, with other in-flight settings: a \
                                 backend has one budget, so give both fronts the same max_in_flight, \
                                 heavy_in_flight, throttled_heavy_in_flight, throttled_heavy_share and max_queued"
                            ),
                        ))
                    }
                    Some(_) => {}
                    None => seen.push((*addr, f.budget, &f.name)),
                }
            }
        }
        Ok(())
    }
}

/// "5%", "0.5%", "100%": a share in thousandths, at most one decimal place, from 0.1 % to 100 %.
fn parse_share(text: &str) -> Option<Share> {
    let number = text.strip_suffix('%')?.trim_end();
    let (whole, tenth) = match number.split_once('.') {
        Some((w, t)) if t.len() == 1 => (w, t),
        Some(_) => return None,
        None => (number, "0"),
    };
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || !tenth.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let permille = whole.parse::<u32>().ok()?.checked_mul(10)? + tenth.parse::<u32>().ok()?;
    (1..=1000).contains(&permille).then_some(Share(permille as u16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_percentages_with_one_decimal_place() {
        assert_eq!(parse_share("5%"), Some(Share(50)));
        assert_eq!(parse_share("0.5%"), Some(Share(5)));
        assert_eq!(parse_share("100%"), Some(Share(1000)));
        assert_eq!(parse_share("12.5 %"), Some(Share(125)));
        for bad in [
            "0%", "0.0%", "100.1%", "5", "5.25%", "-1%", "%", ".5%", "5.%", "1e1%", "x%",
        ] {
            assert_eq!(parse_share(bad), None, "{bad}");
        }
    }
}
