//! Durations and memory sizes, in the forms HPC users already type for Slurm.
//!
//! Slurm's own conventions win where they exist, so that a value copied from a
//! job script means the same thing here: a bare number of minutes for time, a
//! bare number of megabytes for memory, and binary multiples (`1G` = 1024 MB).

/// What [`parse_duration`] accepts, for hints.
pub const DURATION_FORMS: &str = "`02:00:00`, `1-02:00:00`, `90:00` (minutes:seconds), \
     `2h`, `90m`, `30s`, `1h30m`, `2d`, or a plain number of minutes such as `120`";

/// What [`parse_memory`] accepts, for hints.
pub const MEMORY_FORMS: &str = "`8G`, `8GB`, `8Gi`, `8000M`, `512MB`, `1T`, `1.5G`, \
     or a plain number of megabytes such as `8000` (G = 1024 M, as in Slurm)";

/// The most CPUs one job may ask for: more than any node has.
pub const MAX_CPUS: u32 = 4096;
/// The most GPUs one job may ask for.
pub const MAX_GPUS: u32 = 64;
/// The most memory one job may ask for: 64T, in MB.
pub const MAX_MEM_MB: u64 = 64 * 1024 * 1024;
/// The longest time limit: 365 days, in seconds.
pub const MAX_TIME_S: u64 = 365 * 86_400;

/// Parses a duration into seconds.
///
/// Accepted forms:
/// - Slurm's time formats: `MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`,
///   `D-HH:MM:SS` (so `90:00` is ninety minutes, as `sbatch --time=90:00`);
/// - a plain number is **minutes**, as in Slurm (`120` = two hours; `0` = zero);
/// - unit forms: `30s`, `90m`, `2h`, `1d`, `1w`, combined as `1h30m` or
///   `1h 30m`, with long names (`2 hours`, `30min`) and decimals (`1.5h`).
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let text = s.trim();
    if text.is_empty() {
        return Err("empty duration".to_string());
    }
    if text
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b':' || b == b'-')
    {
        return parse_slurm_time(text);
    }
    parse_unit_duration(text)
}

fn parse_slurm_time(text: &str) -> Result<u64, String> {
    let bad = || format!("`{text}` is not a valid time");
    let number = |part: &str| -> Result<u64, String> {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse::<u64>().map_err(|_| bad())
    };
    let (days, rest) = match text.split_once('-') {
        Some((d, rest)) => (Some(number(d)?), rest),
        None => (None, text),
    };
    let parts = rest
        .split(':')
        .map(number)
        .collect::<Result<Vec<u64>, String>>()?;
    // The leading field may be large (`90:00` is 90 minutes); the ones after a
    // colon are minutes or seconds, and 60 or more there is a typo.
    if parts.iter().skip(1).any(|&v| v >= 60)
        || (days.is_some() && parts.len() > 1 && parts[0] >= 24)
    {
        return Err(format!(
            "`{text}` has a field out of range (minutes and seconds stop at 59, hours after a day at 23)"
        ));
    }
    let p: Vec<u128> = parts.iter().map(|&v| u128::from(v)).collect();
    let secs: u128 = match (days.map(u128::from), p.as_slice()) {
        // Slurm: "minutes", "minutes:seconds", "hours:minutes:seconds".
        (None, [m]) => m * 60,
        (None, [m, s]) => m * 60 + s,
        (None, [h, m, s]) => h * 3600 + m * 60 + s,
        // Slurm: "days-hours", "days-hours:minutes", "days-hours:minutes:seconds".
        (Some(d), [h]) => d * 86400 + h * 3600,
        (Some(d), [h, m]) => d * 86400 + h * 3600 + m * 60,
        (Some(d), [h, m, s]) => d * 86400 + h * 3600 + m * 60 + s,
        _ => return Err(bad()),
    };
    u64::try_from(secs).map_err(|_| format!("`{text}` is too long"))
}

