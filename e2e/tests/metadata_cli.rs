//! Our `berth` CLI against berth-metadata through the gateway: namespaces, containers and
//! leases created, listed, labelled and removed with `berth`, cross-checked with containerd's
//! `ctr`; and `berth events` printing one line for each change.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use berth_e2e::outcome::{failed, ok, stdout};
use berth_e2e::procs::{self, wait_until};
use berth_e2e::{Stack, require_tool};
use nix::sys::signal::Signal;
use serde_json::Value;

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|err| panic!("not JSON ({err}): {text}"))
}

#[tokio::test]
async fn berth_namespaces_create_list_label_and_remove_agree_with_ctr() {
    require_tool("ctr");
    let stack = Stack::start().await;
    assert_eq!(ok("berth ns create", stack.berth(&["namespaces", "create", "team-a", "owner=alice"])), "");
    ok("berth ns create", stack.berth(&["ns", "create", "team-b"]));

    let listed = ok("berth ns ls", stack.berth(&["ns", "ls"]));
    assert_eq!(lines(&listed)[0].split_whitespace().collect::<Vec<_>>(), ["NAME", "LABELS"]);
    let team_a = listed.lines().find(|l| l.starts_with("team-a")).unwrap_or_else(|| panic!("{listed}"));
    assert!(team_a.ends_with("owner=alice"), "{team_a}");
    assert_eq!(lines(&ok("berth ns ls -q", stack.berth(&["ns", "ls", "-q"]))), ["team-a", "team-b"]);
    let by_ctr = ok("ctr ns ls", stack.ctr(&["namespaces", "ls"]));
    let line = by_ctr.lines().find(|l| l.starts_with("team-a")).unwrap_or_else(|| panic!("{by_ctr}"));
    assert!(line.contains("owner=alice"), "ctr sees berth's labels: {line}");

    // Set one label and remove another in one go; berth prints what is left.
    let labels = ok("berth ns label", stack.berth(&["ns", "label", "team-a", "tier=gold", "owner="]));
    assert_eq!(labels, "tier=gold\n");
    let by_ctr = ok("ctr ns ls", stack.ctr(&["namespaces", "ls"]));
    let line = by_ctr.lines().find(|l| l.starts_with("team-a")).unwrap();
    assert!(line.contains("tier=gold") && !line.contains("owner"), "{line}");
    // And the other way round: ctr's label shows up in berth.
    ok("ctr ns label", stack.ctr(&["namespaces", "label", "team-b", "by=ctr"]));
    let value = json(&ok("berth ns ls --format json", stack.berth(&["ns", "ls", "--format", "json"])));
    assert_eq!(
        value,
        serde_json::json!([{"name": "team-a", "labels": {"tier": "gold"}}, {"name": "team-b", "labels": {"by": "ctr"}}])
    );

    let err = failed("berth ns create twice", stack.berth(&["ns", "create", "team-a"]));
    assert!(err.contains("namespace team-a already exists"), "{err}");
    let err = failed("berth ns create bad name", stack.berth(&["ns", "create", "bad/name"]));
    assert!(err.contains("identifier"), "{err}");

    // rm goes on past a failure, reports it, and exits 1.
    let output = stack.berth(&["ns", "rm", "nope", "team-b"]);
    assert_eq!(stdout(&output), "team-b\n");
    let err = failed("berth ns rm nope team-b", output);
    assert!(err.contains("namespace nope not found") && err.contains("1 of 2 namespaces"), "{err}");
    assert_eq!(lines(&ok("ctr ns ls -q", stack.ctr(&["namespaces", "ls", "-q"]))), ["team-a"]);

    // A namespace with a container in it stays, and the error says what to look at.
    ok("berth c create", stack.berth(&["-n", "team-a", "containers", "create", "example/image:1", "c1"]));
    let err = failed("berth ns rm busy", stack.berth(&["ns", "rm", "team-a"]));
    assert!(err.contains("must be empty") && err.contains("berth -n team-a containers ls"), "{err}");
    ok("berth c rm", stack.berth(&["-n", "team-a", "c", "rm", "c1"]));
    assert_eq!(ok("berth ns rm", stack.berth(&["ns", "rm", "team-a"])), "team-a\n");
    assert_eq!(ok("ctr ns ls -q", stack.ctr(&["namespaces", "ls", "-q"])), "");
}

