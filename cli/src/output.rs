//! How results are shown: aligned tables like ctr's, or JSON for scripts; human sizes and ages.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::time::{Duration, SystemTime};

use berth_api::prost_types::Timestamp;

/// Output format of listing commands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
}

/// Rows under a header, rendered with columns padded to the widest cell.
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

/// Spaces between columns.
const GAP: usize = 3;

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table { headers: headers.iter().map(|header| header.to_string()).collect(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row; the last column is not padded.
    pub fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|header| header.chars().count()).collect();
        for row in &self.rows {
            for (column, cell) in row.iter().enumerate().take(columns) {
                widths[column] = widths[column].max(cell.chars().count());
            }
        }
        let mut text = String::new();
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            let mut rendered = String::new();
            for (column, cell) in line.iter().enumerate().take(columns) {
                rendered.push_str(cell);
                if column + 1 < columns {
                    let pad = widths[column] - cell.chars().count() + GAP;
                    rendered.extend(std::iter::repeat_n(' ', pad));
                }
            }
            text.push_str(rendered.trim_end());
            text.push('\n');
        }
        text
    }
}

/// Writes `text` to stdout as is.
pub fn print(text: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()
}

/// Pretty JSON followed by a newline.
pub fn json<T: serde::Serialize>(value: &T) -> anyhow::Result<String> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    Ok(text)
}

/// True when the error (anywhere in its chain) is stdout having been closed under us.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Size in decimal units, as ctr shows it (Docker's go-units HumanSize): `12B`, `1.234kB`, `5.5MB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 1000.0 && unit < UNITS.len() - 1 {
        size /= 1000.0;
        unit += 1;
    }
    format!("{}{}", four_significant(size), UNITS[unit])
}

/// Size in binary units as ctr's `snapshots usage` shows it (containerd's progress.Bytes):
/// `12.0 B`, `4.0 KiB`, `1.5 MiB`. Negative sizes (none should come) show as 0.
pub fn binary_size(bytes: i64) -> String {
    const UNITS: [&str; 9] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"];
    let mut size = bytes.max(0) as f64;
    let mut unit = 0;
    while size >= 1024.0 && unit < UNITS.len() - 1 {
        size /= 1024.0;
        unit += 1;
    }
    format!("{size:.1} {}", UNITS[unit])
}

/// Go's `%.4g` for the values human_size produces (0 ≤ v < 1e6).
fn four_significant(value: f64) -> String {
    if value == 0.0 {
        return "0".to_string();
    }
    // Round to 4 significant digits first; the exponent after rounding picks the decimals.
    let scientific = format!("{value:.3e}");
    let exponent: i32 = scientific.split_once('e').and_then(|(_, exp)| exp.parse().ok()).unwrap_or(0);
    let decimals = (3 - exponent).max(0) as usize;
    let fixed = format!("{value:.decimals$}");
    if fixed.contains('.') { fixed.trim_end_matches('0').trim_end_matches('.').to_string() } else { fixed }
}

/// How long ago, in ctr's words (go-units HumanDuration): `5 seconds`, `About a minute`, `3 days`.
pub fn human_duration(elapsed: Duration) -> String {
    let seconds = elapsed.as_secs();
    if seconds < 1 {
        return "Less than a second".to_string();
    }
    if seconds == 1 {
        return "1 second".to_string();
    }
    if seconds < 60 {
        return format!("{seconds} seconds");
    }
    let minutes = seconds / 60;
    if minutes == 1 {
        return "About a minute".to_string();
    }
    if minutes < 60 {
        return format!("{minutes} minutes");
    }
    let hours = (elapsed.as_secs_f64() / 3600.0).round() as u64;
    if hours == 1 {
        return "About an hour".to_string();
    }
    if hours < 48 {
        return format!("{hours} hours");
    }
    if hours < 24 * 7 * 2 {
        return format!("{} days", hours / 24);
    }
    if hours < 24 * 30 * 2 {
        return format!("{} weeks", hours / 24 / 7);
    }
    if hours < 24 * 365 * 2 {
        return format!("{} months", hours / 24 / 30);
    }
    format!("{} years", seconds / 3600 / 24 / 365)
}

/// Age of a timestamp at `now`; `-` when the server sent none.
pub fn age(timestamp: Option<&Timestamp>, now: SystemTime) -> String {
    let Some(then) = timestamp.and_then(|timestamp| SystemTime::try_from(*timestamp).ok()) else {
        return "-".to_string();
    };
    human_duration(now.duration_since(then).unwrap_or(Duration::ZERO))
}

/// RFC 3339 text of a timestamp, for JSON.
pub fn rfc3339(timestamp: Option<&Timestamp>) -> Option<String> {
    timestamp.map(|timestamp| timestamp.to_string())
}

/// RFC 3339 text of a timestamp to the second, as ctr shows creation times; `-` when absent.
pub fn rfc3339_seconds(timestamp: Option<&Timestamp>) -> String {
    match timestamp {
        Some(timestamp) => Timestamp { seconds: timestamp.seconds, nanos: 0 }.to_string(),
        None => "-".to_string(),
    }
}

