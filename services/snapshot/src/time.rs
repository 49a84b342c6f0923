//! Timestamps as stored in records: nanoseconds since the Unix epoch.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `time` as nanoseconds since the epoch (negative before it; saturates in 2262).
pub fn to_nanos(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

pub fn from_nanos(nanos: i64) -> SystemTime {
    if nanos >= 0 {
        UNIX_EPOCH + Duration::from_nanos(nanos.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_nanos(nanos.unsigned_abs())
    }
}

pub fn now_nanos() -> i64 {
    to_nanos(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let now = SystemTime::now();
        assert_eq!(from_nanos(to_nanos(now)), now);
        let before = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(from_nanos(to_nanos(before)), before);
    }
}
