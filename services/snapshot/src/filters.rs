//! The fields List filters can name, as containerd's: `name`, `parent`, `kind`,
//! `labels.<key>` (filter syntax parsed by berth-core).

use berth_core::filters::{Adaptor, AnyOf, label_field};

use crate::error::{Error, Result};
use crate::info::Info;

/// Parses a request's filters (any one matching is enough; none matches everything).
pub fn parse(filters: &[String]) -> Result<AnyOf> {
    AnyOf::parse(filters).map_err(|e| Error::InvalidArgument(e.to_string()))
}

pub struct InfoFields<'a>(pub &'a Info);

impl Adaptor for InfoFields<'_> {
    fn field(&self, fieldpath: &[String]) -> Option<String> {
        match (fieldpath.first().map(String::as_str)?, fieldpath.len()) {
            ("name", 1) => Some(self.0.name.clone()),
            ("parent", 1) => Some(self.0.parent.clone()),
            ("kind", 1) => Some(self.0.kind.to_string()),
            ("labels", _) => label_field(&self.0.labels, &fieldpath[1..]),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::info::Kind;

    #[test]
    fn snapshot_fields() {
        let info = Info {
            name: "layer-2".into(),
            parent: "layer-1".into(),
            kind: Kind::Committed,
            created_at: SystemTime::now(),
            updated_at: SystemTime::now(),
            labels: [("containerd.io/gc.root".to_string(), "x".to_string())].into(),
        };
        for (filter, want) in [
            ("name==layer-2", true),
            ("name~=^layer-", true),
            ("parent==layer-1", true),
            ("parent==layer-2", false),
            ("kind==committed", true),
            ("kind==active", false),
            (r#"labels."containerd.io/gc.root""#, true),
            ("labels.missing", false),
            ("kind==committed,name==other", false),
            ("unknown==x", false),
        ] {
            assert_eq!(parse(&[filter.to_string()]).unwrap().matches(&InfoFields(&info)), want, "{filter}");
        }
        assert!(matches!(parse(&["name >< 1".to_string()]), Err(Error::InvalidArgument(_))));
    }
}
