//! Image references as docker and containerd normalize them: `busybox` is
//! `docker.io/library/busybox:latest`, `127.0.0.1:5000/app@sha256:...` keeps its registry.

use std::fmt;
use std::sync::OnceLock;

use regex::Regex;
use thiserror::Error;

/// Registry that references without a domain point at.
pub const DEFAULT_DOMAIN: &str = "docker.io";
/// Where `docker.io` is served.
const DOCKER_HUB_HOST: &str = "registry-1.docker.io";
const DEFAULT_TAG: &str = "latest";
/// Longest repository name (domain and path) distribution accepts.
const MAX_NAME: usize = 255;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("reference {input:?}: {problem}")]
pub struct ReferenceError {
    pub input: String,
    pub problem: String,
}

/// A normalized reference: a registry, a repository in it, and a tag and/or digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `docker.io`, `ghcr.io`, `127.0.0.1:5000`.
    pub domain: String,
    /// `library/busybox`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

fn component_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$").expect("valid regex"))
}

fn domain_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(
            r"^(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?$",
        )
        .expect("valid regex")
    })
}

fn tag_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"^[\w][\w.-]{0,127}$").expect("valid regex"))
}

impl Reference {
    /// Parses and normalizes `input`; a reference with neither tag nor digest gets `latest`.
    pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
        let error = |problem: &str| ReferenceError { input: input.to_string(), problem: problem.to_string() };
        if input.is_empty() {
            return Err(error("must not be empty"));
        }
        if input.len() == 64 && input.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(error("cannot specify 64-byte hexadecimal strings"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => {
                crate::digest::validate(digest).map_err(|p| error(&format!("digest: {p}")))?;
                (rest, Some(digest.to_string()))
            }
            None => (input, None),
        };
        // A tag follows the last `:` after the last `/` (a `:` before it is a port).
        let (name, tag) = match rest.rfind(':') {
            Some(colon) if !rest[colon..].contains('/') => (&rest[..colon], Some(rest[colon + 1..].to_string())),
            _ => (rest, None),
        };
        if let Some(t) = &tag
            && !tag_re().is_match(t)
        {
            return Err(error(&format!("invalid tag {t:?}")));
        }
        let (domain, repository) = match name.split_once('/') {
            Some((first, remainder))
                if first.contains(['.', ':']) || first == "localhost" || first.to_lowercase() != first =>
            {
                (first.to_string(), remainder.to_string())
            }
            _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
        };
        let domain = if domain == "index.docker.io" { DEFAULT_DOMAIN.to_string() } else { domain };
        let repository = if domain == DEFAULT_DOMAIN && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if !domain_re().is_match(&domain) {
            return Err(error(&format!("invalid registry {domain:?}")));
        }
        if repository.is_empty() {
            return Err(error("repository name must not be empty"));
        }
        if repository.to_lowercase() != repository {
            return Err(error("repository name must be lowercase"));
        }
        if let Some(bad) = repository.split('/').find(|c| !component_re().is_match(c)) {
            return Err(error(&format!(
                "invalid repository path component {bad:?} (lowercase letters, digits and single separators)"
            )));
        }
        if domain.len() + 1 + repository.len() > MAX_NAME {
            return Err(error(&format!("repository name longer than {MAX_NAME} characters")));
        }
        let tag = if tag.is_none() && digest.is_none() { Some(DEFAULT_TAG.to_string()) } else { tag };
        Ok(Reference { domain, repository, tag, digest })
    }

    /// The host to speak the registry API to (`registry-1.docker.io` for `docker.io`).
    pub fn registry_host(&self) -> &str {
        if self.domain == DEFAULT_DOMAIN { DOCKER_HUB_HOST } else { &self.domain }
    }

    /// What to ask the registry's manifests endpoint for: the digest when there is one.
    pub fn object(&self) -> &str {
        self.digest.as_deref().or(self.tag.as_deref()).unwrap_or(DEFAULT_TAG)
    }

    /// The registry's host name without a port (`127.0.0.1` for `127.0.0.1:5000`, `::1` for
    /// `[::1]:5000`), as containerd names it in distribution-source labels.
    pub fn hostname(&self) -> &str {
        if let Some(rest) = self.domain.strip_prefix('[') {
            return rest.split(']').next().unwrap_or(rest);
        }
        match self.domain.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => &self.domain,
        }
    }

    /// `domain/repository` without tag or digest.
    pub fn locator(&self) -> String {
        format!("{}/{}", self.domain, self.repository)
    }
}

impl fmt::Display for Reference {
    /// The image name containerd stores: `docker.io/library/busybox:latest`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_docker() {
        let digest = format!("sha256:{}", "a".repeat(64));
        for (input, want) in [
            ("busybox", "docker.io/library/busybox:latest".to_string()),
            ("busybox:1.36", "docker.io/library/busybox:1.36".to_string()),
            ("library/busybox", "docker.io/library/busybox:latest".to_string()),
            ("user/app:v1", "docker.io/user/app:v1".to_string()),
            ("docker.io/busybox", "docker.io/library/busybox:latest".to_string()),
            ("index.docker.io/user/app", "docker.io/user/app:latest".to_string()),
            ("ghcr.io/org/team/app:2", "ghcr.io/org/team/app:2".to_string()),
            ("localhost/app", "localhost/app:latest".to_string()),
            ("127.0.0.1:5000/app", "127.0.0.1:5000/app:latest".to_string()),
            ("127.0.0.1:5000/app:1", "127.0.0.1:5000/app:1".to_string()),
            (&format!("busybox@{digest}") as &str, format!("docker.io/library/busybox@{digest}")),
            (&format!("busybox:1@{digest}") as &str, format!("docker.io/library/busybox:1@{digest}")),
        ] {
            assert_eq!(Reference::parse(input).unwrap().to_string(), want, "{input}");
        }
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(
            (r.registry_host(), r.repository.as_str(), r.object()),
            ("registry-1.docker.io", "library/busybox", "latest")
        );
        assert_eq!(r.hostname(), "docker.io");
        assert_eq!(Reference::parse("[::1]:5000/app").unwrap().hostname(), "::1");
        let r = Reference::parse(&format!("127.0.0.1:5000/app:1@{digest}")).unwrap();
        assert_eq!(r.hostname(), "127.0.0.1");
        assert_eq!((r.registry_host(), r.object()), ("127.0.0.1:5000", digest.as_str()));
    }

    #[test]
    fn refuses_what_docker_refuses() {
        for input in [
            "",
            "Busybox",
            "docker.io/Library/busybox",
            "busybox:",
            "busybox:bad tag",
            "app@sha256:short",
            "a//b",
            "-a",
            &"a".repeat(64),
            &format!("x/{}", "a".repeat(300)),
        ] {
            assert!(Reference::parse(input).is_err(), "{input}");
        }
    }
}
