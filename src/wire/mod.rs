//! Pure codecs and value formats, with no gateway state: the PROXY header, unit-carrying values, address
//! prefix sets, address canonicalisation, RFC 3339 times and the relay's buffer pool.

pub mod acl;
pub mod addr;
pub mod buf;
pub mod proxy;
pub mod time;
pub mod units;
