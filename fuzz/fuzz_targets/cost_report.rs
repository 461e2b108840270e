//! Feeds arbitrary bytes to the cost-report decoders (a signed report from Redis, a link's `Costs`
//! message) and every decoded report to a ledger, bounded as a listed peer's would be: no panic, and no
//! group ends up charged more than one hard limit by one report.
#![no_main]

use gatehouse::cluster::cost::SignedCostReport;
use gatehouse::cluster::link::{decode_message, Msg};
use gatehouse::state::cost::{CostParams, GroupCost, Ledger, SystemClock};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use std::time::Duration;

fn feed(figures: &[GroupCost]) {
    let params = CostParams {
        group_private: true,
        ..CostParams::default()
    };
    let hard = params.hard_limit;
    let ledger = Ledger::new(params, Arc::new(SystemClock::new()));
    let taken = ledger.apply_remote_bounded([7; 32], figures, Duration::from_secs(5), Some(3.0));
    assert!(taken.taken + taken.ignored <= figures.len());
    for f in figures.iter().take(64) {
        let cost = ledger.remote_cost(f.group);
        assert!(cost <= hard, "{cost} > {hard}");
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = SignedCostReport::decode(data) {
        let _ = r.verify();
        feed(&r.figures);
    }
    if let Ok(Msg::Costs(figures)) = decode_message(data) {
        feed(&figures);
    }
});