#[tokio::test]
async fn berth_containers_create_list_info_label_and_remove_agree_with_ctr() {
    require_tool("ctr");
    let stack = Stack::start().await;
    ok(
        "berth c create web",
        stack.berth(&["containers", "create", "--label", "app=web", "docker.io/library/nginx:latest", "web"]),
    );
    let spec_file = stack.dir.path().join("spec.json");
    std::fs::write(
        &spec_file,
        br#"{"ociVersion":"1.1.0","process":{"args":["sh","-c","echo hi"],"cwd":"/"},"root":{"path":"rootfs"}}"#,
    )
    .expect("write spec");
    ok(
        "berth c create db",
        stack.berth(&[
            "c",
            "create",
            "--spec",
            spec_file.to_str().expect("utf-8 path"),
            "--snapshotter",
            "native",
            "--snapshot-key",
            "db-snap",
            "--label",
            "app=db",
            "docker.io/library/postgres:16",
            "db",
        ]),
    );

    let listed = ok("berth c ls", stack.berth(&["c", "ls"]));
    assert_eq!(lines(&listed)[0].split_whitespace().collect::<Vec<_>>(), ["CONTAINER", "IMAGE", "RUNTIME"]);
    let web = listed.lines().find(|l| l.starts_with("web")).unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(
        web.split_whitespace().collect::<Vec<_>>(),
        ["web", "docker.io/library/nginx:latest", "io.containerd.runc.v2"]
    );
    let by_ctr = ok("ctr c ls", stack.ctr(&["containers", "ls"]));
    let web = by_ctr.lines().find(|l| l.starts_with("web")).unwrap_or_else(|| panic!("{by_ctr}"));
    assert_eq!(
        web.split_whitespace().collect::<Vec<_>>(),
        ["web", "docker.io/library/nginx:latest", "io.containerd.runc.v2"]
    );
    assert_eq!(lines(&ok("berth c ls -q", stack.berth(&["c", "ls", "-q"]))), ["db", "web"]);
    assert_eq!(lines(&ok("berth c ls filter", stack.berth(&["c", "ls", "-q", "labels.app==db"]))), ["db"]);
    assert_eq!(lines(&ok("berth c ls filter", stack.berth(&["c", "ls", "-q", "image~=nginx"]))), ["web"]);
    let err = failed("berth c ls bad filter", stack.berth(&["c", "ls", "labels.app=="]));
    assert!(err.contains("position") && err.contains("filters look like"), "{err}");
    let rows = json(&ok("berth c ls --format json", stack.berth(&["c", "ls", "--format", "json"])));
    assert_eq!(rows[0]["id"], "db");
    assert_eq!(rows[0]["snapshotter"], "native");
    assert_eq!(rows[0]["snapshot_key"], "db-snap");
    assert_eq!(rows[1]["labels"], serde_json::json!({"app": "web"}));

    // The default spec is stored the way containerd stores one: ctr decodes it.
    let by_ctr = json(&ok("ctr c info web", stack.ctr(&["containers", "info", "web"])));
    assert_eq!(by_ctr["Image"], "docker.io/library/nginx:latest");
    assert_eq!(by_ctr["Runtime"]["Name"], "io.containerd.runc.v2");
    assert_eq!(by_ctr["Snapshotter"], "overlayfs");
    assert_eq!(by_ctr["Spec"]["ociVersion"], "1.0.2");
    assert_eq!(by_ctr["Spec"]["root"]["path"], "rootfs");
    assert_eq!(by_ctr["Spec"]["linux"]["cgroupsPath"], "/default/web");
    let ours = json(&ok("berth c info web", stack.berth(&["c", "info", "web"])));
    for field in ["ID", "Image", "Labels", "Runtime", "Snapshotter", "SnapshotKey", "Spec"] {
        assert_eq!(ours[field], by_ctr[field], "{field} as berth and ctr show it");
    }
    let created = |info: &Value| {
        let text = info["CreatedAt"].as_str().unwrap_or_else(|| panic!("CreatedAt in {info}")).to_string();
        humantime::parse_rfc3339(&text).unwrap_or_else(|err| panic!("{text}: {err}"))
    };
    assert_eq!(created(&ours), created(&by_ctr));
    // A spec from a file is stored as written (ctr, decoding it into Go's struct, adds defaults).
    let spec = json(&ok("berth c info --spec", stack.berth(&["c", "info", "--spec", "db"])));
    assert_eq!(spec, json(&std::fs::read_to_string(&spec_file).expect("spec")));
    let by_ctr = json(&ok("ctr c info db", stack.ctr(&["containers", "info", "db"])));
    assert_eq!(by_ctr["Spec"]["ociVersion"], "1.1.0");
    assert_eq!(by_ctr["Spec"]["process"]["args"][2], "echo hi");
    assert_eq!(by_ctr["SnapshotKey"], "db-snap");

    // Labels: set and remove with berth, seen by ctr; set with ctr, seen by berth.
    assert_eq!(ok("berth c label", stack.berth(&["c", "label", "web", "tier=front"])), "app=web,tier=front\n");
    assert_eq!(ok("berth c label", stack.berth(&["c", "label", "web", "app="])), "tier=front\n");
    let by_ctr = json(&ok("ctr c info web", stack.ctr(&["containers", "info", "web"])));
    assert_eq!(by_ctr["Labels"], serde_json::json!({"tier": "front"}));
    ok("ctr c label", stack.ctr(&["containers", "label", "db", "by=ctr"]));
    assert_eq!(lines(&ok("berth c ls filter", stack.berth(&["c", "ls", "-q", "labels.by==ctr"]))), ["db"]);

    let err = failed("berth c create twice", stack.berth(&["c", "create", "img", "web"]));
    assert!(err.contains("container web already exists in namespace default"), "{err}");
    let err =
        failed("berth c create bad spec", stack.berth(&["c", "create", "--spec", "/nonexistent.json", "img", "x"]));
    assert!(err.contains("cannot read the spec /nonexistent.json"), "{err}");

    let output = stack.berth(&["c", "rm", "web", "nope"]);
    assert_eq!(stdout(&output), "web\n");
    let err = failed("berth c rm web nope", output);
    assert!(err.contains("container nope not found in namespace default"), "{err}");
    assert_eq!(lines(&ok("ctr c ls -q", stack.ctr(&["containers", "ls", "-q"]))), ["db"]);
    let err = failed("berth c info removed", stack.berth(&["c", "info", "web"]));
    assert!(err.contains("not found") && err.contains("berth -n default containers ls"), "{err}");
    ok("berth c rm db", stack.berth(&["c", "rm", "db"]));
    assert_eq!(ok("ctr c ls -q", stack.ctr(&["containers", "ls", "-q"])), "");
}

