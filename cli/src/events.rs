//! containerd's event messages as JSON, the way ctr shows them: the message found by the
//! envelope's type URL, with Go's field names (the proto names), empty fields left out and
//! fields in declaration order.

use std::collections::HashMap;

use berth_api::containerd::events::{
    ContainerCreate, ContainerDelete, ContainerUpdate, ContentDelete, NamespaceCreate, NamespaceDelete,
    NamespaceUpdate, SnapshotCommit, SnapshotPrepare, SnapshotRemove, TaskCheckpointed, TaskCreate, TaskDelete,
    TaskExecAdded, TaskExecStarted, TaskExit, TaskIo, TaskOom, TaskPaused, TaskResumed, TaskStart,
};
use berth_api::containerd::services::images::v1::{ImageCreate, ImageDelete, ImageUpdate};
use berth_api::prost_types::{Any, Timestamp};
use serde::ser::SerializeMap as _;
use serde_json::Value;

use crate::output;

/// A JSON object whose fields keep the order they were added in.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Fields(Vec<(&'static str, Field)>);

#[derive(Debug, Clone, PartialEq)]
enum Field {
    Value(Value),
    Object(Fields),
    Objects(Vec<Fields>),
}

impl serde::Serialize for Field {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Field::Value(value) => value.serialize(serializer),
            Field::Object(fields) => fields.serialize(serializer),
            Field::Objects(list) => list.serialize(serializer),
        }
    }
}

impl serde::Serialize for Fields {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, field) in &self.0 {
            map.serialize_entry(name, field)?;
        }
        map.end()
    }
}

/// Builders skip empty values, as Go's `omitempty` does.
impl Fields {
    pub fn new() -> Fields {
        Fields::default()
    }

    fn push(mut self, name: &'static str, field: Field) -> Fields {
        self.0.push((name, field));
        self
    }

    pub fn text(self, name: &'static str, value: &str) -> Fields {
        if value.is_empty() { self } else { self.push(name, Field::Value(Value::from(value))) }
    }

    pub fn number(self, name: &'static str, value: u32) -> Fields {
        if value == 0 { self } else { self.push(name, Field::Value(Value::from(value))) }
    }

    pub fn flag(self, name: &'static str, value: bool) -> Fields {
        if value { self.push(name, Field::Value(Value::Bool(true))) } else { self }
    }

    pub fn labels(self, name: &'static str, labels: &HashMap<String, String>) -> Fields {
        if labels.is_empty() {
            return self;
        }
        let sorted = output::sorted(labels).into_iter().map(|(key, value)| (key, Value::String(value))).collect();
        self.push(name, Field::Value(Value::Object(sorted)))
    }

    pub fn texts(self, name: &'static str, values: &[String]) -> Fields {
        if values.is_empty() { self } else { self.push(name, Field::Value(Value::from(values.to_vec()))) }
    }

    pub fn time(self, name: &'static str, value: Option<&Timestamp>) -> Fields {
        match output::rfc3339(value) {
            Some(text) => self.push(name, Field::Value(Value::String(text))),
            None => self,
        }
    }

    pub fn any(self, name: &'static str, value: Option<&Any>) -> Fields {
        match value {
            Some(any) => self.push(name, Field::Value(output::any_json(any))),
            None => self,
        }
    }

    pub fn object(self, name: &'static str, value: Option<Fields>) -> Fields {
        match value {
            Some(fields) => self.push(name, Field::Object(fields)),
            None => self,
        }
    }

    pub fn objects(self, name: &'static str, values: Vec<Fields>) -> Fields {
        if values.is_empty() { self } else { self.push(name, Field::Objects(values)) }
    }

