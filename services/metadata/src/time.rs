//! Timestamps in records and on the wire.

use std::time::SystemTime;

pub fn now() -> prost_types::Timestamp {
    SystemTime::now().into()
}

/// Nanoseconds since the epoch, as lease records keep their creation time.
pub fn now_nanos() -> i64 {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_nanos()).unwrap_or(i64::MAX)
}

/// `containerd.io/gc.expire` values are RFC 3339 times (what Go's time.RFC3339 writes).
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(text).ok().or_else(|| {
        // humantime wants `Z`; Go may write an offset such as +00:00 or +02:00.
        let (base, offset) = text.rsplit_once(['+', '-']).filter(|(_, o)| o.len() == 5 && o.as_bytes()[2] == b':')?;
        let sign: i64 = if text.as_bytes()[base.len()] == b'+' { -1 } else { 1 };
        let hours: i64 = offset[..2].parse().ok()?;
        let minutes: i64 = offset[3..].parse().ok()?;
        let utc = humantime::parse_rfc3339_weak(base).ok()?;
        let shift = std::time::Duration::from_secs(((hours * 60 + minutes) * 60).unsigned_abs());
        Some(if sign > 0 { utc + shift } else { utc - shift })
    })
}

pub fn to_system(timestamp: &prost_types::Timestamp) -> SystemTime {
    SystemTime::try_from(*timestamp).unwrap_or(SystemTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn parses_go_rfc3339() {
        let z = parse_rfc3339("2026-01-02T03:04:05Z").unwrap();
        assert_eq!(parse_rfc3339("2026-01-02T05:04:05+02:00").unwrap(), z);
        assert_eq!(parse_rfc3339("2026-01-02T01:04:05-02:00").unwrap(), z);
        assert_eq!(parse_rfc3339("2026-01-02T03:04:05.5Z").unwrap(), z + Duration::from_millis(500));
        assert!(parse_rfc3339("tomorrow").is_none());
    }
}
