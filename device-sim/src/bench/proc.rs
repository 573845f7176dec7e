//! Reading a broker's memory from `/proc/<pid>/status` (Linux).

/// `VmRSS` (resident set) of `pid`, KiB; `None` when unreadable (no such process, not
/// Linux).
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_field(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        "VmRSS",
    )
}

/// `VmHWM` (peak resident set since the process started) of `pid`, KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_field(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        "VmHWM",
    )
}

/// CPU time (user + system) `pid` has used so far, seconds; `None` when unreadable.
/// Assumes the kernel's usual 100 clock ticks per second.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    stat_cpu_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
        .map(|ticks| ticks as f64 / 100.0)
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line, in clock ticks. The
/// command name (field 2) may contain spaces and parentheses: fields are counted from
/// the last `)`.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The value of a `Name:   1234 kB` line of a `/proc/<pid>/status` text.
fn status_field(status: &str, name: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_lines() {
        let s = "Name:\tcertmq\nVmHWM:\t  20480 kB\nVmRSS:\t   10240 kB\nThreads:\t3\n";
        assert_eq!(status_field(s, "VmRSS"), Some(10240));
        assert_eq!(status_field(s, "VmHWM"), Some(20480));
        assert_eq!(status_field(s, "VmSwap"), None);
        assert_eq!(status_field("VmRSSx: 5 kB", "VmRSS"), None);
    }

    #[test]
    fn parses_stat_cpu_ticks() {
        let line = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0";
        assert_eq!(stat_cpu_ticks(line), Some(300));
        assert_eq!(stat_cpu_ticks("1234 (x) S 1"), None);
    }

    #[test]
    fn reads_own_process() {
        assert!(cpu_seconds(std::process::id()).is_some());
        let me = std::process::id();
        assert!(rss_kib(me).is_some_and(|kib| kib > 0));
        // RSS first: the peak read after it is at least that (read the other way round,
        // RSS may grow between the two reads while other tests allocate).
        let rss = rss_kib(me);
        assert!(peak_rss_kib(me) >= rss);
        assert_eq!(rss_kib(u32::MAX), None);
    }
}
