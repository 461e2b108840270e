//! The anchors the gateway's rows are read against: HAProxy (TLS → TCP, no protocol awareness) and nginx's
//! stream module, each with one worker, the same certificate, in front of the same stub backend, pinned to the
//! same core as the gateway when `taskset` is there. Each is installed with apt-get when missing; a row that
//! cannot run says why instead of a figure.

use super::api_http::{haproxy_binary, wait_listening};
use super::{free_port, Gateway};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

/// The core the process under test runs on; the load generator keeps to the other one.
const SUT_CORE: &str = "0";
const LOAD_CORE: &str = "1";

fn have(bin: &str) -> bool {
    Path::new(bin).is_file()
}

/// A command that later starts run under (one that execs the program, as valgrind does), or none.
static WRAP: std::sync::Mutex<Option<Vec<String>>> = std::sync::Mutex::new(None);

/// Runs the processes started from now on under `wrap` (`None`: as themselves).
pub(super) fn wrap_starts(wrap: Option<Vec<String>>) {
    *WRAP.lock().unwrap() = wrap;
}

/// `cmd` pinned to the process-under-test core when `taskset` is there (it execs, so the pid is the
/// program's own), under the command [`wrap_starts`] set, if any.
pub(super) fn pinned(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let wrap = WRAP.lock().unwrap().clone().unwrap_or_default();
    let mut words = wrap.iter().map(std::ffi::OsStr::new).chain([program.as_ref()]);
    let mut c = if have("/usr/bin/taskset") {
        let mut c = Command::new("/usr/bin/taskset");
        c.args(["-c", SUT_CORE]);
        c
    } else {
        Command::new(words.next().expect("a program"))
    };
    c.args(words);
    c
}

/// Keeps this process (the load generator and stub backend) off the process-under-test core; says whether
/// pinning is in force.
pub(super) fn pin_load_generator() -> bool {
    have("/usr/bin/taskset")
        && Command::new("/usr/bin/taskset")
            .args(["-a", "-p", "-c", LOAD_CORE, &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

pub(super) fn apt_install(packages: &[&str]) -> bool {
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    install() || {
        let _ = Command::new("apt-get").args(["update", "-qq"]).status();
        install()
    }
}

const NGINX: &str = "/usr/sbin/nginx";
const NGINX_STREAM: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

fn nginx_binary() -> Result<&'static str, String> {
    if !(have(NGINX) && have(NGINX_STREAM)) {
        eprintln!("bench: installing nginx with its stream module (apt-get) for the anchor rows");
        apt_install(&["nginx-light", "libnginx-mod-stream"]);
    }
    if have(NGINX) && have(NGINX_STREAM) {
        Ok(NGINX)
    } else {
        Err("nginx with the stream module is not installed and apt-get could not install it".into())
    }
}

async fn started(mut cmd: Command, what: &str, addr: SocketAddr) -> Result<Gateway, String> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    let g = Gateway { child };
    if wait_listening(addr).await {
        Ok(g)
    } else {
        Err(format!("{what} did not start listening"))
    }
}

/// HAProxy terminating TLS 1.3 with one thread and relaying bytes to `backend`.
pub(super) async fn haproxy_tls(dir: &Path, backend: SocketAddr) -> Result<(Gateway, SocketAddr), String> {
    let bin = haproxy_binary()?;
    let pem = dir.join("anchor.pem");
    let cert = std::fs::read_to_string(dir.join("demo.crt")).map_err(|e| e.to_string())?;
    let key = std::fs::read_to_string(dir.join("demo.key")).map_err(|e| e.to_string())?;
    std::fs::write(&pem, format!("{cert}{key}")).map_err(|e| e.to_string())?;
    let port = free_port();
    let cfg = format!(
        "global\n  nbthread 1\n  maxconn 8000\n\
         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
         frontend tls\n  bind 127.0.0.1:{port} ssl crt {} ssl-min-ver TLSv1.3\n  default_backend stub\n\
         backend stub\n  server s1 {backend}\n",
        pem.display()
    );
    let path = dir.join("anchor-haproxy.cfg");
    std::fs::write(&path, cfg).map_err(|e| e.to_string())?;
    let mut cmd = pinned(&bin);
    cmd.args(["-db", "-f"]).arg(&path);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    Ok((started(cmd, "haproxy", addr).await?, addr))
}

/// HAProxy in TCP mode (plain in, plain out, no protocol awareness) with one thread, relaying to `backend`;
/// room for the flood rows' tens of thousands of connections.
pub(super) async fn haproxy_tcp(dir: &Path, backend: SocketAddr) -> Result<(Gateway, SocketAddr), String> {
    let bin = haproxy_binary()?;
    let port = free_port();
    let cfg = format!(
        "global\n  nbthread 1\n  maxconn 9000\n\
         defaults\n  mode tcp\n  maxconn 9000\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
         frontend tcp\n  bind 127.0.0.1:{port}\n  default_backend indexer\n\
         backend indexer\n  server s1 {backend} maxconn 9000\n"
    );
    let path = dir.join("anchor-haproxy-tcp.cfg");
    std::fs::write(&path, cfg).map_err(|e| e.to_string())?;
    let mut cmd = pinned(&bin);
    cmd.args(["-db", "-f"]).arg(&path);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    Ok((started(cmd, "haproxy", addr).await?, addr))
}

/// nginx's stream module terminating TLS 1.3 in one worker (no master) and relaying bytes to `backend`.
pub(super) async fn nginx_tls(dir: &Path, backend: SocketAddr) -> Result<(Gateway, SocketAddr), String> {
    let bin = nginx_binary()?;
    let port = free_port();
    let cfg = format!(
        "load_module {NGINX_STREAM};\ndaemon off;\nmaster_process off;\nworker_processes 1;\n\
         pid {dir}/anchor-nginx.pid;\nerror_log stderr error;\nworker_rlimit_nofile 20000;\n\
         events {{ worker_connections 8000; }}\n\
         stream {{\n  server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_protocols TLSv1.3;\n\
         ssl_certificate {dir}/demo.crt;\n    ssl_certificate_key {dir}/demo.key;\n    proxy_pass {backend};\n  }}\n}}\n",
        dir = dir.display()
    );
    let path = dir.join("anchor-nginx.conf");
    std::fs::write(&path, cfg).map_err(|e| e.to_string())?;
    let mut cmd = pinned(bin);
    cmd.args(["-e", "stderr", "-p"]).arg(dir).arg("-c").arg(&path);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    Ok((started(cmd, "nginx", addr).await?, addr))
}