    /// Compact JSON text.
    pub fn to_json(&self) -> String {
        // Serializing strings, numbers and maps with string keys cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The message's name in a type URL: what follows the last `/` (containerd sends bare names,
/// `containerd.events.ContainerCreate`; others prefix `type.googleapis.com/`).
pub fn message_name(type_url: &str) -> &str {
    type_url.rsplit('/').next().unwrap_or(type_url)
}

/// Tries each listed event type whose full name matches; the first match decides.
macro_rules! decode_as {
    ($name:expr, $bytes:expr; $($kind:ty => $show:expr),* $(,)?) => {
        $(
            if $name == <$kind as prost::Name>::full_name() {
                return <$kind as prost::Message>::decode($bytes).ok().map($show);
            }
        )*
    };
}

/// The event inside `any` as JSON fields, or None when its type is unknown or its bytes do not
/// decode as that type.
pub fn decode(any: &Any) -> Option<Fields> {
    let name = message_name(&any.type_url);
    let bytes = any.value.as_slice();
    decode_as!(name, bytes;
        ContainerCreate => |e: ContainerCreate| Fields::new()
            .text("id", &e.id)
            .text("image", &e.image)
            .object("runtime", e.runtime.map(|r| Fields::new().text("name", &r.name).any("options", r.options.as_ref()))),
        ContainerUpdate => |e: ContainerUpdate| Fields::new()
            .text("id", &e.id)
            .text("image", &e.image)
            .labels("labels", &e.labels)
            .text("snapshot_key", &e.snapshot_key),
        ContainerDelete => |e: ContainerDelete| Fields::new().text("id", &e.id),
        ContentDelete => |e: ContentDelete| Fields::new().text("digest", &e.digest),
        NamespaceCreate => |e: NamespaceCreate| Fields::new().text("name", &e.name).labels("labels", &e.labels),
        NamespaceUpdate => |e: NamespaceUpdate| Fields::new().text("name", &e.name).labels("labels", &e.labels),
        NamespaceDelete => |e: NamespaceDelete| Fields::new().text("name", &e.name),
        ImageCreate => |e: ImageCreate| Fields::new().text("name", &e.name).labels("labels", &e.labels),
        ImageUpdate => |e: ImageUpdate| Fields::new().text("name", &e.name).labels("labels", &e.labels),
        ImageDelete => |e: ImageDelete| Fields::new().text("name", &e.name),
        SnapshotPrepare => |e: SnapshotPrepare| Fields::new()
            .text("key", &e.key)
            .text("parent", &e.parent)
            .text("snapshotter", &e.snapshotter),
        SnapshotCommit => |e: SnapshotCommit| Fields::new()
            .text("key", &e.key)
            .text("name", &e.name)
            .text("snapshotter", &e.snapshotter),
        SnapshotRemove => |e: SnapshotRemove| Fields::new().text("key", &e.key).text("snapshotter", &e.snapshotter),
        TaskCreate => |e: TaskCreate| Fields::new()
            .text("container_id", &e.container_id)
            .text("bundle", &e.bundle)
            .objects("rootfs", e.rootfs.iter().map(|m| Fields::new()
                .text("type", &m.r#type)
                .text("source", &m.source)
                .text("target", &m.target)
                .texts("options", &m.options)).collect())
            .object("io", e.io.as_ref().map(task_io))
            .text("checkpoint", &e.checkpoint)
            .number("pid", e.pid),
        TaskStart => |e: TaskStart| Fields::new().text("container_id", &e.container_id).number("pid", e.pid),
        TaskDelete => |e: TaskDelete| Fields::new()
            .text("container_id", &e.container_id)
            .number("pid", e.pid)
            .number("exit_status", e.exit_status)
            .time("exited_at", e.exited_at.as_ref())
            .text("id", &e.id),
        TaskIo => |e: TaskIo| task_io(&e),
        TaskExit => |e: TaskExit| Fields::new()
            .text("container_id", &e.container_id)
            .text("id", &e.id)
            .number("pid", e.pid)
            .number("exit_status", e.exit_status)
            .time("exited_at", e.exited_at.as_ref()),
        TaskOom => |e: TaskOom| Fields::new().text("container_id", &e.container_id),
        TaskExecAdded => |e: TaskExecAdded| Fields::new().text("container_id", &e.container_id).text("exec_id", &e.exec_id),
        TaskExecStarted => |e: TaskExecStarted| Fields::new()
            .text("container_id", &e.container_id)
            .text("exec_id", &e.exec_id)
            .number("pid", e.pid),
        TaskPaused => |e: TaskPaused| Fields::new().text("container_id", &e.container_id),
        TaskResumed => |e: TaskResumed| Fields::new().text("container_id", &e.container_id),
        TaskCheckpointed => |e: TaskCheckpointed| Fields::new()
            .text("container_id", &e.container_id)
            .text("checkpoint", &e.checkpoint),
    );
    None
}

fn task_io(io: &TaskIo) -> Fields {
    Fields::new()
        .text("stdin", &io.stdin)
        .text("stdout", &io.stdout)
        .text("stderr", &io.stderr)
        .flag("terminal", io.terminal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_api::containerd::events::container_create::Runtime;
    use berth_api::containerd::types::Mount;
    use prost::Name;

    fn any_of<E: Name>(event: &E) -> Any {
        Any { type_url: E::full_name(), value: event.encode_to_vec() }
    }

    fn shown<E: Name>(event: &E) -> String {
        decode(&any_of(event)).expect("known event").to_json()
    }

    #[test]
    fn container_events_like_ctr() {
        let create = ContainerCreate {
            id: "c1".into(),
            image: "example/image:1".into(),
            runtime: Some(Runtime { name: "io.containerd.runc.v2".into(), options: None }),
        };
        assert_eq!(
            shown(&create),
            r#"{"id":"c1","image":"example/image:1","runtime":{"name":"io.containerd.runc.v2"}}"#
        );
        let update = ContainerUpdate {
            id: "c1".into(),
            image: "i".into(),
            labels: [("z".to_string(), "1".to_string()), ("a".to_string(), "2".to_string())].into(),
            snapshot_key: String::new(),
        };
        assert_eq!(shown(&update), r#"{"id":"c1","image":"i","labels":{"a":"2","z":"1"}}"#);
        assert_eq!(shown(&ContainerDelete { id: "c1".into() }), r#"{"id":"c1"}"#);
    }

    #[test]
    fn namespace_content_image_and_snapshot_events() {
        assert_eq!(shown(&NamespaceCreate { name: "w".into(), labels: HashMap::new() }), r#"{"name":"w"}"#);
        assert_eq!(shown(&NamespaceDelete { name: "w".into() }), r#"{"name":"w"}"#);
        assert_eq!(shown(&ContentDelete { digest: "sha256:ab".into() }), r#"{"digest":"sha256:ab"}"#);
        assert_eq!(shown(&ImageDelete { name: "docker.io/x:1".into() }), r#"{"name":"docker.io/x:1"}"#);
        let prepare = SnapshotPrepare { key: "k".into(), parent: String::new(), snapshotter: "overlayfs".into() };
        assert_eq!(shown(&prepare), r#"{"key":"k","snapshotter":"overlayfs"}"#);
        assert_eq!(ImageDelete::full_name(), "containerd.services.images.v1.ImageDelete");
    }

    #[test]
    fn task_events_with_nested_and_time_fields() {
        let create = TaskCreate {
            container_id: "c1".into(),
            bundle: "/run/b".into(),
            rootfs: vec![Mount {
                r#type: "overlay".into(),
                source: "overlay".into(),
                target: String::new(),
                options: vec!["ro".into()],
            }],
            io: Some(TaskIo { stdin: String::new(), stdout: "/o".into(), stderr: "/e".into(), terminal: true }),
            checkpoint: String::new(),
            pid: 42,
        };
        assert_eq!(
            shown(&create),
            r#"{"container_id":"c1","bundle":"/run/b","rootfs":[{"type":"overlay","source":"overlay","options":["ro"]}],"io":{"stdout":"/o","stderr":"/e","terminal":true},"pid":42}"#
        );
        let exit = TaskExit {
            container_id: "c1".into(),
            id: "c1".into(),
            pid: 42,
            exit_status: 0,
            exited_at: Some(Timestamp { seconds: 0, nanos: 0 }),
        };
        assert_eq!(
            shown(&exit),
            r#"{"container_id":"c1","id":"c1","pid":42,"exited_at":"1970-01-01T00:00:00Z"}"#,
            "a zero exit status is left out, as Go's omitempty does"
        );
    }

    #[test]
    fn prefixed_type_urls_and_unknown_or_broken_events() {
        let mut any = any_of(&ContainerDelete { id: "c1".into() });
        any.type_url = format!("type.googleapis.com/{}", any.type_url);
        assert_eq!(decode(&any).unwrap().to_json(), r#"{"id":"c1"}"#);
        assert_eq!(decode(&Any { type_url: "example.com/Mystery".into(), value: vec![1] }), None);
        let broken = Any { type_url: ContainerDelete::full_name(), value: vec![0xff, 0xff, 0xff] };
        assert_eq!(decode(&broken), None);
        assert_eq!(message_name("containerd.events.TaskExit"), "containerd.events.TaskExit");
    }
}
