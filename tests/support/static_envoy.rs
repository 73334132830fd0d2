//! An Envoy started from a static bootstrap file, for tests that need no Sluice: the admin
//! address is read from `--admin-address-path`, so no port is guessed.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::envoy_path;

/// An Envoy process that is killed when the test ends, however it ends.
pub struct StaticEnvoy {
    child: Child,
    log: PathBuf,
}

impl Drop for StaticEnvoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl StaticEnvoy {
    /// Writes `bootstrap` into `dir`, starts Envoy on it and returns it with its admin address.
    pub fn start(dir: &Path, bootstrap: &str) -> (StaticEnvoy, SocketAddr) {
        let config = dir.join("bootstrap.yaml");
        std::fs::write(&config, bootstrap).expect("write bootstrap");
        let admin_path = dir.join("admin-address");
        let log = dir.join("envoy.log");
        let log_file = File::create(&log).expect("create log");
        let child = Command::new(envoy_path())
            .args(["--disable-hot-restart", "--concurrency", "1"])
            .args(["--log-level", "warning", "-c"])
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log handle"))
            .stderr(log_file)
            .spawn()
            .expect("start envoy");
        let envoy = StaticEnvoy { child, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(admin) = std::fs::read_to_string(&admin_path)
                .ok()
                .and_then(|text| text.trim().parse::<SocketAddr>().ok())
            {
                return (envoy, admin);
            }
            assert!(
                Instant::now() < deadline,
                "Envoy wrote no admin address within 20s; its log:\n{}",
                envoy.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
