//! The node's load model as this front reads it: what a charge left the client's balance at, and whether
//! that balance has reached the warning or the drop threshold.

use crate::state::cost::Account;

/// Where a client stands after a charge.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    /// Responses carry `"warning":"load"`.
    pub warning: bool,
    /// The client is cut off: WebSocket close 1008, HTTP 503, and a ban.
    pub drop: bool,
}

/// Charges `fee` to the client's account.
pub fn charge(account: &Account, fee: f64) -> Load {
    let t = account.charge(fee);
    Load {
        warning: t.frac > 0.0,
        drop: t.over_hard,
    }
}

/// Where the client stands now, without a charge.
pub fn now(account: &Account) -> Load {
    let t = account.throttle();
    Load {
        warning: t.frac > 0.0,
        drop: t.over_hard,
    }
}
