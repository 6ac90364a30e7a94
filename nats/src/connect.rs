//! Connecting to NATS from a `NATS_URL`: a comma-separated list of servers
//! (a cluster: every one is a way in), whose addresses may carry the
//! user's credentials (`nats://edge:secret@host:4222`, see
//! `docs/nats-permissions.md`). async-nats takes credentials from its
//! options only, never from the URL, and would print them with the URL.

use async_nats::{Client, ConnectError, ConnectOptions, ServerAddr};

/// The servers of `nats_url`.
pub fn servers(nats_url: &str) -> Vec<&str> {
    nats_url.split(',').map(str::trim).filter(|s| !s.is_empty()).collect()
}

/// Options carrying the credentials the first address that has them names.
pub fn options(nats_url: &str) -> ConnectOptions {
    let opts = ConnectOptions::new();
    let creds = servers(nats_url).into_iter().find_map(|u| {
        let addr: ServerAddr = u.parse().ok()?;
        Some((addr.username()?.to_string(), addr.password()?.to_string()))
    });
    match creds {
        Some((user, password)) => opts.user_and_password(user, password),
        None => opts,
    }
}

/// Connects as `name` (shown in the server's connection list).
pub async fn connect(nats_url: &str, name: &str) -> Result<Client, ConnectError> {
    options(nats_url).name(name).connect(servers(nats_url)).await
}

/// `nats_url` fit to print: the credentials of every address replaced.
pub fn redacted(nats_url: &str) -> String {
    servers(nats_url)
        .into_iter()
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => format!("{}***{}", &u[..scheme + 3], &u[at..]),
            (None, Some(at)) => format!("***{}", &u[at..]),
            _ => u.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_taken_and_never_printed() {
        let url = "nats://edge:s3cret@10.0.0.1:4222, nats://edge:s3cret@10.0.0.2:4222";
        assert_eq!(servers(url).len(), 2);
        assert_eq!(redacted(url), "nats://***@10.0.0.1:4222,nats://***@10.0.0.2:4222");
        assert_eq!(redacted("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        let addr: ServerAddr = servers(url)[0].parse().unwrap();
        assert_eq!((addr.username(), addr.password()), (Some("edge"), Some("s3cret")));
    }
}
