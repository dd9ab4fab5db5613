//! The real `wscast` binary as a child process: its own config file and directory, a real
//! NOTIFY_SOCKET to learn when it is ready and where it listens, real signals.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::net::UnixDatagram;
use tokio::process::{Child, Command};

use crate::common::{within, WAIT};

pub const BIN: &str = env!("CARGO_BIN_EXE_wscast");

/// A running `wscast` with its own notify socket.
pub struct Proc {
    pub child: Child,
    pub notify: UnixDatagram,
    _dir: tempfile::TempDir,
    pub dir: PathBuf,
}

/// Writes `toml` as the config and starts the binary with NOTIFY_SOCKET set.
pub fn spawn(toml: &str) -> Proc {
    spawn_with(toml, &[])
}

/// Like `spawn`, with extra environment variables.
pub fn spawn_with(toml: &str, env: &[(&str, &str)]) -> Proc {
    spawn_limited(toml, env, None)
}

/// Like `spawn_with`, optionally after a shell prelude such as `ulimit -n 48` (the shell execs
/// the daemon, so the pid stays the daemon's).
pub fn spawn_limited(toml: &str, env: &[(&str, &str)], prelude: Option<&str>) -> Proc {
    spawn_made(|_| toml.to_string(), env, prelude)
}

/// Like `spawn`, with the config made from the process's own directory (for paths inside it).
pub fn spawn_in(toml: impl FnOnce(&Path) -> String) -> Proc {
    spawn_made(toml, &[], None)
}

fn spawn_made(toml: impl FnOnce(&Path) -> String, env: &[(&str, &str)], prelude: Option<&str>) -> Proc {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    std::fs::write(path.join("wscast.toml"), toml(&path)).unwrap();
    let socket = path.join("notify.sock");
    let notify = UnixDatagram::bind(&socket).unwrap();
    let mut command = match prelude {
        None => Command::new(BIN),
        Some(prelude) => {
            let mut c = Command::new("bash");
            c.arg("-c").arg(format!("{prelude} && exec \"$0\" \"$@\"")).arg(BIN);
            c
        }
    };
    let child = command
        .arg("--config")
        .arg(path.join("wscast.toml"))
        .env("NOTIFY_SOCKET", &socket)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    Proc { child, notify, _dir: dir, dir: path }
}

impl Proc {
    /// The next notify datagram.
    pub async fn message(&self) -> String {
        let mut buf = vec![0u8; 4096];
        let n = within("a notify message", self.notify.recv(&mut buf)).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// Waits for a message containing `needle`, returning it.
    pub async fn until(&self, needle: &str) -> String {
        loop {
            let m = self.message().await;
            if m.contains(needle) {
                return m;
            }
        }
    }

    /// Waits for READY=1 and returns the address from its STATUS line.
    pub async fn ready(&self) -> SocketAddr {
        addr_in(&self.until("READY=1").await)
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().unwrap().to_string();
        assert!(std::process::Command::new("kill").args([sig, &pid]).status().unwrap().success());
    }

    /// Waits for the exit; returns the code and stderr. A process that does not exit in time is
    /// killed and its stderr shown.
    pub async fn exit(self) -> (i32, String) {
        let (code, stderr, _dir) = self.exit_keeping_dir().await;
        (code, stderr)
    }

    /// Like `exit`, keeping the process's directory (its logs) until the caller drops it.
    pub async fn exit_keeping_dir(mut self) -> (i32, String, tempfile::TempDir) {
        let exited = tokio::time::timeout(WAIT, self.child.wait()).await.is_ok();
        if !exited {
            let _ = self.child.start_kill();
        }
        let out = within("process exit", self.child.wait_with_output()).await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(exited, "wscast did not exit within {WAIT:?}; its stderr:\n{stderr}");
        (out.status.code().unwrap_or(-1), stderr, self._dir)
    }
}

/// The first ws:// or wss:// address in a STATUS line.
pub fn addr_in(m: &str) -> SocketAddr {
    let addr = m
        .split(|c: char| c.is_whitespace() || c == ';')
        .find_map(|w| w.strip_prefix("ws://").or_else(|| w.strip_prefix("wss://")).and_then(|a| a.parse().ok()));
    addr.unwrap_or_else(|| panic!("no address in {m:?}"))
}
