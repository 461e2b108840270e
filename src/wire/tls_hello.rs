//! The shape of a TLS ClientHello's first bytes, checked without terminating TLS: a peer port that
//! speaks TLS end to end (stoxumd / rippled) gets only connections that open as a TLS client does.

/// Bytes the check needs: the record header (5), the handshake type and length (4), the legacy version (2).
pub const HELLO_PREFIX: usize = 11;
/// TLS's largest plaintext record (2^14), plus the expansion a record may carry.
const MAX_RECORD: usize = 16384 + 2048;
/// The smallest ClientHello: version, random, empty session id, one cipher suite, one compression method.
const MIN_HELLO: usize = 2 + 32 + 1 + 2 + 2 + 1 + 1;

/// Why the first bytes are not a TLS ClientHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    #[error("not a handshake record")]
    NotHandshake,
    #[error("unknown record version")]
    RecordVersion,
    #[error("bad record length")]
    RecordLength,
    #[error("not a ClientHello")]
    NotClientHello,
    #[error("bad ClientHello length")]
    HelloLength,
    #[error("unknown ClientHello version")]
    HelloVersion,
    #[error("closed before a ClientHello")]
    Truncated,
}

fn known_version(major: u8, minor: u8) -> bool {
    // SSL 3.0 is accepted in the record layer only, where some clients still put it.
    major == 3 && minor <= 4
}

/// Checks a connection's first [`HELLO_PREFIX`] bytes (fewer only when the client closed).
pub fn check_client_hello(b: &[u8]) -> Result<(), HelloError> {
    let at = |i: usize| b.get(i).copied().ok_or(HelloError::Truncated);
    if at(0)? != 22 {
        return Err(HelloError::NotHandshake);
    }
    if !known_version(at(1)?, at(2)?) {
        return Err(HelloError::RecordVersion);
    }
    let record = usize::from(u16::from_be_bytes([at(3)?, at(4)?]));
    if !(4..=MAX_RECORD).contains(&record) {
        return Err(HelloError::RecordLength);
    }
    if at(5)? != 1 {
        return Err(HelloError::NotClientHello);
    }
    let hello = (usize::from(at(6)?) << 16) | (usize::from(at(7)?) << 8) | usize::from(at(8)?);
    // A ClientHello may span records, but never beyond what a client sends (64 KiB is far above any
    // real one, post-quantum key shares included).
    if !(MIN_HELLO..=65536).contains(&hello) {
        return Err(HelloError::HelloLength);
    }
    if at(9)? != 3 || !(1..=3).contains(&at(10)?) {
        return Err(HelloError::HelloVersion);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hellos_and_others() {
        let good = [22, 3, 1, 0, 200, 1, 0, 0, 196, 3, 3];
        assert_eq!(check_client_hello(&good), Ok(()));
        assert_eq!(check_client_hello(b"GET / HTTP/1.1"), Err(HelloError::NotHandshake));
        let mut b = good;
        b[1] = 2;
        assert_eq!(check_client_hello(&b), Err(HelloError::RecordVersion));
        let mut b = good;
        b[3] = 0xff;
        assert_eq!(check_client_hello(&b), Err(HelloError::RecordLength));
        let mut b = good;
        b[5] = 2;
        assert_eq!(check_client_hello(&b), Err(HelloError::NotClientHello));
        let mut b = good;
        b[8] = 3;
        assert_eq!(check_client_hello(&b), Err(HelloError::HelloLength));
        let mut b = good;
        b[10] = 9;
        assert_eq!(check_client_hello(&b), Err(HelloError::HelloVersion));
        assert_eq!(check_client_hello(&good[..6]), Err(HelloError::Truncated));
    }
}
