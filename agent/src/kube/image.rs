//! Image pull failures: which registry an image reference names, and why a
//! pull failed, from the kubelet's waiting message.

/// Registry of an image reference, as the container runtimes resolve it
/// (distribution/reference's normalisation): the first path component is a
/// registry host if it has a `.` or a `:` (a port) or is `localhost`;
/// otherwise the image is on Docker Hub (`nginx`, `library/nginx`,
/// `bitnami/redis` → `docker.io`). `index.docker.io` and
/// `registry-1.docker.io` are Docker Hub too. Lower-cased: host names are
/// case-insensitive and label values should not split on case.
#[must_use]
pub fn registry(image: &str) -> String {
    let image = image.trim();
    // Old docker-shim statuses carried `docker-pullable://`; drop any scheme.
    let image = image.rsplit_once("://").map_or(image, |(_, r)| r);
    let Some((first, _rest)) = image.split_once('/') else {
        return "docker.io".into();
    };
    let is_host = first.contains('.') || first.contains(':') || first == "localhost";
    // An upper-case first component is a repository name, never a host
    // (distribution/reference refuses upper case in repositories and treats
    // such a component as a domain only when it has a '.' or ':').
    if !is_host || first.is_empty() {
        return "docker.io".into();
    }
    let host = first.to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".into(),
        _ => host,
    }
}

/// Why a pull failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// HTTP 429 / `toomanyrequests` / Docker Hub's "pull rate limit".
    RateLimited,
    /// The registry refused the credentials (or their absence).
    Unauthorized,
    /// No such repository, tag or manifest.
    NotFound,
    Other,
}

impl Reason {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::RateLimited => "rate_limited",
            Reason::Unauthorized => "unauthorized",
            Reason::NotFound => "not_found",
            Reason::Other => "other",
        }
    }
}

/// Whether `code` (an HTTP status) occurs in `text` as a number of its own,
/// not inside a digest or a longer number (`sha256:…4290…`).
fn has_status(text: &str, code: &str) -> bool {
    let b = text.as_bytes();
    text.match_indices(code).any(|(at, m)| {
        let before = at.checked_sub(1).and_then(|i| b.get(i));
        let after = b.get(at + m.len());
        !before.is_some_and(u8::is_ascii_alphanumeric)
            && !after.is_some_and(u8::is_ascii_alphanumeric)
    })
}

/// Classifies the kubelet's message of a container waiting in `ErrImagePull`
/// or `ImagePullBackOff` (containerd and CRI-O wrap the registry's answer;
/// the back-off message repeats the last pull error). Rate limits are
/// checked first because a throttled registry may also answer 401/403 on
/// the token endpoint; "repository does not exist" is Docker Hub's answer
/// for a private or missing repository alike, counted as not found because
/// a typo is its usual cause.
#[must_use]
pub fn classify(message: &str) -> Reason {
    let m = message.to_ascii_lowercase();
    let any = |needles: &[&str]| needles.iter().any(|n| m.contains(n));
    if any(&[
        "toomanyrequests",
        "too many requests",
        "rate limit",
        "ratelimit",
    ]) || has_status(&m, "429")
    {
        Reason::RateLimited
    } else if any(&[
        ": not found",
        "manifest unknown",
        "name unknown",
        "repository does not exist",
        "not found: manifest",
        "404 not found",
    ]) || (has_status(&m, "404") && m.contains("status"))
    {
        Reason::NotFound
    } else if any(&[
        "unauthorized",
        "authentication required",
        "access denied",
        "forbidden",
        "denied:",
        "insufficient_scope",
        "no basic auth credentials",
    ]) || has_status(&m, "401")
        || has_status(&m, "403")
    {
        Reason::Unauthorized
    } else {
        Reason::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries() {
        for (image, want) in [
            ("nginx", "docker.io"),
            ("nginx:1.27", "docker.io"),
            ("library/nginx@sha256:0123", "docker.io"),
            ("bitnami/redis:7", "docker.io"),
            ("docker.io/library/nginx:latest", "docker.io"),
            ("index.docker.io/library/nginx", "docker.io"),
            ("ghcr.io/x/y", "ghcr.io"),
            ("ghcr.io/x/y:v1@sha256:abcd", "ghcr.io"),
            ("GHCR.io/x/y", "ghcr.io"),
            ("registry.k8s.io/pause:3.10", "registry.k8s.io"),
            ("registry.local:5000/team/app:1", "registry.local:5000"),
            ("localhost/app", "localhost"),
            ("localhost:5000/app", "localhost:5000"),
            ("10.0.0.5:5000/app", "10.0.0.5:5000"),
            ("[fd00::1]:5000/app", "[fd00::1]:5000"),
            (
                "123456789012.dkr.ecr.eu-west-1.amazonaws.com/app",
                "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
            ),
            (
                "docker-pullable://quay.io/prometheus/node-exporter",
                "quay.io",
            ),
            ("", "docker.io"),
            ("/x", "docker.io"),
        ] {
            assert_eq!(registry(image), want, "{image}");
        }
    }

    #[test]
    fn reasons_from_runtime_messages() {
        for (msg, want) in [
            // containerd, Docker Hub's anonymous limit.
            ("rpc error: code = Unknown desc = failed to pull and unpack image \"docker.io/library/nginx:latest\": failed to copy: httpReadSeeker: failed open: unexpected status code https://registry-1.docker.io/v2/library/nginx/manifests/sha256:4290aa: 429 Too Many Requests - Server message: toomanyrequests: You have reached your unauthenticated pull rate limit. https://www.docker.com/increase-rate-limit", Reason::RateLimited),
            ("Back-off pulling image \"nginx\": ErrImagePull: toomanyrequests: too many requests", Reason::RateLimited),
            ("failed to pull image: unexpected status code 429", Reason::RateLimited),
            ("rpc error: code = NotFound desc = failed to pull and unpack image \"docker.io/library/nginx:nope\": failed to resolve reference \"docker.io/library/nginx:nope\": docker.io/library/nginx:nope: not found", Reason::NotFound),
            ("Error response from daemon: manifest for ghcr.io/x/y:v9 not found: manifest unknown: manifest unknown", Reason::NotFound),
            ("failed to resolve reference \"docker.io/library/nope:latest\": pull access denied, repository does not exist or may require authorization: server message: insufficient_scope: authorization failed", Reason::NotFound),
            ("failed to authorize: failed to fetch anonymous token: unexpected status from GET request to https://ghcr.io/token?scope=repository%3Ax%2Fy%3Apull: 401 Unauthorized", Reason::Unauthorized),
            ("failed to fetch oauth token: unexpected status: 403 Forbidden", Reason::Unauthorized),
            ("pulling from host 123.dkr.ecr.us-east-1.amazonaws.com failed with status code [manifests v1]: 403 Forbidden: no basic auth credentials", Reason::Unauthorized),
            ("dial tcp: lookup registry.local on 10.96.0.10:53: no such host", Reason::Other),
            ("image pull failed for sha256:1429ab because of i/o timeout", Reason::Other),
            ("", Reason::Other),
        ] {
            assert_eq!(classify(msg), want, "{msg}");
        }
    }
}
