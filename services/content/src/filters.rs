//! The fields List and ListStatuses filters can name (containerd's filter syntax, parsed by
//! berth-core): `digest`, `size`, `labels.<key>` on blobs; `ref` on ingests.

use berth_core::filters::{Adaptor, AnyOf, label_field};

use crate::error::{Error, Result};
use crate::ingest::Status;
use crate::store::Info;

/// Parses a request's filters (any one matching is enough; none matches everything).
pub fn parse(filters: &[String]) -> Result<AnyOf> {
    AnyOf::parse(filters).map_err(|e| Error::InvalidArgument(e.to_string()))
}

pub struct InfoFields<'a>(pub &'a Info);

impl Adaptor for InfoFields<'_> {
    fn field(&self, fieldpath: &[String]) -> Option<String> {
        match fieldpath.first().map(String::as_str)? {
            "digest" if fieldpath.len() == 1 => Some(self.0.digest.to_string()),
            "size" if fieldpath.len() == 1 => Some(self.0.size.to_string()),
            "labels" => label_field(&self.0.labels, &fieldpath[1..]),
            _ => None,
        }
    }
}

pub struct StatusFields<'a>(pub &'a Status);

impl Adaptor for StatusFields<'_> {
    fn field(&self, fieldpath: &[String]) -> Option<String> {
        match (fieldpath.first().map(String::as_str)?, fieldpath.len()) {
            ("ref", 1) => Some(self.0.reference.clone()),
            ("expected", 1) => self.0.expected.clone(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use std::time::SystemTime;

    fn info() -> Info {
        Info {
            digest: Digest::of(b"x"),
            size: 1,
            created_at: SystemTime::now(),
            updated_at: SystemTime::now(),
            labels: [("containerd.io/gc.root".to_string(), "yes".to_string())].into(),
        }
    }

    #[test]
    fn blob_fields() {
        let info = info();
        let digest = info.digest.to_string();
        for (filter, want) in [
            (format!("digest=={digest}"), true),
            ("digest~=^sha256:".to_string(), true),
            ("digest~=^sha512:".to_string(), false),
            ("size==1".to_string(), true),
            ("size==2".to_string(), false),
            (r#"labels."containerd.io/gc.root"==yes"#.to_string(), true),
            (r#"labels."containerd.io/gc.root""#.to_string(), true),
            ("labels.missing".to_string(), false),
            (format!("digest=={digest},size==2"), false),
            ("unknown==x".to_string(), false),
        ] {
            assert_eq!(parse(std::slice::from_ref(&filter)).unwrap().matches(&InfoFields(&info)), want, "{filter}");
        }
        assert!(matches!(parse(&["labels.a >< 1".to_string()]), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn ingest_fields() {
        let status = Status {
            reference: "layer-1".into(),
            offset: 0,
            total: 0,
            expected: None,
            started_at: SystemTime::now(),
            updated_at: SystemTime::now(),
        };
        assert!(parse(&["ref==layer-1".into()]).unwrap().matches(&StatusFields(&status)));
        assert!(parse(&["ref~=^layer-".into()]).unwrap().matches(&StatusFields(&status)));
        assert!(!parse(&["ref==other".into()]).unwrap().matches(&StatusFields(&status)));
    }
}
