//! Descriptor passing for a live upgrade: the running process hands its listening sockets to its
//! successor over a unix stream socket (`SCM_RIGHTS`), and the successor finds its end of that socket
//! through an environment variable, the way socket activation announces descriptors.
//!
//! Only the OS calls live here; what travels and when is the business of `app::upgrade`.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// The variable naming the successor's end of the hand-over socket (a descriptor number).
pub const ENV_FD: &str = "GATEHOUSE_UPGRADE_FD";

/// More listening sockets than any configuration holds (fronts × addresses, admin, cluster); a message
/// announcing more is refused rather than letting the peer make us allocate at will.
pub const MAX_FDS: usize = 256;

/// Bytes of control buffer for `n` descriptors (`CMSG_SPACE(n * sizeof(int))`).
fn cmsg_space(n: usize) -> usize {
    let bytes = u32::try_from(n * std::mem::size_of::<RawFd>()).unwrap_or(u32::MAX);
    // SAFETY: CMSG_SPACE is pure arithmetic on its argument; it reads no memory.
    unsafe { libc::CMSG_SPACE(bytes) as usize }
}

/// Sends `payload` with `fds` attached as one `SCM_RIGHTS` message. Blocking; the socket is fresh, so
/// a small payload never waits.
pub fn send_with_fds(sock: &UnixStream, payload: &[u8], fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    if fds.len() > MAX_FDS || payload.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a descriptor message needs a payload and at most MAX_FDS descriptors",
        ));
    }
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    // u64 elements keep the buffer aligned for `cmsghdr` (which holds a size_t).
    let mut control = vec![0u64; cmsg_space(raw.len()).div_ceil(8)];
    let iov = [IoSlice::new(payload)];
    // SAFETY: msghdr is plain data; zeroed is a valid "no name, no iov, no control" value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = 1;
    if !raw.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = cmsg_space(raw.len()) as _;
        // SAFETY: msg_control points at `control`, at least CMSG_SPACE(len) bytes, aligned for cmsghdr
        // and zeroed, so CMSG_FIRSTHDR returns a pointer inside it (non-null, as msg_controllen covers
        // one header). We write the header fields and then exactly `raw.len()` ints at CMSG_DATA, which
        // CMSG_LEN(len) bytes from the header's start bound, all inside the buffer. `raw` lives on.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN((raw.len() * std::mem::size_of::<RawFd>()) as u32) as _;
            std::ptr::copy_nonoverlapping(raw.as_ptr(), libc::CMSG_DATA(cmsg).cast::<RawFd>(), raw.len());
        }
    }
    // SAFETY: `msg` points at `iov` (whose slice borrows `payload`) and at `control`, all alive for the
    // call; sendmsg only reads them. IoSlice is ABI-compatible with iovec. The descriptors in `raw` are
    // borrowed from `fds`, open for the call; the kernel duplicates them into the message.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if n as usize != payload.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            "descriptor message sent in part",
        ));
    }
    Ok(())
}

/// Receives one message into `buf` with the descriptors attached to it (close-on-exec, owned). Returns
/// the bytes read (0 at end of stream) and the descriptors. Blocking; the caller sets a read timeout.
pub fn recv_with_fds(sock: &UnixStream, buf: &mut [u8]) -> std::io::Result<(usize, Vec<OwnedFd>)> {
    let mut control = vec![0u64; cmsg_space(MAX_FDS).div_ceil(8)];
    let mut iov = [IoSliceMut::new(buf)];
    // SAFETY: as in send_with_fds, a zeroed msghdr is valid before we fill it.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr().cast();
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = cmsg_space(MAX_FDS) as _;
    // SAFETY: `msg` points at `iov` (borrowing `buf` mutably) and `control`, both alive and exclusively
    // ours for the call; recvmsg writes at most their stated lengths. MSG_CMSG_CLOEXEC makes the
    // received descriptors close-on-exec atomically, so no child started meanwhile inherits them.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: recvmsg filled `control` up to msg_controllen with well-formed headers (the kernel writes
    // them); CMSG_FIRSTHDR/CMSG_NXTHDR walk only within msg_control..msg_controllen and return null at
    // the end. For SCM_RIGHTS the data is an array of ints whose count follows from cmsg_len; we read it
    // unaligned. Each descriptor was just installed in our table by the kernel for this message and
    // nothing else refers to it, so wrapping each once in an OwnedFd gives it a single owner.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let len = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
                let count = len / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        // The descriptors that did arrive are closed when `fds` drops.
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "more descriptors than MAX_FDS were sent",
        ));
    }
    Ok((n as usize, fds))
}