#[tokio::test]
async fn berth_leases_create_list_and_remove_agree_with_ctr() {
    require_tool("ctr");
    let stack = Stack::start().await;
    let before = SystemTime::now();
    let created = stack.berth(&["leases", "create", "--id", "pull-1", "--expires", "1h", "--label", "purpose=test"]);
    assert_eq!(ok("berth leases create", created), "pull-1\n");
    let random = ok("berth leases create", stack.berth(&["leases", "create"])).trim().to_string();
    assert!(!random.is_empty() && random != "pull-1", "{random}");
    ok("berth leases create -x 0", stack.berth(&["leases", "create", "--id", "forever", "-x", "0"]));
    ok("ctr leases create", stack.ctr(&["leases", "create", "--id", "by-ctr"]));

    let mut want = vec!["by-ctr", "forever", "pull-1", random.as_str()];
    want.sort();
    assert_eq!(lines(&ok("berth leases ls -q", stack.berth(&["leases", "ls", "-q"]))), want);
    assert_eq!(lines(&ok("ctr leases ls -q", stack.ctr(&["leases", "ls", "-q"]))), want);

    let listed = ok("berth leases ls", stack.berth(&["leases", "ls"]));
    assert_eq!(lines(&listed)[0].split_whitespace().collect::<Vec<_>>(), ["ID", "CREATED", "AT", "LABELS"]);
    let by_ctr = ok("ctr leases ls", stack.ctr(&["leases", "ls"]));
    let line = by_ctr.lines().find(|l| l.starts_with("pull-1")).unwrap_or_else(|| panic!("{by_ctr}"));
    assert!(line.contains("containerd.io/gc.expire=") && line.contains("purpose=test"), "{line}");
    let line = by_ctr.lines().find(|l| l.starts_with("forever")).unwrap_or_else(|| panic!("{by_ctr}"));
    assert!(!line.contains("gc.expire"), "-x 0 never expires: {line}");

    // --expires is an RFC 3339 time an hour from now, as ctr writes it.
    let rows =
        json(&ok("berth leases ls --format json", stack.berth(&["leases", "ls", "--format", "json", "id==pull-1"])));
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{rows}");
    let expire = rows[0]["labels"]["containerd.io/gc.expire"].as_str().unwrap_or_else(|| panic!("{rows}"));
    let expire = humantime::parse_rfc3339(expire).unwrap_or_else(|err| panic!("{expire}: {err}"));
    let from_now = expire.duration_since(before).expect("expiry in the future");
    assert!(from_now > Duration::from_secs(3590) && from_now < Duration::from_secs(3700), "{from_now:?}");
    // ctr's default expiry is a day, and so is berth's.
    let rows =
        json(&ok("berth leases ls", stack.berth(&["leases", "ls", "--format", "json", &format!("id=={random}")])));
    let expire = humantime::parse_rfc3339(rows[0]["labels"]["containerd.io/gc.expire"].as_str().expect("expiry"))
        .expect("rfc3339");
    assert!(expire.duration_since(before).expect("future") > Duration::from_secs(23 * 3600), "{rows}");

    let err = failed("berth leases create twice", stack.berth(&["leases", "create", "--id", "pull-1"]));
    assert!(err.contains("lease pull-1 already exists"), "{err}");

    let removed =
        ok("berth leases rm", stack.berth(&["leases", "rm", "--sync", "pull-1", "by-ctr", "forever", &random]));
    assert_eq!(lines(&removed), ["pull-1", "by-ctr", "forever", random.as_str()]);
    assert_eq!(ok("ctr leases ls -q", stack.ctr(&["leases", "ls", "-q"])), "");
    let err = failed("berth leases rm missing", stack.berth(&["leases", "rm", "pull-1"]));
    assert!(err.contains("lease pull-1 not found in namespace default"), "{err}");
}

