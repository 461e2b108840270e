//! Loopback addresses and sockets: free ports, clients bound to a chosen source address, and the bounded
//! waits that tell an admitted connection from a refused or closed one.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A loopback address with a port nothing listens on now (bound to port 0, then closed): for a gateway
/// or a cluster link bound later. An upstream that must refuse takes [`refusing_addr`] instead. The kernel may hand a port just closed out
/// again, so two calls in one test could name the same port: a port is never handed out twice by this
/// process.
pub fn free_addr() -> SocketAddr {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&addr.port()) {
            given.push(addr.port());
            return addr;
        }
    }
}

/// A loopback address that refuses every connection for as long as the value lives: its port is bound and
/// never listened on. A port that was only free when asked can be taken later, by a test's server or as
/// the ephemeral source port of an outgoing connect to that very address, which then connects to itself;
/// a bound port can be neither.
pub struct Refusing {
    pub addr: SocketAddr,
    held: TcpSocket,
}

impl Refusing {
    /// Starts listening on the address, with no moment in which another socket could take the port.
    pub fn revive(self) -> tokio::net::TcpListener {
        self.held.listen(1024).unwrap()
    }
}

pub fn refusing_addr() -> Refusing {
    let held = TcpSocket::new_v4().unwrap();
    held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    Refusing {
        addr: held.local_addr().unwrap(),
        held,
    }
}

/// The port of [`free_addr`].
pub fn free_port() -> u16 {
    free_addr().port()
}

/// An address literal, as tests name clients and groups.
pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Connects to `to` from source address `from` (127.0.0.2, ::1 …) so the gateway sees distinct clients.
/// The connect is bounded (5 s): a test that opens thousands of sockets gets an error, not a hang.
pub async fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let ip: IpAddr = from.parse().unwrap();
    let sock = if ip.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.bind(SocketAddr::new(ip, 0))?;
    let s = tokio::time::timeout(Duration::from_secs(5), sock.connect(to))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Polls (bounded by `limit`) until `pred` holds; returns how long it took.
pub async fn within(limit: Duration, mut pred: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if pred().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Reads until the peer closes (EOF or reset) and returns how long that took; panics after `limit`.
pub async fn closed_within<S: AsyncRead + Unpin>(s: &mut S, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), s.read(&mut buf)).await {
            Err(_) => panic!("connection still open after {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

/// True if the gateway closes the connection straight away without sending anything (a refusal).
pub async fn is_refused(from: &str, to: SocketAddr) -> bool {
    let mut s = match connect_from(from, to).await {
        Ok(s) => s,
        Err(_) => return true,
    };
    let _ = s.write_all(b"ping\n").await;
    let mut buf = [0u8; 16];
    match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => false,
        Err(_) => panic!("neither refused nor answered within 5s"),
    }
}

/// The blocking form of [`is_refused`], for tests without a runtime: true if a connection from `from` is
/// closed without a byte of answer. Raw TCP, so against a TLS front an admitted connection answers the
/// garbage with an alert.
pub fn refused_from(from: &str, to: SocketAddr) -> bool {
    use socket2::{Domain, Socket, Type};
    use std::io::{Read, Write};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(from.parse().unwrap(), 0).into()).unwrap();
    if sock.connect_timeout(&to.into(), Duration::from_secs(2)).is_err() {
        return true;
    }
    let mut s: std::net::TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    if s.write_all(b"ping\n").is_err() {
        return true;
    }
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
            panic!("{from}: neither refused nor answered within 5 s")
        }
        Err(_) => true,
    }
}

/// Sends a line through (plain or TLS) and expects it echoed back.
pub async fn echoes<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> bool {
    echoes_line(s, b"hello\n").await
}

/// Sends `line` through and expects exactly it back within 5 s.
pub async fn echoes_line<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, line: &[u8]) -> bool {
    if s.write_all(line).await.is_err() {
        return false;
    }
    let mut buf = vec![0u8; line.len()];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await,
        Ok(Ok(_))
    ) && buf == line
}

/// True if this process holds the IPv4 TCP socket `local` → `remote` (Linux: `/proc/net/tcp` for the
/// socket's inode, `/proc/self/fd` for who holds it): tells the in-process gateway's connections from
/// those of child processes.
pub fn holds_tcp(local: SocketAddr, remote: SocketAddr) -> bool {
    fn hex(a: SocketAddr) -> String {
        match a.ip() {
            IpAddr::V4(ip) => format!("{:08X}:{:04X}", u32::from_le_bytes(ip.octets()), a.port()),
            IpAddr::V6(_) => String::new(),
        }
    }
    let (l, r) = (hex(local), hex(remote));
    let table = std::fs::read_to_string("/proc/self/net/tcp").unwrap();
    let Some(inode) = table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.get(1) == Some(&l.as_str()) && f.get(2) == Some(&r.as_str())).then(|| f[9].to_string())
    }) else {
        return false;
    };
    let want = format!("socket:[{inode}]");
    std::fs::read_dir("/proc/self/fd").unwrap().flatten().any(|e| {
        std::fs::read_link(e.path())
            .map(|t| t.to_string_lossy() == want)
            .unwrap_or(false)
    })
}
