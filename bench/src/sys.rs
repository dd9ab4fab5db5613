//! What the bench reads from the kernel: CPU time, resident memory, the open-file limit.

use std::time::Duration;

/// Clock ticks per second of /proc/PID/stat on Linux (USER_HZ, 100 on every mainstream arch).
const USER_HZ: u64 = 100;

/// User + system CPU time consumed so far by `pid` ("self" for this process).
pub fn cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields after the closing parenthesis are fixed.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 1000 / USER_HZ))
}

/// Resident set size of `pid` in bytes (user memory only; socket buffers are kernel memory).
pub fn rss(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Raises the soft open-file limit to the hard one; returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024)
}

/// Measures this process's CPU share over a wall-clock span.
pub struct CpuMeter {
    wall: std::time::Instant,
    cpu: Duration,
}

impl CpuMeter {
    /// Starts measuring.
    pub fn start() -> Self {
        Self { wall: std::time::Instant::now(), cpu: cpu_time("self").unwrap_or_default() }
    }

    /// CPU time / wall time since start (1.0 = one core busy).
    pub fn share(&self) -> f64 {
        let cpu = cpu_time("self").unwrap_or_default().saturating_sub(self.cpu);
        cpu.as_secs_f64() / self.wall.elapsed().as_secs_f64().max(1e-9)
    }
}
