//! One module per command group, and the little they share.

pub mod containers;
pub mod content;
pub mod events;
pub mod images;
pub mod leases;
pub mod namespaces;
pub mod run;
pub mod snapshots;
pub mod tasks;
pub mod version;

use std::collections::HashMap;

use berth_api::prost_types::FieldMask;

use crate::output;

/// Label changes as containerd's Update calls take them: the labels to set, and a mask with
/// `labels.<key>` for every key given. A key with an empty value is in the mask but not in
/// the labels, which removes it.
pub fn label_changes(labels: &[(String, String)]) -> (HashMap<String, String>, FieldMask) {
    let mut set = HashMap::new();
    let mut paths = Vec::new();
    for (key, value) in labels {
        paths.push(format!("labels.{key}"));
        if value.is_empty() {
            set.remove(key);
        } else {
            set.insert(key.clone(), value.clone());
        }
    }
    paths.sort();
    paths.dedup();
    (set, FieldMask { paths })
}

/// Removes each of `ids` in turn with `remove`, printing each one removed on stdout and each
/// failure on stderr; fails at the end when any failed, so that one bad ID does not stop the rest.
/// `what` names the things in the plural ("containers"). With a single ID, its error is the error.
pub async fn remove_each<F, Fut>(what: &str, ids: &[String], mut remove: F) -> anyhow::Result<()>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    if let [id] = ids {
        // One ID: its own error says it all.
        remove(id.clone()).await?;
        return output::print(&format!("{id}\n")).map_err(Into::into);
    }
    let mut failed = 0;
    for id in ids {
        match remove(id.clone()).await {
            Ok(()) => output::print(&format!("{id}\n"))?,
            Err(err) => {
                eprintln!("berth: {err:#}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} {what} could not be removed (see above)", ids.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_changes_mask_every_key_and_drop_empty_values() {
        let (labels, mask) = label_changes(&[
            ("a".into(), "1".into()),
            ("gone".into(), String::new()),
            ("a".into(), "2".into()),
            ("b".into(), "x".into()),
            ("b".into(), String::new()),
        ]);
        assert_eq!(labels, HashMap::from([("a".to_string(), "2".to_string())]), "the last word on a key wins");
        assert_eq!(mask.paths, ["labels.a", "labels.b", "labels.gone"]);
    }

    #[tokio::test]
    async fn remove_each_goes_on_after_a_failure_and_counts_them() {
        let ids = vec!["a".to_string(), "bad".to_string(), "c".to_string()];
        let mut tried = Vec::new();
        let err = remove_each("things", &ids, |id| {
            tried.push(id.clone());
            async move { if id == "bad" { Err(anyhow::anyhow!("no")) } else { Ok(()) } }
        })
        .await
        .unwrap_err();
        assert_eq!(tried, ids);
        assert_eq!(err.to_string(), "1 of 3 things could not be removed (see above)");
        assert!(remove_each("things", &ids[..1], |_| async { Ok(()) }).await.is_ok());
        let err = remove_each("things", &ids[1..2], |_| async { Err(anyhow::anyhow!("thing bad not found")) })
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "thing bad not found", "a single failure is reported once");
    }
}
