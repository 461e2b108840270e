//! Built-in ACME against a real Pebble (Debian package `pebble`, installed by `tests/run`), with real
//! challenge validation: Pebble resolves the test names to 127.0.0.1 through pebble-challtestsrv and
//! connects to the gateway's own TLS front (TLS-ALPN-01) or HTTP-01 listener.

use crate::support::backends::stub_backend;
use crate::support::clients::{http_exchange, sample};
use crate::support::gateway::{start_in, RELAXED};
use crate::support::net::{ip, within};
use crate::support::pebble::{connect_trusting, free_port_on, presented, Pebble};
use gatehouse::admin::AdminListen;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const DOMAIN: &str = "electrum.example.com";
const TOKEN: &str = "acme-test-admin-token";

struct Gw {
    running: gatehouse::Running,
    front: SocketAddr,
    admin: SocketAddr,
    dir: tempfile::TempDir,
}

/// A gateway with an Electrum TLS front on `front` serving the ACME certificate `main` for
/// [`DOMAIN`], the admin API, and `[acme]` made of `acme_keys` plus `extra`.
async fn gateway(front: SocketAddr, acme_keys: &str, extra: &str) -> Gw {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), TOKEN).unwrap();
    let backend = stub_backend(&[]).await;
    let toml = format!(
        "{RELAXED}[admin]\nenabled = true\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n\n\
         [acme]\n{acme_keys}retry_min = \"1s\"\nretry_max = \"2s\"\n{extra}\n\
         [[acme.certificate]]\nname = \"main\"\ndomains = [\"{DOMAIN}\"]\n\n\
         [[front]]\nname = \"wallets\"\nkind = \"electrum\"\nlisten = [\"{front}\"]\n\
         transport = \"tls\"\nupstreams = [\"{backend}\"]\n[front.tls]\nacme = \"main\"\n"
    );
    let running = start_in(dir.path(), &toml).await;
    let admin = match running.admin_addr() {
        Some(AdminListen::Tcp(a)) => *a,
        other => panic!("admin API not on TCP: {other:?}"),
    };
    Gw {
        running,
        front,
        admin,
        dir,
    }
}

async fn admin_get(gw: &Gw, path: &str) -> (u16, String) {
    let auth = format!("Bearer {TOKEN}");
    let (status, _, body) = http_exchange(gw.admin, "GET", path, Some(&auth), None).await;
    (status, body)
}

