//! The node's load model as this front reads it: the cost engine's fee profile (a balance per client
//! group that decays over `[cost.ledger] window`, with its warning and drop thresholds).

use crate::state::cost::{Account, FeeLoad};

/// Where a client stands after a charge.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    /// Replies carry `"warning":"load"`.
    pub warning: bool,
    /// The client is cut off: WebSocket close 1008, HTTP 503, and a ban.
    pub drop: bool,
}

impl From<FeeLoad> for Load {
    fn from(f: FeeLoad) -> Load {
        Load {
            warning: f.warning,
            drop: f.drop,
        }
    }
}

/// Charges `fee` to the client's account.
pub fn charge(account: &Account, fee: f64) -> Load {
    account.charge_fee(fee).into()
}

/// Where the client stands now, without a charge.
pub fn now(account: &Account) -> Load {
    account.fee_load().into()
}