/// A `google.protobuf.Any` as Go's encoding/json shows one: type URL and base64 value.
pub fn any_json(any: &berth_api::prost_types::Any) -> serde_json::Value {
    serde_json::json!({"type_url": any.type_url, "value": base64(&any.value)})
}

/// Standard base64 with padding (what Go's encoding/json does with bytes).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                text.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                text.push('=');
            }
        }
    }
    text
}

/// Labels sorted by key, for stable output.
pub fn sorted(labels: &HashMap<String, String>) -> BTreeMap<String, String> {
    labels.iter().map(|(key, value)| (key.clone(), value.clone())).collect()
}

/// Labels as `k=v,k2=v2` sorted by key, as ctr shows them; empty string when there are none.
pub fn labels_inline(labels: &HashMap<String, String>) -> String {
    sorted(labels).iter().map(|(key, value)| format!("{key}={value}")).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut table = Table::new(&["REF", "SIZE", "AGE"]);
        table.row(vec!["a-long-ref".into(), "1B".into(), "2 seconds".into()]);
        table.row(vec!["r".into(), "1.234kB".into(), "-".into()]);
        let text = table.render();
        assert_eq!(
            text,
            "REF          SIZE      AGE\n\
             a-long-ref   1B        2 seconds\n\
             r            1.234kB   -\n"
        );
    }

    #[test]
    fn empty_table_is_just_the_header() {
        assert_eq!(Table::new(&["DIGEST", "SIZE"]).render(), "DIGEST   SIZE\n");
    }

    #[test]
    fn sizes_like_go_units() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(12), "12B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1000), "1kB");
        assert_eq!(human_size(1234), "1.234kB");
        assert_eq!(human_size(1_500_000), "1.5MB");
        assert_eq!(human_size(1 << 20), "1.049MB");
        assert_eq!(human_size(536_870_912), "536.9MB");
        assert_eq!(human_size(999_960), "1000kB");
    }

    #[test]
    fn binary_sizes_like_containerd_progress() {
        assert_eq!(binary_size(0), "0.0 B");
        assert_eq!(binary_size(12), "12.0 B");
        assert_eq!(binary_size(1023), "1023.0 B");
        assert_eq!(binary_size(4096), "4.0 KiB");
        assert_eq!(binary_size(1_572_864), "1.5 MiB");
        assert_eq!(binary_size(3 << 30), "3.0 GiB");
        assert_eq!(binary_size(-1), "0.0 B");
    }

    #[test]
    fn durations_like_go_units() {
        assert_eq!(human_duration(Duration::from_millis(300)), "Less than a second");
        assert_eq!(human_duration(Duration::from_secs(1)), "1 second");
        assert_eq!(human_duration(Duration::from_secs(45)), "45 seconds");
        assert_eq!(human_duration(Duration::from_secs(90)), "About a minute");
        assert_eq!(human_duration(Duration::from_secs(10 * 60)), "10 minutes");
        assert_eq!(human_duration(Duration::from_secs(3600)), "About an hour");
        assert_eq!(human_duration(Duration::from_secs(5 * 3600)), "5 hours");
        assert_eq!(human_duration(Duration::from_secs(3 * 86400)), "3 days");
        assert_eq!(human_duration(Duration::from_secs(21 * 86400)), "3 weeks");
        assert_eq!(human_duration(Duration::from_secs(90 * 86400)), "3 months");
        assert_eq!(human_duration(Duration::from_secs(800 * 86400)), "2 years");
    }

    #[test]
    fn ages_and_timestamps() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let then = Timestamp { seconds: 1_000_000 - 120, nanos: 0 };
        assert_eq!(age(Some(&then), now), "2 minutes");
        assert_eq!(age(None, now), "-");
        // A clock skewed into the future must not panic.
        let future = Timestamp { seconds: 2_000_000, nanos: 0 };
        assert_eq!(age(Some(&future), now), "Less than a second");
        assert_eq!(rfc3339(Some(&Timestamp { seconds: 0, nanos: 0 })).as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(rfc3339(None), None);
    }

    #[test]
    fn base64_like_go() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xff, 0xfe]), "//4=");
    }

    #[test]
    fn seconds_timestamps() {
        let at = Timestamp { seconds: 90, nanos: 123_456_789 };
        assert_eq!(rfc3339_seconds(Some(&at)), "1970-01-01T00:01:30Z");
        assert_eq!(rfc3339_seconds(None), "-");
    }

    #[test]
    fn labels_are_sorted() {
        let labels: HashMap<String, String> =
            [("b".to_string(), "2".to_string()), ("a".to_string(), "1".to_string())].into();
        assert_eq!(labels_inline(&labels), "a=1,b=2");
        assert_eq!(labels_inline(&HashMap::new()), "");
    }

    #[test]
    fn broken_pipe_is_recognised_through_context() {
        let err = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe)).context("writing");
        assert!(is_broken_pipe(&err));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
    }
}
