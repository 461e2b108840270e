//! Pure codecs and value formats, with no gateway state: the PROXY header, unit-carrying values, address
//! prefix sets, address canonicalisation, RFC 3339 times, the relay's buffer pool, a JSON object's top-level
//! members, and the shapes of peer protocols (Bitcoin's v1 framing, a TLS ClientHello).

pub mod acl;
pub mod acme;
pub mod addr;
pub mod bitcoin;
pub mod buf;
pub mod json;
pub mod proxy;
#[cfg(test)]
pub mod testing;
pub mod time;
pub mod tls_hello;
pub mod units;