/// A `berth events` running in the background, its output going to files; killed by PID if
/// the test ends early.
struct Follower {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Follower {
    fn start(stack: &Stack, name: &str, args: &[&str]) -> Follower {
        let out = stack.dir.path().join(format!("{name}.out"));
        let err = stack.dir.path().join(format!("{name}.err"));
        let child = Command::new(berth_e2e::binary("berth"))
            .arg("--address")
            .arg(&stack.socket)
            .arg("events")
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(std::fs::File::create(&err).expect("stderr file"))
            .spawn()
            .expect("start berth events");
        Follower { child, out, err }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Waits up to 10 s until `lines` lines have been printed.
    fn wait_for_lines(&self, lines: usize) -> String {
        wait_until(Duration::from_secs(10), || self.output().lines().count() >= lines);
        self.output()
    }

    /// Sends `signal` by PID and returns the exit code once it has exited.
    fn stop(&mut self, signal: Signal) -> Option<i32> {
        procs::signal(self.child.id(), signal);
        let mut status = None;
        let exited = wait_until(Duration::from_secs(5), || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        let stderr = std::fs::read_to_string(&self.err).unwrap_or_default();
        assert!(exited, "berth events did not stop on {signal}; stderr: {stderr}");
        assert!(stderr.is_empty(), "berth events complained: {stderr}");
        status.and_then(|status| status.code())
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test]
async fn berth_events_prints_a_line_for_each_change() {
    let stack = Stack::start().await;
    let mut table = Follower::start(&stack, "table", &[]);
    let mut as_json = Follower::start(&stack, "json", &["--format", "json"]);
    let mut containers_only = Follower::start(&stack, "filtered", &["topic~=/containers/"]);
    // The subscriptions are made asynchronously; give them a moment before changing things.
    tokio::time::sleep(Duration::from_millis(700)).await;

    ok("ns create", stack.berth(&["ns", "create", "watched"]));
    ok("c create", stack.berth(&["-n", "watched", "c", "create", "example/image:1", "c1"]));
    ok("c label", stack.berth(&["-n", "watched", "c", "label", "c1", "k=v"]));
    ok("c rm", stack.berth(&["-n", "watched", "c", "rm", "c1"]));
    ok("ns label", stack.berth(&["ns", "label", "watched", "a=b"]));
    ok("ns rm", stack.berth(&["ns", "rm", "watched"]));
    let wanted = [
        "/namespaces/create",
        "/containers/create",
        "/containers/update",
        "/containers/delete",
        "/namespaces/update",
        "/namespaces/delete",
    ];

    // TIMESTAMP NAMESPACE TOPIC EVENT, in the order of the changes.
    let text = table.wait_for_lines(wanted.len());
    let rows: Vec<Vec<&str>> = text.lines().map(|line| line.splitn(4, ' ').collect()).collect();
    assert_eq!(rows.iter().map(|row| row[2]).collect::<Vec<_>>(), wanted, "{text}");
    for row in &rows {
        assert_eq!(row.len(), 4, "{row:?}");
        humantime::parse_rfc3339(row[0]).unwrap_or_else(|err| panic!("timestamp {}: {err}", row[0]));
        assert_eq!(row[1], "watched", "{row:?}");
    }
    let create = json(rows[1][3]);
    assert_eq!(
        create,
        serde_json::json!({"id": "c1", "image": "example/image:1", "runtime": {"name": "io.containerd.runc.v2"}})
    );
    assert_eq!(json(rows[2][3])["labels"], serde_json::json!({"k": "v"}));
    assert_eq!(json(rows[5][3]), serde_json::json!({"name": "watched"}));
    assert_eq!(table.stop(Signal::SIGINT), Some(0), "Ctrl-C ends berth events with success");

    // --format json: one object per line, with the type URL and the decoded event.
    let text = as_json.wait_for_lines(wanted.len());
    let events: Vec<Value> = text.lines().map(json).collect();
    assert_eq!(events.iter().map(|e| e["topic"].as_str().unwrap_or_default()).collect::<Vec<_>>(), wanted);
    assert_eq!(events[1]["type"], "containerd.events.ContainerCreate");
    assert_eq!(events[1]["namespace"], "watched");
    assert_eq!(events[1]["event"]["id"], "c1");
    assert_eq!(events[3]["type"], "containerd.events.ContainerDelete");
    assert_eq!(events[4]["event"], serde_json::json!({"name": "watched", "labels": {"a": "b"}}));
    assert_eq!(as_json.stop(Signal::SIGTERM), Some(0), "SIGTERM ends berth events with success");

    // A filter leaves out the namespace events.
    let text = containers_only.wait_for_lines(3);
    let topics: Vec<&str> = text.lines().filter_map(|line| line.split(' ').nth(2)).collect();
    assert_eq!(topics, ["/containers/create", "/containers/update", "/containers/delete"], "{text}");
    assert_eq!(containers_only.stop(Signal::SIGINT), Some(0));
}
