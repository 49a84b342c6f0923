//! Per-registry settings for pulls and pushes run by berth-image, against docker-registry on
//! loopback: a TLS registry with a CA of its own is refused (with words saying where its CA
//! goes) until berthd's --registry-config directory has a hosts.toml naming the CA — or
//! docker's certs.d `*.crt` file — and registry credentials come from docker's config.json
//! when `--user` is not given.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use berth_e2e::Stack;
use berth_e2e::images::{self, busybox};
use berth_e2e::outcome::{failed, ok};
use berth_e2e::registry::Registry;

/// `berth` against the stack with `DOCKER_CONFIG` set to `docker_config`.
fn berth_with_docker_config(stack: &Stack, docker_config: &Path, args: &[&str]) -> Output {
    Command::new(berth_e2e::binary("berth"))
        .arg("--address")
        .arg(&stack.socket)
        .args(args)
        .env("DOCKER_CONFIG", docker_config)
        .stdin(Stdio::null())
        .output()
        .expect("run berth")
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            out.push(if i <= chunk.len() { ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char } else { '=' });
        }
    }
    out
}

#[tokio::test]
async fn a_tls_registry_is_trusted_through_hosts_toml() {
    let registry = Registry::start_tls();
    let image = busybox();
    let reference = images::push(&registry, image, "busybox:1");
    let settings = tempfile::tempdir().unwrap();
    let stack = Stack::start_with(&["--registry-config", settings.path().to_str().unwrap()]).await;

    // No settings: the certificate is not trusted, and the error says where the CA goes.
    let err = failed("pull without the CA", stack.berth(&["images", "pull", "--no-unpack", &reference]));
    let expected = settings.path().join(registry.addr()).join("hosts.toml");
    assert!(err.contains("not trusted"), "{err}");
    assert!(err.contains(&expected.display().to_string()) && err.contains("ca = "), "{err}");
    assert!(err.contains("--registry-config"), "{err}");

    // hosts.toml with the CA (relative to the file): pulls and pushes work, no restart.
    let host_dir = settings.path().join(registry.addr());
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::copy(registry.ca_path().unwrap(), host_dir.join("registry-ca.pem")).unwrap();
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!("server = \"https://{}\"\nca = \"registry-ca.pem\"\n", registry.addr()),
    )
    .unwrap();
    let out = ok("pull with the CA", stack.berth(&["images", "pull", "--no-unpack", &reference]));
    assert_eq!(out.trim(), format!("{reference} {}", image.digest()));
    let copy = registry.reference("copy/busybox:2");
    let out = ok("push with the CA", stack.berth(&["images", "push", &reference, &copy]));
    assert_eq!(out.trim(), format!("{copy} {}", image.digest()));
    // The pushed blobs are labelled with where they now are, as after a pull.
    let content = ok("ctr content ls", stack.ctr(&["content", "ls"]));
    let layer = &image.manifest().layers[0].digest;
    let row = content.lines().find(|l| l.starts_with(layer.as_str())).unwrap_or_else(|| panic!("{content}"));
    assert!(row.contains("containerd.io/distribution.source.127.0.0.1=busybox,copy/busybox"), "{row}");

    // docker's certs.d layout works too: a *.crt file and no hosts.toml.
    std::fs::remove_file(host_dir.join("hosts.toml")).unwrap();
    std::fs::rename(host_dir.join("registry-ca.pem"), host_dir.join("ca.crt")).unwrap();
    let out = ok("pull with ca.crt", stack.berth(&["-n", "other", "images", "pull", "--no-unpack", &copy]));
    assert_eq!(out.trim(), format!("{copy} {}", image.digest()));

    // --skip-verify needs no CA at all.
    std::fs::remove_file(host_dir.join("ca.crt")).unwrap();
    ok(
        "pull skipping verification",
        stack.berth(&["-n", "third", "images", "pull", "--no-unpack", "--skip-verify", &copy]),
    );
}

