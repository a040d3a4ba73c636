//! CPU time and memory of the worker and its jobs, read from `/proc`.
//!
//! Reading is separate from parsing: [`parse_stat`] is a pure function of
//! one `/proc/<pid>/stat` line, tested on captured text; [`process_usage`] and
//! [`group_usage`] do the reading. A process that ends between the listing
//! and the read is skipped, never an error: these figures are for people.

use std::fs;

/// The fields of `/proc/<pid>/stat` that `worker status` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: i32,
    pub pgrp: i32,
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident set size, in pages.
    pub rss_pages: u64,
}

/// CPU seconds and resident memory of one process or a process group.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Usage {
    pub processes: u32,
    pub cpu_s: f64,
    pub rss_mb: u64,
}

/// Parses one `/proc/<pid>/stat` line. The command name (field 2) is in
/// parentheses and may itself hold spaces and parentheses, so the fields
/// are counted from the last `)`.
pub fn parse_stat(line: &str) -> Option<ProcStat> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let pid = line[..open].trim().parse().ok()?;
    let rest: Vec<&str> = line.get(close + 1..)?.split_whitespace().collect();
    // After the name: state(3) ppid(4) pgrp(5) … utime(14) stime(15) … rss(24).
    let field = |n: usize| rest.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(ProcStat {
        pid,
        pgrp: rest.get(2)?.parse().ok()?,
        cpu_ticks: field(14)? + field(15)?,
        rss_pages: field(24)?,
    })
}

fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as u64 } else { 4096 }
}

fn usage_of(stats: &[ProcStat]) -> Usage {
    let ticks: u64 = stats.iter().map(|s| s.cpu_ticks).sum();
    let pages: u64 = stats.iter().map(|s| s.rss_pages).sum();
    Usage {
        processes: stats.len() as u32,
        cpu_s: ticks as f64 / ticks_per_second() as f64,
        rss_mb: pages * page_size() / (1024 * 1024),
    }
}

fn read_stat(pid: &str) -> Option<ProcStat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// One process's usage; `None` when it is gone (or there is no `/proc`).
pub fn process_usage(pid: i32) -> Option<Usage> {
    read_stat(&pid.to_string()).map(|s| usage_of(&[s]))
}

/// The summed usage of every process in the group `pgid`.
pub fn group_usage(pgid: i32) -> Usage {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Usage::default();
    };
    let stats: Vec<ProcStat> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let name = name.to_str()?;
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            read_stat(name).filter(|s| s.pgrp == pgid)
        })
        .collect();
    usage_of(&stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    // `cat /proc/self/stat` on Debian 13, kernel 6.12.
    const CAT: &str = "32172 (cat) R 32169 32169 22681 0 -1 4194304 102 0 0 0 0 0 0 0 20 0 1 0 \
        239719 3133440 415 18446744073709551615 94520499998720 94520500018601 140720499093440 \
        0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 94520500034608 94520500036224 94520846684160 \
        140720499096281 140720499096301 140720499096301 140720499097579 0";

    #[test]
    fn a_captured_stat_line_gives_group_cpu_and_rss() {
        let s = parse_stat(CAT).unwrap();
        assert_eq!(s.pid, 32172);
        assert_eq!(s.pgrp, 32169);
        assert_eq!(s.cpu_ticks, 0);
        assert_eq!(s.rss_pages, 415);
    }

    #[test]
    fn a_command_name_with_spaces_and_parentheses_does_not_shift_fields() {
        let line = CAT
            .replace("(cat)", "(a) b (c)")
            .replace(" 0 0 0 0 20 0 1 0", " 7 5 0 0 20 0 1 0");
        let s = parse_stat(&line).unwrap();
        assert_eq!(s.pgrp, 32169);
        assert_eq!(s.cpu_ticks, 12);
        assert_eq!(s.rss_pages, 415);
    }

    #[test]
    fn a_truncated_line_is_refused() {
        assert_eq!(parse_stat("12 (x) S 1 2"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn this_process_is_found_in_its_own_group() {
        let me = std::process::id() as i32;
        assert!(process_usage(me).unwrap().rss_mb > 0);
        // SAFETY: getpgrp has no preconditions.
        let pgrp = unsafe { libc::getpgrp() };
        assert!(group_usage(pgrp).processes >= 1);
    }
}
