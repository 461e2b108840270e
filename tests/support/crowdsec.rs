//! A real CrowdSec Local API (Debian package `crowdsec`, installed by `tests/run`) on a free loopback
//! port, with its own configuration and SQLite database in a temporary folder: never the system service's
//! files or port. `cscli` runs against that configuration to register bouncers and machines and to add
//! and delete decisions, as an operator would.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Lapi {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    child: Child,
}

fn binary(name: &str) -> PathBuf {
    let p = PathBuf::from("/usr/bin").join(name);
    if !p.is_file() {
        panic!(
            "{name} (Debian package crowdsec) is missing: run tests/run (the README's test command), which installs it"
        );
    }
    p
}

impl Lapi {
    /// Starts the Local API alone (`-no-cs -no-capi`) and waits until it answers.
    pub fn start() -> Lapi {
        let crowdsec = binary("crowdsec");
        binary("cscli");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("data")).unwrap();
        let addr = super::net::free_addr();
        std::fs::write(
            d.join("config.yaml"),
            format!(
                "common:\n  daemonize: false\n  log_media: stdout\n  log_level: warning\n  working_dir: .\n\
                 config_paths:\n  config_dir: {dir}/\n  data_dir: {dir}/data/\n  \
                 simulation_path: /etc/crowdsec/simulation.yaml\n  hub_dir: /var/lib/crowdsec/hub/\n  \
                 index_path: /var/lib/crowdsec/hub/.index.json\n  notification_dir: /etc/crowdsec/notifications/\n  \
                 plugin_dir: /usr/lib/crowdsec/plugins/\n\
                 db_config:\n  log_level: warning\n  type: sqlite\n  db_path: {dir}/data/crowdsec.db\n  use_wal: false\n\
                 api:\n  client:\n    insecure_skip_verify: false\n    credentials_path: {dir}/cli_credentials.yaml\n  \
                 server:\n    log_level: warning\n    listen_uri: {addr}\n    profiles_path: /etc/crowdsec/profiles.yaml\n    \
                 trusted_ips:\n      - 127.0.0.1\n\
                 prometheus:\n  enabled: false\n",
                dir = d.display()
            ),
        )
        .unwrap();
        std::fs::write(d.join("cli_credentials.yaml"), format!("url: http://{addr}\n")).unwrap();
        let child = Command::new(crowdsec)
            .args(["-c", &d.join("config.yaml").display().to_string(), "-no-cs", "-no-capi"])
            .current_dir(d)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start crowdsec");
        let lapi = Lapi { addr, dir, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the CrowdSec Local API did not listen on {addr} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // cscli itself acts as a machine (to add and delete decisions).
        lapi.cscli(&[
            "machines",
            "add",
            "cli",
            "--auto",
            "--force",
            "-f",
            &lapi.dir.path().join("cli_credentials.yaml").display().to_string(),
        ]);
        lapi
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Runs `cscli` against this Local API's configuration; its standard output, or a panic with both
    /// outputs when it fails.
    pub fn cscli(&self, args: &[&str]) -> String {
        let out = Command::new("/usr/bin/cscli")
            .arg("-c")
            .arg(self.dir.path().join("config.yaml"))
            .args(args)
            .output()
            .expect("run cscli");
        assert!(
            out.status.success(),
            "cscli {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Registers a bouncer and writes its key to `file`.
    pub fn bouncer_key(&self, name: &str, file: &Path) {
        let key = self.cscli(&["bouncers", "add", name, "-o", "raw"]);
        std::fs::write(file, key.trim()).unwrap();
    }

    /// Registers a machine with `password` (written to `file`).
    pub fn machine(&self, name: &str, password: &str, file: &Path) {
        let creds = self.dir.path().join(format!("{name}.yaml"));
        self.cscli(&[
            "machines",
            "add",
            name,
            "--password",
            password,
            "--force",
            "-f",
            &creds.display().to_string(),
        ]);
        std::fs::write(file, password).unwrap();
    }
}

impl Drop for Lapi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
