//! Choosing a backend from the `--metadata` flag every service takes.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::{Embedded, Etcd, Store, StoreError};

/// Where a service keeps its records, as given by `--metadata`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// `local`: an embedded redb file under the service's --root (the default).
    Local,
    /// `etcd://HOST:PORT[,HOST:PORT...][/PREFIX][?lock-ttl=SECONDS]`: an etcd cluster; PREFIX
    /// (default `/berth`) lets several stacks share one cluster; `lock-ttl` is how long a lock
    /// outlives a holder that died (default [`DEFAULT_LOCK_TTL`](crate::DEFAULT_LOCK_TTL)).
    Etcd { endpoints: Vec<String>, prefix: String, lock_ttl: Option<Duration> },
}

/// Reads the `?name=value&...` part of an etcd spec.
fn parse_options(spec: &str, query: &str) -> Result<Option<Duration>, String> {
    let mut lock_ttl = None;
    for option in query.split('&').filter(|o| !o.is_empty()) {
        match option.split_once('=') {
            Some(("lock-ttl", value)) => {
                let seconds = value.strip_suffix('s').unwrap_or(value);
                match seconds.parse::<u64>() {
                    Ok(seconds) if seconds > 0 => lock_ttl = Some(Duration::from_secs(seconds)),
                    _ => {
                        return Err(format!(
                            "--metadata {spec:?}: lock-ttl must be a whole number of seconds above 0, got {value:?}"
                        ));
                    }
                }
            }
            _ => return Err(format!("--metadata {spec:?}: unknown option {option:?} (known: lock-ttl=SECONDS)")),
        }
    }
    Ok(lock_ttl)
}

impl Backend {
    pub fn parse(spec: &str) -> Result<Backend, String> {
        if spec.is_empty() || spec == "local" {
            return Ok(Backend::Local);
        }
        let Some(rest) = spec.strip_prefix("etcd://") else {
            return Err(format!(
                "--metadata {spec:?}: expected `local` or `etcd://HOST:PORT[,HOST:PORT][/PREFIX][?lock-ttl=SECONDS]`"
            ));
        };
        let (rest, lock_ttl) = match rest.split_once('?') {
            Some((rest, query)) => (rest, parse_options(spec, query)?),
            None => (rest, None),
        };
        let (hosts, prefix) = match rest.split_once('/') {
            Some((hosts, prefix)) if !prefix.trim_matches('/').is_empty() => {
                (hosts, format!("/{}", prefix.trim_matches('/')))
            }
            Some((hosts, _)) => (hosts, "/berth".to_string()),
            None => (rest, "/berth".to_string()),
        };
        let endpoints: Vec<String> = hosts.split(',').filter(|h| !h.is_empty()).map(str::to_string).collect();
        if endpoints.is_empty() || endpoints.iter().any(|e| !e.contains(':')) {
            return Err(format!("--metadata {spec:?}: every etcd endpoint needs HOST:PORT"));
        }
        Ok(Backend::Etcd { endpoints, prefix, lock_ttl })
    }

    /// Opens the store of `service`: `local_dir/<service>.redb`, or etcd keys under `PREFIX/<service>/`.
    pub async fn open(&self, service: &str, local_dir: &Path) -> Result<Arc<dyn Store>, StoreError> {
        match self {
            Backend::Local => {
                std::fs::create_dir_all(local_dir)
                    .map_err(|e| StoreError::Backend(format!("create {}: {e}", local_dir.display())))?;
                Ok(Arc::new(Embedded::open(&local_dir.join(format!("{service}.redb")))?))
            }
            Backend::Etcd { endpoints, prefix, lock_ttl } => {
                let store = Etcd::connect(endpoints, &format!("{prefix}/{service}/")).await?;
                Ok(Arc::new(match lock_ttl {
                    Some(ttl) => store.with_lock_ttl(*ttl),
                    None => store,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_metadata_flags() {
        assert_eq!(Backend::parse("local").unwrap(), Backend::Local);
        assert_eq!(
            Backend::parse("etcd://127.0.0.1:2379").unwrap(),
            Backend::Etcd { endpoints: vec!["127.0.0.1:2379".into()], prefix: "/berth".into(), lock_ttl: None }
        );
        assert_eq!(
            Backend::parse("etcd://a:1,b:2/team/x/").unwrap(),
            Backend::Etcd { endpoints: vec!["a:1".into(), "b:2".into()], prefix: "/team/x".into(), lock_ttl: None }
        );
        assert_eq!(
            Backend::parse("etcd://a:1/p?lock-ttl=3").unwrap(),
            Backend::Etcd {
                endpoints: vec!["a:1".into()],
                prefix: "/p".into(),
                lock_ttl: Some(Duration::from_secs(3))
            }
        );
        assert_eq!(
            Backend::parse("etcd://a:1?lock-ttl=4s").unwrap(),
            Backend::Etcd {
                endpoints: vec!["a:1".into()],
                prefix: "/berth".into(),
                lock_ttl: Some(Duration::from_secs(4))
            }
        );
        assert!(Backend::parse("etcd://a:1?lock-ttl=0").is_err());
        assert!(Backend::parse("etcd://a:1?lock-ttl=soon").is_err());
        assert!(Backend::parse("etcd://a:1?colour=blue").is_err());
        assert!(Backend::parse("etcd://").is_err());
        assert!(Backend::parse("etcd://nohost").is_err());
        assert!(Backend::parse("redis://x:1").is_err());
    }
}