#[tokio::test]
async fn credentials_come_from_docker_config_json() {
    let registry = Registry::start_with_auth();
    let image = busybox();
    let reference = images::push(&registry, image, "private/busybox:1");
    let stack = Stack::start().await;
    let docker = tempfile::tempdir().unwrap();

    // No config.json (and no --user): the registry's refusal says how to give credentials.
    let err = failed(
        "pull without credentials",
        berth_with_docker_config(&stack, docker.path(), &["images", "pull", "--no-unpack", &reference]),
    );
    assert!(err.contains("credentials") && err.contains("--user"), "{err}");

    // An entry for another registry is not used.
    let (user, password) = registry.credentials().unwrap();
    let auth = base64(format!("{user}:{password}").as_bytes());
    std::fs::write(
        docker.path().join("config.json"),
        format!(r#"{{"auths": {{"elsewhere.example.com": {{"auth": "{auth}"}}}}}}"#),
    )
    .unwrap();
    failed(
        "pull with credentials for another registry",
        berth_with_docker_config(&stack, docker.path(), &["images", "pull", "--no-unpack", &reference]),
    );

    // docker login's entry for this registry: pull and push use it.
    std::fs::write(
        docker.path().join("config.json"),
        format!(r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#, registry.addr()),
    )
    .unwrap();
    let out = ok(
        "pull with docker's credentials",
        berth_with_docker_config(&stack, docker.path(), &["images", "pull", "--no-unpack", &reference]),
    );
    assert_eq!(out.trim(), format!("{reference} {}", image.digest()));
    let copy = registry.reference("private/copy:1");
    ok(
        "push with docker's credentials",
        berth_with_docker_config(&stack, docker.path(), &["images", "push", &reference, &copy]),
    );
    // username/password fields (no auth) work as well; --user still wins over the file.
    std::fs::write(
        docker.path().join("config.json"),
        format!(
            r#"{{"auths": {{"http://{}/v2/": {{"username": "{user}", "password": "{password}"}}}}}}"#,
            registry.addr()
        ),
    )
    .unwrap();
    ok(
        "pull with username and password from config.json",
        berth_with_docker_config(&stack, docker.path(), &["-n", "other", "images", "pull", "--no-unpack", &copy]),
    );
    let err = failed(
        "pull with a wrong --user",
        berth_with_docker_config(
            &stack,
            docker.path(),
            &["-n", "third", "images", "pull", "--no-unpack", "--user", "docker:wrong", &copy],
        ),
    );
    assert!(err.contains("--user"), "{err}");
}

#[tokio::test]
async fn a_registry_that_wants_a_client_certificate_gets_the_one_in_hosts_toml() {
    let registry = Registry::start_tls_with_client_auth();
    let image = busybox();
    let reference = registry.reference("busybox:1");
    let client = registry.client_cert_dir().unwrap();
    let skopeo = berth_e2e::require_tool("skopeo");
    let copied = Command::new(skopeo)
        .args(["--insecure-policy", "copy", "--quiet", "--preserve-digests", "--dest-cert-dir"])
        .arg(&client)
        .arg(image.oci_ref())
        .arg(format!("docker://{reference}"))
        .output()
        .expect("run skopeo");
    assert!(copied.status.success(), "skopeo: {}", String::from_utf8_lossy(&copied.stderr));
    let settings = tempfile::tempdir().unwrap();
    let stack = Stack::start_with(&["--registry-config", settings.path().to_str().unwrap()]).await;
    let host_dir = settings.path().join(registry.addr());
    std::fs::create_dir_all(&host_dir).unwrap();

    // The CA alone: the registry refuses the connection, and the error says what it wants.
    let ca = registry.ca_path().unwrap();
    std::fs::write(host_dir.join("hosts.toml"), format!("ca = {:?}\n", ca.display().to_string())).unwrap();
    let err = failed("pull without a client certificate", stack.berth(&["images", "pull", "--no-unpack", &reference]));
    assert!(err.contains("client certificate"), "{err}");

    // hosts.toml naming the certificate and its key.
    let cert = client.join("client.cert").display().to_string();
    let key = client.join("client.key").display().to_string();
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!(
            "server = \"https://{}\"\nca = [{:?}]\nclient = [[{cert:?}, {key:?}]]\n",
            registry.addr(),
            ca.display().to_string()
        ),
    )
    .unwrap();
    let out = ok("pull with a client certificate", stack.berth(&["images", "pull", "--no-unpack", &reference]));
    assert_eq!(out.trim(), format!("{reference} {}", image.digest()));

    // docker's certs.d layout: ca.crt, client.cert and client.key beside each other.
    std::fs::remove_dir_all(&host_dir).unwrap();
    std::os::unix::fs::symlink(&client, &host_dir).unwrap();
    let out =
        ok("pull with docker's layout", stack.berth(&["-n", "other", "images", "pull", "--no-unpack", &reference]));
    assert_eq!(out.trim(), format!("{reference} {}", image.digest()));
}
