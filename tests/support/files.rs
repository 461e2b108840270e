//! A loopback HTTP server of files the test changes as it goes (blocklists and their signatures), and
//! how many requests it served.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Default)]
pub struct Files {
    map: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    served: Arc<AtomicUsize>,
}

impl Files {
    /// Serves `path` (`/drop.txt`) with `body` from now on.
    pub fn put(&self, path: &str, body: impl Into<Vec<u8>>) {
        self.map.lock().unwrap().insert(path.to_string(), body.into());
    }

    /// Requests answered so far (any path, any status).
    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

/// Starts the server on 127.0.0.1; unknown paths get 404. One request per connection.
pub async fn serve() -> (SocketAddr, Files) {
    let files = Files::default();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let f = files.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            let f = f.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head);
                let path = text.split(' ').nth(1).unwrap_or("/").to_string();
                let body = f.map.lock().unwrap().get(&path).cloned();
                f.served.fetch_add(1, Ordering::SeqCst);
                let (status, body) = match body {
                    Some(b) => ("200 OK", b),
                    None => ("404 Not Found", b"not found\n".to_vec()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, files)
}
