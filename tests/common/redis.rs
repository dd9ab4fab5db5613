//! A private `redis-server` (Debian's package) on a free loopback port, persistence off, with
//! the faults the cluster tests inject: kill and restart on the same port, SIGSTOP/SIGCONT,
//! and any command through `redis-cli`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running redis-server; killed on drop.
pub struct Redis {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Redis {
    /// Starts one on a free port and waits until it answers PING.
    pub fn start() -> Redis {
        let mut redis = Redis { port: free_port(), dir: tempfile::tempdir().unwrap(), child: None };
        redis.spawn();
        redis
    }

    /// The URL nodes use.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--enable-debug-command", "local", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("redis-server: {e}: the cluster tests need Debian's redis-server (apt-get install redis-server; scripts/test installs it)")
            });
        self.child = Some(child);
        let started = Instant::now();
        while self.cli(&["PING"]) != "PONG" {
            assert!(started.elapsed() < Duration::from_secs(10), "redis-server on {} did not answer PING", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `redis-cli` against it; its trimmed output ("" when it cannot connect).
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("redis-cli: {e}: install redis-tools (apt-get install redis-server)"));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Kills it (SIGKILL: nothing saved, like a crash).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again, empty, on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Sends a signal (e.g. "STOP", "CONT") to the server process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = Command::new("kill").args([&format!("-{signal}"), &pid]).status().unwrap().success();
        assert!(ok, "kill -{signal} {pid}");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A stopped server would not die of SIGKILL before it is continued on some kernels.
            let _ = Command::new("kill").args(["-CONT", &child.id().to_string()]).status();
        }
        self.kill();
    }
}
