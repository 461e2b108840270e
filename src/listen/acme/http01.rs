//! The HTTP-01 answerer (`acme.http_listen`, port 80 in production): `GET /.well-known/acme-challenge/
//! <token>` gets the key authorization of a token being offered; everything else gets 404 and the
//! connection closed. It holds at most [`MAX_CONNECTIONS`] connections, each for at most
//! 30 s, so the port costs little to anyone who floods it.

use super::registry::Registry;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const PATH_PREFIX: &str = "/.well-known/acme-challenge/";
/// Connections held at once; further ones are closed at accept.
pub const MAX_CONNECTIONS: usize = 256;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

fn answer(registry: &Registry, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let found = match (req.method(), req.uri().path().strip_prefix(PATH_PREFIX)) {
        (&Method::GET | &Method::HEAD, Some(token)) => registry.http_answer(token),
        _ => None,
    };
    let (status, body) = match found {
        Some(ka) => (StatusCode::OK, Bytes::from(ka)),
        None => (StatusCode::NOT_FOUND, Bytes::from_static(b"not found\n")),
    };
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    if status != StatusCode::OK {
        r.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
    }
    r
}

pub async fn serve(listener: TcpListener, registry: Arc<Registry>, stop: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (sock, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let (registry, stop) = (registry.clone(), stop.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(move |req| {
                let r = answer(&registry, &req);
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(sock), svc);
            tokio::select! {
                _ = tokio::time::timeout(CONNECTION_LIFETIME, conn) => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}
