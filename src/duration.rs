//! Durations as people write them in a config file or on the command
//! line: a number and a unit (`90s`, `15m`, `12h`, `30d`, `1y`).

use std::time::Duration;

/// Parses `90s`, `15m`, `12h`, `30d` or `1y` (365 days).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration like 3600s, 90m, 12h, 30d or 1y");
    let split = text.len().checked_sub(1).ok_or_else(bad)?;
    let (number, unit) = text.split_at_checked(split).ok_or_else(bad)?;
    let number: u64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "y" => 365 * 86_400,
        _ => return Err(bad()),
    };
    match number.checked_mul(seconds) {
        Some(secs) if secs > 0 => Ok(Duration::from_secs(secs)),
        _ => Err(bad()),
    }
}