fn parse_unit_duration(text: &str) -> Result<u64, String> {
    let bad = || format!("`{text}` is not a valid duration");
    let lower = text.to_ascii_lowercase();
    let mut rest = lower.as_str();
    let mut total = 0.0_f64;
    let mut seen_any = false;
    while !rest.is_empty() {
        rest = rest.trim_start();
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = rest[num_len..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = rest[unit_len..].trim_start();
        let factor = match unit {
            "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
            "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600.0,
            "d" | "day" | "days" => 86400.0,
            "w" | "week" | "weeks" => 604_800.0,
            _ => return Err(bad()),
        };
        total += value * factor;
        seen_any = true;
    }
    if !seen_any {
        return Err(bad());
    }
    if !total.is_finite() || total > u64::MAX as f64 / 2.0 {
        return Err(format!("`{text}` is too long"));
    }
    Ok(total.round() as u64)
}

/// Formats seconds as Slurm's `--time`: `HH:MM:SS`, or `D-HH:MM:SS` from one day on.
pub fn format_slurm_time(secs: u64) -> String {
    let days = secs / 86400;
    let h = (secs % 86400) / 3600;
    let m = (secs % 3600) / 60;
    let s = secs % 60;
    if days > 0 {
        format!("{days}-{h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

/// Parses a memory size into megabytes (MiB, as Slurm counts them).
///
/// `K`, `M`, `G`, `T` are binary multiples, as in Slurm (`1G` = 1024 M); the
/// suffixes `B`, `iB` and any case are accepted (`8G`, `8GB`, `8Gi`, `8gib`).
/// A plain number is megabytes, as in `sbatch --mem=8000`. Decimals are
/// accepted (`1.5G` = 1536 M); the result is rounded up to a whole megabyte.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let text = s.trim();
    let bad = || format!("`{text}` is not a valid memory size");
    if text.is_empty() {
        return Err("empty memory size".to_string());
    }
    let num_len = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    if num_len == 0 {
        return Err(bad());
    }
    let value: f64 = text[..num_len].parse().map_err(|_| bad())?;
    let unit = text[num_len..].trim().to_ascii_lowercase();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .or_else(|| unit.strip_suffix('i'))
        .unwrap_or(&unit);
    let factor = match unit {
        "k" => 1.0 / 1024.0,
        "" | "m" => 1.0,
        "g" => 1024.0,
        "t" => 1024.0 * 1024.0,
        "p" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let mb = (value * factor).ceil();
    if !mb.is_finite() || mb > u64::MAX as f64 / 2.0 {
        return Err(format!("`{text}` is too large"));
    }
    Ok(mb as u64)
}

/// Formats megabytes as Slurm's `--mem`: `8G` when a whole number of
/// gigabytes, else `8000M`.
pub fn format_memory(mb: u64) -> String {
    if mb > 0 && mb.is_multiple_of(1024) {
        format!("{}G", mb / 1024)
    } else {
        format!("{mb}M")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_time_forms() {
        assert_eq!(parse_duration("02:00:00"), Ok(7200));
        assert_eq!(parse_duration("1-02:00:00"), Ok(93600));
        assert_eq!(parse_duration("90:00"), Ok(5400));
        assert_eq!(parse_duration("72:00:00"), Ok(72 * 3600));
        assert_eq!(parse_duration("2-12"), Ok(2 * 86400 + 12 * 3600));
        assert_eq!(parse_duration("1-00:30"), Ok(86400 + 1800));
        assert_eq!(parse_duration("0:30"), Ok(30));
    }

    #[test]
    fn plain_integer_is_minutes_as_in_slurm() {
        assert_eq!(parse_duration("90"), Ok(5400));
        assert_eq!(parse_duration("0"), Ok(0));
        assert_eq!(parse_duration(" 5 "), Ok(300));
    }

    #[test]
    fn unit_forms() {
        assert_eq!(parse_duration("2h"), Ok(7200));
        assert_eq!(parse_duration("90m"), Ok(5400));
        assert_eq!(parse_duration("30s"), Ok(30));
        assert_eq!(parse_duration("1h30m"), Ok(5400));
        assert_eq!(parse_duration("1h 30m"), Ok(5400));
        assert_eq!(parse_duration("2 hours"), Ok(7200));
        assert_eq!(parse_duration("1.5h"), Ok(5400));
        assert_eq!(parse_duration("1d"), Ok(86400));
        assert_eq!(parse_duration("1w"), Ok(604_800));
        assert_eq!(parse_duration("5M"), Ok(300));
    }

    #[test]
    fn bad_durations() {
        for bad in [
            "", "h", "2x", "1:2:3:4", "1-", "-1", "1--2", "::", "2h-", "1.2.3h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn slurm_time_formatting() {
        assert_eq!(format_slurm_time(0), "00:00:00");
        assert_eq!(format_slurm_time(5400), "01:30:00");
        assert_eq!(format_slurm_time(86399), "23:59:59");
        assert_eq!(format_slurm_time(93600), "1-02:00:00");
        assert_eq!(format_slurm_time(72 * 3600), "3-00:00:00");
    }

    #[test]
    fn memory_forms() {
        assert_eq!(parse_memory("8G"), Ok(8192));
        assert_eq!(parse_memory("8GB"), Ok(8192));
        assert_eq!(parse_memory("8gb"), Ok(8192));
        assert_eq!(parse_memory("8Gi"), Ok(8192));
        assert_eq!(parse_memory("8GiB"), Ok(8192));
        assert_eq!(parse_memory("8 G"), Ok(8192));
        assert_eq!(parse_memory("8000M"), Ok(8000));
        assert_eq!(parse_memory("512MB"), Ok(512));
        assert_eq!(parse_memory("8000"), Ok(8000));
        assert_eq!(parse_memory("1T"), Ok(1024 * 1024));
        assert_eq!(parse_memory("1.5G"), Ok(1536));
        assert_eq!(parse_memory("512K"), Ok(1));
        assert_eq!(parse_memory("256G"), Ok(262_144));
    }

    #[test]
    fn bad_memory() {
        for bad in ["", "G", "8X", "8GG", "-1G", "8 G B x", "1.2.3G"] {
            assert!(parse_memory(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn memory_formatting() {
        assert_eq!(format_memory(8192), "8G");
        assert_eq!(format_memory(8000), "8000M");
        assert_eq!(format_memory(1536), "1536M");
        assert_eq!(format_memory(0), "0M");
    }

    #[test]
    fn round_trips() {
        for secs in [60, 3600, 5400, 86400, 93600, 259_200] {
            assert_eq!(parse_duration(&format_slurm_time(secs)), Ok(secs));
        }
        for mb in [1, 1000, 1024, 8192, 65536] {
            assert_eq!(parse_memory(&format_memory(mb)), Ok(mb));
        }
    }
}