async fn certs(gw: &Gw) -> serde_json::Value {
    let (status, body) = admin_get(gw, "/v1/certs").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The `main` certificate's entry as `GET /v1/certs` lists it.
async fn main_cert(gw: &Gw) -> serde_json::Value {
    certs(gw).await["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "main")
        .cloned()
        .expect("main listed")
}

async fn metric(gw: &Gw, series: &str) -> Option<f64> {
    let (status, body) = admin_get(gw, "/metrics").await;
    assert_eq!(status, 200);
    sample(&body, series)
}

/// Waits until the front presents a chain that verifies against Pebble's root for [`DOMAIN`].
async fn wait_issued(gw: &Gw, root: &rustls::pki_types::CertificateDer<'static>) {
    let ok = within(Duration::from_secs(60), async || {
        connect_trusting(root, gw.front, DOMAIN).await.is_ok()
    })
    .await;
    let entry = main_cert(gw).await;
    assert!(
        ok.is_some(),
        "no Pebble-issued certificate on the front; /v1/certs: {entry}"
    );
}

/// One Electrum exchange through the front, over a session that trusts only Pebble's root.
async fn electrum_roundtrip<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(s: &mut BufReader<S>, id: u32) {
    let line =
        format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"server.version\",\"params\":[\"t\",\"1.4\"]}}\n");
    s.get_mut().write_all(line.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_line(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    assert!(answer.contains(&format!("\"id\":{id}")), "{answer}");
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_issues_a_certificate_chaining_to_pebble_served_by_the_electrum_front() {
    let at = ip("127.0.0.61");
    let front = SocketAddr::new(at, free_port_on(at));
    let pebble = Pebble::start(at, free_port_on(at), front.port(), None);
    let state = tempfile::tempdir().unwrap();
    let gw = gateway(front, &pebble.acme_keys(state.path()), "challenge = \"tls-alpn-01\"\n").await;
    let root = pebble.root().await;
    wait_issued(&gw, &root).await;
    // A wallet trusting only Pebble's root completes an Electrum exchange through the front.
    let s = connect_trusting(&root, gw.front, DOMAIN).await.unwrap();
    electrum_roundtrip(&mut BufReader::new(s), 1).await;

    // The account and the pair are kept in the state folder, readable by the gateway's user only.
    let acme_dir = state.path().join("acme");
    let files: Vec<_> = std::fs::read_dir(&acme_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(files
        .iter()
        .any(|p| p.file_name().unwrap().to_string_lossy().starts_with("account-")));
    for f in ["main.pem", "main.key"] {
        assert_eq!(mode(&acme_dir.join(f)), 0o600, "{f}");
    }
    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    let entry = main_cert(&gw).await;
    assert_eq!(entry["source"], "acme", "{entry}");
    assert_eq!(entry["front"], "wallets");
    assert!(entry["issuer"].as_str().unwrap().contains("Pebble"), "{entry}");
    assert!(entry["next_renewal"].as_i64().unwrap() > entry["not_before"].as_i64().unwrap());
    // Counted process-wide, so other tests' orders may be in it too.
    assert!(metric(&gw, "gatehouse_acme_orders_total{result=\"issued\"}").await >= Some(1.0));
    let expiry = metric(
        &gw,
        "gatehouse_tls_certificate_expiry_timestamp_seconds{front=\"wallets\",name=\"main\"}",
    )
    .await;
    assert_eq!(expiry, entry["not_after"].as_f64());
    let (status, body) = admin_get(&gw, "/readyz").await;
    assert_eq!(status, 200);
    assert!(!body.contains("placeholder"), "{body}");
    gw.running.shutdown().await;
    drop(gw.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_01_issues_through_the_challenge_listener_which_answers_nothing_else() {
    let at = ip("127.0.0.62");
    let front = SocketAddr::new(at, free_port_on(at));
    let http = SocketAddr::new(at, free_port_on(at));
    let pebble = Pebble::start(at, http.port(), front.port(), None);
    let state = tempfile::tempdir().unwrap();
    let extra = format!("challenge = \"http-01\"\nhttp_listen = \"{http}\"\n");
    let gw = gateway(front, &pebble.acme_keys(state.path()), &extra).await;
    let root = pebble.root().await;
    wait_issued(&gw, &root).await;
    let s = connect_trusting(&root, gw.front, DOMAIN).await.unwrap();
    electrum_roundtrip(&mut BufReader::new(s), 7).await;
    // Anything but a challenge token being offered is refused.
    for path in ["/", "/.well-known/acme-challenge/unknown-token", "/admin"] {
        let (status, _, _) = http_exchange(http, "GET", path, None, None).await;
        assert_eq!(status, 404, "{path}");
    }
    // No front answers TLS-ALPN-01 with this challenge type: an acme-tls/1 hello gets the real certificate.
    gw.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_to_new_handshakes_while_open_sessions_carry_on() {
    let at = ip("127.0.0.63");
    let front = SocketAddr::new(at, free_port_on(at));
    // Certificates of 12 s: renewed about 8 s after issuance.
    let pebble = Pebble::start(at, free_port_on(at), front.port(), Some(12));
    let state = tempfile::tempdir().unwrap();
    let gw = gateway(front, &pebble.acme_keys(state.path()), "").await;
    let root = pebble.root().await;
    wait_issued(&gw, &root).await;
    let first = presented(gw.front, DOMAIN).await[0].clone();
    let s = connect_trusting(&root, gw.front, DOMAIN).await.unwrap();
    let mut session = BufReader::new(s);
    electrum_roundtrip(&mut session, 1).await;
    let renewed = within(Duration::from_secs(30), async || {
        presented(gw.front, DOMAIN).await[0] != first
    })
    .await;
    assert!(renewed.is_some(), "no renewal within 30 s: {}", main_cert(&gw).await);
    // The new one chains to Pebble too, and the session opened before the renewal still works.
    connect_trusting(&root, gw.front, DOMAIN).await.unwrap();
    electrum_roundtrip(&mut session, 2).await;
    assert!(metric(&gw, "gatehouse_acme_orders_total{result=\"issued\"}").await >= Some(2.0));
    gw.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_pebble_gone_a_renewal_fails_the_old_certificate_stays_and_a_retry_is_scheduled() {
    let at = ip("127.0.0.64");
    let front = SocketAddr::new(at, free_port_on(at));
    let mut pebble = Pebble::start(at, free_port_on(at), front.port(), Some(20));
    let state = tempfile::tempdir().unwrap();
    let gw = gateway(front, &pebble.acme_keys(state.path()), "").await;
    let root = pebble.root().await;
    wait_issued(&gw, &root).await;
    let first = presented(gw.front, DOMAIN).await[0].clone();
    pebble.stop();
    // The renewal (due about 13 s after issuance) fails: counted, and another attempt is scheduled.
    let failed = within(Duration::from_secs(30), async || {
        main_cert(&gw).await["failures"].as_u64() >= Some(1)
    })
    .await;
    let entry = main_cert(&gw).await;
    assert!(failed.is_some(), "no failed renewal: {entry}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        entry["next_renewal"].as_i64().unwrap() >= now,
        "no retry scheduled: {entry}"
    );
    assert!(entry["last_error"].as_str().is_some(), "{entry}");
    assert_eq!(entry["source"], "acme");
    assert!(metric(&gw, "gatehouse_acme_orders_total{result=\"failed\"}").await >= Some(1.0));
    // The old certificate is still what new handshakes get, and it still verifies.
    assert_eq!(presented(gw.front, DOMAIN).await[0], first);
    connect_trusting(&root, gw.front, DOMAIN).await.unwrap();
    gw.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn until_the_first_order_succeeds_a_placeholder_is_served_and_said_in_readyz() {
    // A directory nobody answers at: every order fails.
    let at = ip("127.0.0.65");
    let closed = free_port_on(at);
    let state = tempfile::tempdir().unwrap();
    let ca = crate::support::tls::certs();
    let keys = format!(
        "directory = \"https://{at}:{closed}/dir\"\nca_root = \"{}\"\nstate_dir = \"{}\"\n",
        ca.cert.display(),
        state.path().display()
    );
    let gw = gateway(SocketAddr::new(at, free_port_on(at)), &keys, "").await;
    let chain = presented(gw.front, DOMAIN).await;
    let (_, leaf) = x509_parser::parse_x509_certificate(chain[0].as_ref()).unwrap();
    assert!(leaf.issuer().to_string().contains("placeholder"), "{}", leaf.issuer());
    let (status, body) = admin_get(&gw, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("placeholder for main"), "{body}");
    let failed = within(Duration::from_secs(10), async || {
        main_cert(&gw).await["failures"].as_u64() >= Some(1)
    })
    .await;
    assert!(failed.is_some(), "{}", main_cert(&gw).await);
    assert_eq!(main_cert(&gw).await["source"], "placeholder");
    gw.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_sni_keep_the_old_self_signed_identity_while_sni_clients_get_the_acme_certificate() {
    let at = ip("127.0.0.66");
    let front = SocketAddr::new(at, free_port_on(at));
    let pebble = Pebble::start(at, free_port_on(at), front.port(), None);
    let state = tempfile::tempdir().unwrap();
    let old = crate::support::tls::certs_named("old-identity");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), TOKEN).unwrap();
    let backend = stub_backend(&[]).await;
    let toml = format!(
        "{RELAXED}[acme]\n{}retry_min = \"1s\"\n[[acme.certificate]]\nname = \"main\"\ndomains = [\"{DOMAIN}\"]\n\n\
         [[front]]\nname = \"wallets\"\nkind = \"electrum\"\nlisten = [\"{front}\"]\ntransport = \"tls\"\n\
         upstreams = [\"{backend}\"]\n[front.tls]\ncert = \"{}\"\nkey = \"{}\"\n\
         [[front.tls.sni]]\nname = \"{DOMAIN}\"\nacme = \"main\"\n",
        pebble.acme_keys(state.path()),
        old.cert.display(),
        old.key.display()
    );
    let running = start_in(dir.path(), &toml).await;
    let root = pebble.root().await;
    let ok = within(Duration::from_secs(60), async || {
        connect_trusting(&root, front, DOMAIN).await.is_ok()
    })
    .await;
    assert!(ok.is_some(), "no Pebble-issued certificate for the SNI name");
    // A wallet that sends no SNI (it connects by IP) and pinned the old certificate still gets it.
    // (rustls sends no SNI when the server name is an IP address.)
    assert_eq!(presented(front, &at.to_string()).await[0], old.der);
    // One sending the public name gets the CA-signed one.
    assert_ne!(presented(front, DOMAIN).await[0], old.der);
    running.shutdown().await;
}

#[tokio::test]
async fn check_reports_bad_acme_settings_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let certs = crate::support::tls::certs();
    let state = dir.path().display().to_string();
    let base = |acme: &str, tls: &str| {
        format!(
            "[acme]\nstate_dir = \"{state}\"\n{acme}\n[[acme.certificate]]\nname = \"main\"\ndomains = [\"{DOMAIN}\"]\n\n\
             [[front]]\nname = \"wallets\"\nkind = \"peer\"\nlisten = [\"127.0.0.1:0\"]\ntransport = \"tls\"\n\
             upstreams = [\"127.0.0.1:1\"]\n[front.tls]\n{tls}\n"
        )
    };
    let path = dir.path().join("gatehouse.toml");
    let expect = |text: String, needle: &str, key: &str, reason: &str| {
        let line = text.lines().position(|l| l.contains(needle)).unwrap() + 1;
        let err = gatehouse::config::Config::parse(&text, &path).unwrap_err().to_string();
        let want = format!("{}:{line}: {key}: ", path.display());
        assert!(
            err.starts_with(&want) && err.contains(reason),
            "{err}\nwanted {want}… {reason}"
        );
    };
    expect(
        base("", "acme = \"nope\""),
        "acme = \"nope\"",
        "front[0].tls.acme",
        "no [[acme.certificate]] is named `nope`",
    );
    expect(
        base("challenge = \"http-01\"", "acme = \"main\""),
        "challenge",
        "acme.http_listen",
        "needs http_listen",
    );
    expect(
        base("directory = \"http://acme.example/dir\"", "acme = \"main\""),
        "directory",
        "acme.directory",
        "must be an https:// URL",
    );
    expect(
        base("contact = [\"ops@example.com\"]", "acme = \"main\""),
        "contact",
        "acme.contact[0]",
        "mailto:",
    );
    let wild = base("", "acme = \"main\"").replace(&format!("[\"{DOMAIN}\"]"), "[\"*.example.com\"]");
    expect(
        wild,
        "*.example.com",
        "acme.certificate[0].domains[0]",
        "wildcards need the DNS-01",
    );
    let both = base(
        "",
        &format!(
            "acme = \"main\"\ncert = \"{}\"\nkey = \"{}\"",
            certs.cert.display(),
            certs.key.display()
        ),
    );
    expect(both, "acme = \"main\"", "front[0].tls.acme", "not both");
    // With TLS-ALPN-01 some TLS front must serve the certificate, or nothing can answer the CA.
    let unserved = base(
        "",
        &format!("cert = \"{}\"\nkey = \"{}\"", certs.cert.display(), certs.key.display()),
    );
    let err = gatehouse::config::Config::parse(&unserved, &path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("acme.certificate[0].name: no TLS front serves `main`"),
        "{err}"
    );
}

#[tokio::test]
async fn file_certificates_have_expiry_metrics_and_one_within_seven_days_counts_as_expiring() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), TOKEN).unwrap();
    // A certificate ending in three days.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let not_after = std::time::SystemTime::now() + Duration::from_secs(3 * 86400);
    params.not_after = not_after.into();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.path().join("soon.crt"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("soon.key"), key.serialize_pem()).unwrap();
    let backend = stub_backend(&[]).await;
    let toml = format!(
        "{RELAXED}[admin]\nenabled = true\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n\n\
         [[front]]\nname = \"expiring\"\nkind = \"peer\"\nlisten = [\"127.0.0.1:0\"]\ntransport = \"tls\"\n\
         upstreams = [\"{backend}\"]\n[front.tls]\ncert = \"soon.crt\"\nkey = \"soon.key\"\n"
    );
    let running = start_in(dir.path(), &toml).await;
    let admin = match running.admin_addr() {
        Some(AdminListen::Tcp(a)) => *a,
        other => panic!("{other:?}"),
    };
    let auth = format!("Bearer {TOKEN}");
    let (_, _, body) = http_exchange(admin, "GET", "/metrics", Some(&auth), None).await;
    let want = not_after.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as f64;
    assert_eq!(
        sample(
            &body,
            "gatehouse_tls_certificate_expiry_timestamp_seconds{front=\"expiring\",name=\"default\"}"
        ),
        Some(want),
        "{body}"
    );
    assert_eq!(
        sample(&body, "gatehouse_tls_certificates_expiring"),
        Some(1.0),
        "{body}"
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_adds_a_certificate_orders_it_and_keeps_the_one_in_force() {
    let at = ip("127.0.0.67");
    let front = SocketAddr::new(at, free_port_on(at));
    let pebble = Pebble::start(at, free_port_on(at), front.port(), None);
    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let backend = stub_backend(&[]).await;
    let toml = |more_certs: &str, more_sni: &str| {
        format!(
            "{RELAXED}[acme]\n{}retry_min = \"1s\"\n[[acme.certificate]]\nname = \"main\"\ndomains = [\"{DOMAIN}\"]\n{more_certs}\n\
             [[front]]\nname = \"wallets\"\nkind = \"electrum\"\nlisten = [\"{front}\"]\ntransport = \"tls\"\n\
             upstreams = [\"{backend}\"]\n[front.tls]\nacme = \"main\"\n{more_sni}",
            pebble.acme_keys(state.path())
        )
    };
    let path = dir.path().join("gatehouse.toml");
    let mut running = start_in(dir.path(), &toml("", "")).await;
    let root = pebble.root().await;
    let ok = within(Duration::from_secs(60), async || {
        connect_trusting(&root, front, DOMAIN).await.is_ok()
    })
    .await;
    assert!(ok.is_some(), "no certificate for {DOMAIN}");
    let first = presented(front, DOMAIN).await[0].clone();
    let second = "wss.example.com";
    let text = toml(
        &format!("[[acme.certificate]]\nname = \"web\"\ndomains = [\"{second}\"]\n"),
        &format!("[[front.tls.sni]]\nname = \"{second}\"\nacme = \"web\"\n"),
    );
    let cfg = gatehouse::config::Config::parse(&text, &path).unwrap();
    running.reload(cfg).await.unwrap();
    let ok = within(Duration::from_secs(60), async || {
        connect_trusting(&root, front, second).await.is_ok()
    })
    .await;
    assert!(ok.is_some(), "no certificate for {second} after the reload");
    // The certificate already in force was neither dropped nor ordered again.
    assert_eq!(presented(front, DOMAIN).await[0], first);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_in_a_cluster_end_with_one_order_and_the_same_certificate() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), TOKEN).unwrap();
    let keys = crate::support::gateway::node_keys(dir.path(), 2);
    let pk = |i: usize| gatehouse::cluster::keys::PublicKey::parse(&keys[i]).unwrap();
    // The lowest key orders; the CA's validation is sent to the other gateway, which can answer it only
    // with the challenge the orderer shared.
    let orderer = if pk(0) < pk(1) { 0 } else { 1 };
    let follower = 1 - orderer;
    let ips = [ip("127.0.0.68"), ip("127.0.0.69")];
    let port = free_port_on(ips[0]);
    let fronts = ips.map(|a| SocketAddr::new(a, port));
    let links: Vec<SocketAddr> = ips.iter().map(|&a| SocketAddr::new(a, free_port_on(a))).collect();
    let pebble = Pebble::start(ips[follower], free_port_on(ips[follower]), port, None);
    let backend = stub_backend(&[]).await;
    let states = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut gateways = Vec::new();
    for i in 0..2 {
        let peers = crate::support::gateway::cluster_peers(i, &links, &keys);
        let toml = format!(
            "{RELAXED}[admin]\nenabled = true\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n\n\
             [cluster]\nnode_key = \"node{i}.key\"\nlisten = \"{}\"\n{peers}\n\
             [acme]\n{}retry_min = \"1s\"\nretry_max = \"2s\"\n\
             [[acme.certificate]]\nname = \"main\"\ndomains = [\"{DOMAIN}\"]\n\n\
             [[front]]\nname = \"wallets\"\nkind = \"electrum\"\nlisten = [\"{}\"]\ntransport = \"tls\"\n\
             upstreams = [\"{backend}\"]\n[front.tls]\nacme = \"main\"\n",
            links[i],
            pebble.acme_keys(states[i].path()),
            fronts[i]
        );
        gateways.push(start_in(dir.path(), &toml).await);
    }
    let admins: Vec<SocketAddr> = gateways
        .iter()
        .map(|g| match g.admin_addr() {
            Some(AdminListen::Tcp(a)) => *a,
            other => panic!("{other:?}"),
        })
        .collect();
    let root = pebble.root().await;
    for (i, front) in fronts.iter().enumerate() {
        let ok = within(Duration::from_secs(60), async || {
            connect_trusting(&root, *front, DOMAIN).await.is_ok()
        })
        .await;
        let auth = format!("Bearer {TOKEN}");
        let (_, _, body) = http_exchange(admins[i], "GET", "/v1/certs", Some(&auth), None).await;
        assert!(ok.is_some(), "gateway {i} has no Pebble certificate: {body}");
    }
    // One order: both serve the very same certificate, and the follower names who ordered it.
    assert_eq!(
        presented(fronts[0], DOMAIN).await[0],
        presented(fronts[1], DOMAIN).await[0]
    );
    let auth = format!("Bearer {TOKEN}");
    let entry = |body: String| -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["certificates"][0].clone()
    };
    let f = entry(
        http_exchange(admins[follower], "GET", "/v1/certs", Some(&auth), None)
            .await
            .2,
    );
    assert_eq!(f["ordered_by"], keys[orderer].as_str(), "{f}");
    assert_eq!(f["source"], "acme", "{f}");
    let o = entry(
        http_exchange(admins[orderer], "GET", "/v1/certs", Some(&auth), None)
            .await
            .2,
    );
    assert!(o.get("ordered_by").is_none(), "{o}");
    // The follower keeps the shared pair in its own state folder, 0600.
    assert_eq!(mode(&states[follower].path().join("acme/main.key")), 0o600);
    for g in gateways {
        g.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_whose_orderer_stays_away_orders_itself_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let keys = crate::support::gateway::node_keys(dir.path(), 2);
    let pk = |i: usize| gatehouse::cluster::keys::PublicKey::parse(&keys[i]).unwrap();
    // This gateway is the one with the higher key; the orderer (the lower key) never starts.
    let (me, orderer) = if pk(0) < pk(1) { (1, 0) } else { (0, 1) };
    let at = ip("127.0.0.70");
    let front = SocketAddr::new(at, free_port_on(at));
    let links: Vec<SocketAddr> = (0..2).map(|_| SocketAddr::new(at, free_port_on(at))).collect();
    let pebble = Pebble::start(at, free_port_on(at), front.port(), None);
    let state = tempfile::tempdir().unwrap();
    let backend = stub_backend(&[]).await;
    let peers = crate::support::gateway::cluster_peers(me, &links, &keys);
    let toml = format!(
        "{RELAXED}[admin]\nenabled = true\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n\n\
         [cluster]\nnode_key = \"node{me}.key\"\nlisten = \"{}\"\n{peers}\n\
         [acme]\n{}retry_min = \"1s\"\norderer_grace = \"3s\"\n\
         [[acme.certificate]]\nname = \"main\"\ndomains = [\"{DOMAIN}\"]\n\n\
         [[front]]\nname = \"wallets\"\nkind = \"electrum\"\nlisten = [\"{front}\"]\ntransport = \"tls\"\n\
         upstreams = [\"{backend}\"]\n[front.tls]\nacme = \"main\"\n",
        links[me],
        pebble.acme_keys(state.path()),
    );
    std::fs::write(dir.path().join("admin.token"), TOKEN).unwrap();
    let started = std::time::Instant::now();
    let running = start_in(dir.path(), &toml).await;
    let admin = match running.admin_addr() {
        Some(AdminListen::Tcp(a)) => *a,
        other => panic!("admin API not on TCP: {other:?}"),
    };
    let auth = format!("Bearer {TOKEN}");
    let entry = async || -> serde_json::Value {
        let (status, _, body) = http_exchange(admin, "GET", "/v1/certs", Some(&auth), None).await;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["certificates"][0].clone()
    };
    // First it waits for the orderer, and says so.
    let waiting = within(Duration::from_secs(2), async || {
        entry().await["last_error"] == "waiting for the cluster's orderer"
    })
    .await;
    assert!(waiting.is_some(), "orderer {orderer} absent: {}", entry().await);
    let root = pebble.root().await;
    let ok = within(Duration::from_secs(60), async || {
        connect_trusting(&root, front, DOMAIN).await.is_ok()
    })
    .await;
    let issued = entry().await;
    assert!(ok.is_some(), "no certificate after the orderer's grace: {issued}");
    // Measured from before the gateway started, so a slow machine can only lengthen it: a certificate
    // sooner than the grace was ordered without waiting for the orderer.
    let after = started.elapsed();
    assert!(
        after >= Duration::from_secs(3),
        "ordered {after:?} after start, before the 3 s grace"
    );
    assert_eq!(issued["source"], "acme", "{issued}");
    assert!(issued.get("ordered_by").is_none(), "{issued}");
    running.shutdown().await;
}
