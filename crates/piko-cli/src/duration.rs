//! Go duration syntax (`300ms`, `30s`, `1m30s`, `1.5h`), which Piko's flags and files use.

use std::time::Duration;

/// Parses a Go duration: a sequence of decimal numbers with units `ns`, `us` (or `µs`), `ms`,
/// `s`, `m`, `h`; `0` alone needs no unit. Negative durations are refused.
pub(crate) fn parse(text: &str) -> Result<Duration, String> {
    let invalid = || format!("invalid duration {text:?}");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.is_empty() || rest.starts_with('-') {
        return Err(invalid());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        let number: f64 = rest[..number_len].parse().map_err(|_| invalid())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(invalid()),
        };
        total += number * seconds;
        rest = &rest[unit_len..];
    }
    // Go's durations are i64 nanoseconds: about 292 years at most.
    if total > i64::MAX as f64 / 1e9 {
        return Err(invalid());
    }
    Duration::try_from_secs_f64(total).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_forms() {
        assert_eq!(parse("0").unwrap(), Duration::ZERO);
        assert_eq!(parse("300ms").unwrap(), Duration::from_millis(300));
        assert_eq!(parse("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("2h45m").unwrap(), Duration::from_secs(9900));
        assert_eq!(parse("10us").unwrap(), Duration::from_micros(10));
        for bad in [
            "",
            "10",
            "s",
            "1x",
            "-1s",
            "1s-",
            "1..2s",
            "3000000000000000h",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