/// A copy of `fd` without close-on-exec, for exactly one child to inherit: spawn the child, then drop
/// the copy. (The caller starts no other process meanwhile.)
pub fn inheritable_copy(fd: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    // SAFETY: F_DUPFD only reads the descriptor table entry of `fd`, borrowed and open for the call.
    let raw = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD, 3) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: F_DUPFD returned a fresh descriptor that nothing else refers to (and without
    // FD_CLOEXEC, which is what we want); the OwnedFd becomes its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Why [`ENV_FD`] names no usable hand-over socket.
#[derive(Debug, thiserror::Error)]
pub enum EnvFdError {
    #[error("{ENV_FD}={0:?} is not a descriptor number above 2")]
    NotANumber(std::ffi::OsString),
    #[error("{ENV_FD}={0}: the descriptor is not open")]
    NotOpen(RawFd),
    #[error("{ENV_FD}={0}: the descriptor is not a unix socket")]
    NotUnix(RawFd),
}

/// The successor's end of the hand-over socket, announced by [`ENV_FD`]. Reads and removes the variable
/// (so a child of ours does not take it for its own) and makes the descriptor close-on-exec. None when
/// the variable is absent; an error when it names no open socket.
///
/// Call it while the process is still single-threaded: it edits the environment.
pub fn take_env_fd() -> Result<Option<UnixStream>, EnvFdError> {
    let Some(v) = std::env::var_os(ENV_FD) else {
        return Ok(None);
    };
    std::env::remove_var(ENV_FD);
    let raw: RawFd = match v.to_str().and_then(|s| s.trim().parse().ok()) {
        Some(n) if n > 2 => n,
        _ => return Err(EnvFdError::NotANumber(v)),
    };
    // SAFETY: F_GETFD only queries the descriptor table entry; no memory is passed.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFD) };
    if flags < 0 {
        return Err(EnvFdError::NotOpen(raw));
    }
    // SAFETY: ownership. The variable is set only by a gatehouse process that starts this one as its
    // successor, with this descriptor inherited for it alone; nothing else in Gatehouse refers to
    // descriptors by number, we checked it is open, and the variable is removed above, so the number is
    // wrapped exactly once in this process. The OwnedFd (then the UnixStream) is its only owner.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: F_SETFD on a descriptor we own; no memory is passed.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, flags | libc::FD_CLOEXEC) };
    let sock = socket2::Socket::from(fd);
    match sock.domain() {
        Ok(d) if d == socket2::Domain::UNIX => Ok(Some(UnixStream::from(OwnedFd::from(sock)))),
        _ => Err(EnvFdError::NotUnix(raw)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn listeners_cross_a_socket_pair_and_still_accept() {
        let (a, b) = UnixStream::pair().unwrap();
        let l1 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let l2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        send_with_fds(&a, b"two\n", &[l1.as_fd(), l2.as_fd()]).unwrap();
        let mut buf = [0u8; 64];
        let (n, fds) = recv_with_fds(&b, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"two\n");
        assert_eq!(fds.len(), 2);
        let got: std::net::TcpListener = fds.into_iter().nth(1).unwrap().into();
        assert_eq!(got.local_addr().unwrap(), l2.local_addr().unwrap());
        drop(l2);
        // The received copy keeps the socket listening after the sender closes its own.
        let _c = std::net::TcpStream::connect(got.local_addr().unwrap()).unwrap();
        got.accept().unwrap();
    }

    #[test]
    fn plain_bytes_arrive_without_descriptors() {
        let (a, b) = UnixStream::pair().unwrap();
        send_with_fds(&a, b"x", &[]).unwrap();
        let mut buf = [0u8; 8];
        let (n, fds) = recv_with_fds(&b, &mut buf).unwrap();
        assert_eq!((n, fds.len()), (1, 0));
    }
}
