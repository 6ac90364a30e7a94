//! Typed configuration, read once from the environment (or any other source
//! in tests) and passed down. Every variable is documented on its field.
//! Missing or invalid required values are reported by name before anything
//! binds; secrets are never printed by `Debug`.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;

/// Where configuration values come from: the process environment in binaries,
/// a map in tests.
pub trait Source {
    fn get(&self, key: &str) -> Option<String>;
}

/// Largest `MAX_FILE_SIZE` accepted: an upload is held in a WebSocket
/// message (or a polling body, in base64) and staged whole, and the
/// arithmetic on sizes must not overflow.
pub const MAX_FILE_SIZE_LIMIT: u64 = 256 * 1024 * 1024;

/// `STAGING_MAX_BYTES` when it is unset: 1 GiB.
pub const STAGING_MAX_BYTES_DEFAULT: u64 = 1 << 30;
/// Partitions of a deployment that never chose a count (`PARTITIONS`).
pub const PARTITIONS_DEFAULT: u32 = 8;
/// Most partitions a deployment may have.
pub const PARTITIONS_MAX: u32 = 1024;

/// The process environment.
pub struct Env;

impl Source for Env {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok().filter(|v| !v.trim().is_empty())
    }
}

impl Source for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned().filter(|v| !v.trim().is_empty())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("missing required environment variable {0}")]
    Missing(&'static str),
    #[error("invalid value for {var}: {reason}")]
    Invalid { var: &'static str, reason: String },
}

/// A secret string whose `Debug` output is redacted.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Connection settings every binary needs.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// `NATS_URL` (required): NATS server(s), comma-separated, e.g. `nats://127.0.0.1:4222`.
    pub nats_url: String,
    /// `NATS_NAMESPACE` (default `chat`): first token of every subject and
    /// prefix of every stream, consumer and bucket name; lets tests and
    /// tenants share one NATS server without seeing each other.
    pub nats_namespace: String,
    /// `MONGODB_URI` (required): a MongoDB connection string.
    pub mongodb_uri: String,
    /// The database: the path of `MONGODB_URI`, else `MONGODB_DB`, else `natter`.
    pub mongodb_db: String,
    /// `NATS_REPLICAS` (default 1): replicas of the streams and buckets
    /// this process declares on start (`NATS_TOPOLOGY=apply`); 3 on a
    /// three-node cluster.
    pub nats_replicas: usize,
    /// `STAGING_MAX_BYTES` (default 1073741824, 1 GiB): most bytes the
    /// staging bucket holds for uploads not yet moved to S3, all users
    /// together; past it an upload is refused (503, `unavailable`).
    /// JetStream reserves this much of its file store (`max_file_store`)
    /// when the bucket is declared (`NATS_TOPOLOGY=apply`), so it must fit
    /// there, beside the command stream.
    pub staging_max_bytes: u64,
    /// `PARTITIONS` (default 8, at most 1024): how many partitions the
    /// command stream of a new deployment is split into; the most workers
    /// of a role that do work at once. A deployment keeps the count it
    /// started with; `natterctl partitions set` moves it to another.
    pub partitions: u32,
    /// `NATS_TOPOLOGY` (default `apply`): what this process does with the
    /// streams, consumers and buckets when it starts. `apply` declares them
    /// (creates or updates; its NATS user must be allowed to); `verify`
    /// only checks that they exist (stream and consumer info) and stops,
    /// naming what is missing. `verify` goes with the shipped NATS
    /// permissions (`infra/nats/permissions.conf`), under which only `ctl`
    /// declares them: `natterctl topology apply` runs first.
    pub nats_topology: NatsTopology,
    /// `METRICS_ADDR` (default: none): where a worker serves its Prometheus
    /// metrics (`host:port`, path `/metrics`). The edge serves them at
    /// `/metrics` on its own address.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// What an edge or a worker does with the NATS topology when it starts
/// (see [`CoreConfig::nats_topology`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum NatsTopology {
    /// `apply`: declare it (create or update), as `natterctl topology apply` does.
    #[default]
    Apply,
    /// `verify`: only check that it is there.
    Verify,
}

/// `NATS_TOPOLOGY`: see [`CoreConfig::nats_topology`].
pub fn nats_topology(src: &dyn Source) -> Result<NatsTopology, ConfigError> {
    match src.get("NATS_TOPOLOGY").as_deref().map(str::trim) {
        None | Some("apply") => Ok(NatsTopology::Apply),
        Some("verify") => Ok(NatsTopology::Verify),
        Some(v) => Err(invalid("NATS_TOPOLOGY", format!("`{v}` is not `apply` or `verify`"))),
    }
}

/// Settings of the edge server.
#[derive(Clone, Debug)]
pub struct EdgeConfig {
    pub core: CoreConfig,
    /// `JWT_SECRET` (required, at least 32 bytes) and the optional
    /// `JWT_AUDIENCE`, `JWT_ISSUER`, `JWT_MAX_TTL`: how tokens are checked.
    pub jwt: JwtConfig,
    /// `FRONTEND_URL` (default `http://localhost:3000`): allowed browser
    /// origins, comma-separated, compared exactly with the `Origin` header.
    pub frontend_urls: Vec<String>,
    /// `MAX_FILE_SIZE` (default 10485760, at most `MAX_FILE_SIZE_LIMIT`):
    /// upper bound of an attachment in bytes.
    pub max_file_size: u64,
    /// `LISTEN_ADDR` (default `127.0.0.1:8080`): where the edge listens.
    pub listen: SocketAddr,
    /// `S3_ENDPOINT`, `S3_BUCKET`, `S3_ACCESS_KEY`, `S3_SECRET_KEY`: all four or none.
    pub s3: Option<S3Config>,
    /// `ATTACHMENT_URL_TTL` (default 300): seconds a presigned download URL
    /// stays valid.
    pub attachment_url_ttl: u64,
    /// `ATTACHMENT_DOWNLOAD` (default `redirect`): `redirect` to a presigned
    /// URL, or `proxy` to stream the bytes through the edge.
    pub attachment_proxy: bool,
    /// `WS_RATE_PER_SEC` (default 100): requests per second one WebSocket
    /// connection may sustain; bursts of twice that are allowed.
    pub ws_rate_per_sec: u32,
    /// `UPLOADS_PER_MIN` (default 30) and `UPLOAD_BYTES_PER_MIN` (default
    /// 209715200, 200 MiB): each user's upload budget, across their
    /// connections and REST (the count also across edges, the bytes per
    /// edge); past it uploads are refused with 429 `rate_limited` until the
    /// budget refills.
    pub uploads_per_min: u32,
    pub upload_bytes_per_min: u64,
    /// `USER_SENDS_PER_SEC` (default 100): messages per second one user may
    /// send across all their connections, REST calls and edges (counted in
    /// windows of two seconds, so a burst of twice that fits); past it
    /// `rate_limited`.
    pub user_sends_per_sec: u32,
    /// `USER_GROUPS_PER_DAY` (default 100): groups one user may create per
    /// day (UTC), across edges; past it `rate_limited`.
    pub user_groups_per_day: u32,
    /// See [`unsent_upload_ttl`].
    pub unsent_upload_ttl: std::time::Duration,
    /// `REST_RATE_PER_SEC` (default 50): REST requests per second one user
    /// (or, without a valid token, one client address) may sustain on an
    /// edge; bursts of twice that. Past it: 429 `rate_limited`.
    pub rest_rate_per_sec: u32,
    /// `SIO_PING_INTERVAL_MS` (default 25000) and `SIO_PING_TIMEOUT_MS`
    /// (default 20000): the Engine.IO heartbeat. A client that does not
    /// answer a ping within the timeout is disconnected.
    pub sio_ping_interval: std::time::Duration,
    pub sio_ping_timeout: std::time::Duration,
    /// `WS_PING_INTERVAL_MS` (default 10000): a `/ws` client the edge has
    /// heard nothing from for this long is pinged, and closed (4002) after
    /// twice as long; a peer that vanished goes offline within that.
    pub ws_ping_interval: std::time::Duration,
    /// `SIO_PENDING_PER_IP` (default 64) and `SIO_PENDING_MAX` (default
    /// 10000): Engine.IO sessions not yet authenticated (no Socket.IO
    /// CONNECT accepted) per client address and on the whole edge; more
    /// handshakes are refused (429) until some connect or end. Behind a
    /// proxy every client has the proxy's address: raise the first.
    pub sio_pending_per_ip: usize,
    pub sio_pending_max: usize,
    /// `TRUST_FORWARDED_FOR` (default `false`): the edge is behind a proxy
    /// that appends the client's address to `X-Forwarded-For` (the nginx
    /// example does); the per-address limits count by that address. Never
    /// set it on an edge clients reach directly: they could claim any.
    pub trust_forwarded_for: bool,
    /// `CATCHUP_MAX_EVENTS` (default 1000): most events a reconnecting
    /// client is sent for one room; beyond that it is told to refetch the
    /// history over REST.
    pub catchup_max_events: u64,
    /// `PRESENCE_MAX_GROUP` (default 500): groups of more members than this
    /// do not push their members' comings and goings to each other (each
    /// would be told of every other, the square of the group in frames when
    /// it reconnects at once); they still see each other's presence over
    /// REST. `0`: no group pushes presence.
    pub presence_max_group: usize,
    /// `WEB_DIR` (default `web`): the web client's files, served at `/`
    /// (`index.html`, and `vendor/socket.io.min.js` from the npm package
    /// that `infra/install.sh --node` installs there). Without the
    /// directory, `/` says how to install it.
    pub web_dir: std::path::PathBuf,
    /// `DEV_TOKENS` (default `false`): `POST /api/dev/token` mints a token
    /// for any user id and roles, for the web client's sign-in on a
    /// development stack. Anyone who reaches the edge could then act as
    /// anyone: never set it in production.
    pub dev_tokens: bool,
}

/// S3-compatible storage for attachments.
#[derive(Clone, Debug)]
pub struct S3Config {
    /// `S3_ENDPOINT`: base URL of the S3 API (path-style addressing is used).
    pub endpoint: String,
    /// `S3_BUCKET`: bucket the attachments go to.
    pub bucket: String,
    /// `S3_ACCESS_KEY`
    pub access_key: String,
    /// `S3_SECRET_KEY`
    pub secret_key: Secret,
    /// `S3_REGION` (default `us-east-1`)
    pub region: String,
}

fn required(src: &dyn Source, var: &'static str) -> Result<String, ConfigError> {
    src.get(var).ok_or(ConfigError::Missing(var))
}

/// The number in `name`, within `range`, or `default` when it is unset.
fn number<T>(
    src: &dyn Source,
    name: &'static str,
    default: T,
    range: std::ops::RangeInclusive<T>,
    what: &str,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    let Some(v) = src.get(name) else { return Ok(default) };
    match v.trim().parse::<T>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(invalid(name, format!("`{v}` is not {what} in {}..={}", range.start(), range.end()))),
    }
}

fn invalid(var: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { var, reason: reason.into() }
}

impl CoreConfig {
    pub fn load(src: &dyn Source) -> Result<Self, ConfigError> {
        let nats_url = required(src, "NATS_URL")?;
        for part in nats_url.split(',') {
            let p = part.trim();
            let ok = ["nats://", "tls://", "ws://", "wss://"].iter().any(|s| p.starts_with(s))
                || (!p.contains("://") && p.contains(':'));
            if !ok {
                return Err(invalid("NATS_URL", format!("`{p}` is not a NATS URL (nats://host:port)")));
            }
        }
        let nats_namespace = src.get("NATS_NAMESPACE").unwrap_or_else(|| "chat".into());
        if nats_namespace.is_empty()
            || !nats_namespace.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(invalid("NATS_NAMESPACE", "use letters, digits, `_` or `-`"));
        }
        let mongodb_uri = required(src, "MONGODB_URI")?;
        if !(mongodb_uri.starts_with("mongodb://") || mongodb_uri.starts_with("mongodb+srv://")) {
            return Err(invalid("MONGODB_URI", "must start with mongodb:// or mongodb+srv://"));
        }
        let mongodb_db = db_from_uri(&mongodb_uri).or_else(|| src.get("MONGODB_DB")).unwrap_or_else(|| "natter".into());
        let nats_replicas = number(src, "NATS_REPLICAS", 1usize, 1..=5, "a replica count")?;
        let staging_max_bytes =
            number(src, "STAGING_MAX_BYTES", STAGING_MAX_BYTES_DEFAULT, 1 << 20..=1 << 50, "a number of bytes")?;
        let partitions = number(src, "PARTITIONS", PARTITIONS_DEFAULT, 1..=PARTITIONS_MAX, "a partition count")?;
        let nats_topology = nats_topology(src)?;
        let metrics_addr = match src.get("METRICS_ADDR") {
            None => None,
            Some(v) => Some(v.trim().parse().map_err(|_| invalid("METRICS_ADDR", format!("`{v}` is not host:port")))?),
        };
        Ok(CoreConfig {
            metrics_addr,
            nats_url,
            nats_namespace,
            mongodb_uri,
            mongodb_db,
            nats_replicas,
            staging_max_bytes,
            partitions,
            nats_topology,
        })
    }
}

/// The database named in the path of a MongoDB URI, if any.
fn db_from_uri(uri: &str) -> Option<String> {
    let rest = &uri[uri.find("://")? + 3..];
    let path = &rest[rest.find('/')? + 1..];
    let db = path.split('?').next().unwrap_or("");
    (!db.is_empty()).then(|| db.to_string())
}

impl EdgeConfig {
    pub fn load(src: &dyn Source) -> Result<Self, ConfigError> {
        let core = CoreConfig::load(src)?;
        let jwt = JwtConfig::load(src)?;
        let frontend_urls: Vec<String> = src
            .get("FRONTEND_URL")
            .unwrap_or_else(|| "http://localhost:3000".into())
            .split(',')
            .map(|s| s.trim().trim_end_matches('/').to_string())
            .filter(|s| !s.is_empty())
            .collect();
        for u in &frontend_urls {
            if url::Url::parse(u).is_err() {
                return Err(invalid("FRONTEND_URL", format!("`{u}` is not a URL")));
            }
        }
        let max_file_size =
            number(src, "MAX_FILE_SIZE", 10 * 1024 * 1024u64, 1..=MAX_FILE_SIZE_LIMIT, "a number of bytes")?;
        if max_file_size > core.staging_max_bytes {
            return Err(invalid("STAGING_MAX_BYTES", "must be at least MAX_FILE_SIZE: no upload would fit"));
        }
        let listen = match src.get("LISTEN_ADDR") {
            None => SocketAddr::from(([127, 0, 0, 1], 8080)),
            Some(v) => v.parse().map_err(|_| invalid("LISTEN_ADDR", format!("`{v}` is not host:port")))?,
        };
        let s3 = S3Config::load(src)?;
        let ws_rate_per_sec = number(src, "WS_RATE_PER_SEC", 100u32, 1..=u32::MAX, "a number of requests")?;
        let uploads_per_min = number(src, "UPLOADS_PER_MIN", 30u32, 1..=1_000_000, "a number of uploads")?;
        let upload_bytes_per_min =
            number(src, "UPLOAD_BYTES_PER_MIN", 200 * 1024 * 1024u64, 1..=1 << 40, "a number of bytes")?;
        let unsent_upload_ttl = unsent_upload_ttl(src)?;
        let user_sends_per_sec =
            number(src, "USER_SENDS_PER_SEC", 100u32, 1..=1_000_000, "a number of messages per second")?;
        let user_groups_per_day = number(src, "USER_GROUPS_PER_DAY", 100u32, 1..=1_000_000, "a number of groups")?;
        let rest_rate_per_sec = number(src, "REST_RATE_PER_SEC", 50u32, 1..=u32::MAX, "a number of requests")?;
        let millis = |name: &'static str, default: u64| {
            number(src, name, default, 100..=600_000, "a number of milliseconds").map(std::time::Duration::from_millis)
        };
        let sio_ping_interval = millis("SIO_PING_INTERVAL_MS", 25_000)?;
        let sio_ping_timeout = millis("SIO_PING_TIMEOUT_MS", 20_000)?;
        let ws_ping_interval = millis("WS_PING_INTERVAL_MS", 10_000)?;
        let sio_pending_per_ip = number(src, "SIO_PENDING_PER_IP", 64usize, 1..=1_000_000, "a number of sessions")?;
        let trust_forwarded_for = match src.get("TRUST_FORWARDED_FOR").as_deref().map(str::trim) {
            None | Some("false") => false,
            Some("true") => true,
            Some(v) => return Err(invalid("TRUST_FORWARDED_FOR", format!("`{v}` is not `true` or `false`"))),
        };
        let sio_pending_max = number(src, "SIO_PENDING_MAX", 10_000usize, 1..=10_000_000, "a number of sessions")?;
        let catchup_max_events = number(src, "CATCHUP_MAX_EVENTS", 1000u64, 1..=100_000, "a number of events")?;
        let presence_max_group =
            number(src, "PRESENCE_MAX_GROUP", 500usize, 0..=crate::model::MAX_GROUP_MEMBERS, "a number of members")?;
        let attachment_url_ttl = number(src, "ATTACHMENT_URL_TTL", 300u64, 1..=7 * 24 * 3600, "a number of seconds")?;
        let attachment_proxy = match src.get("ATTACHMENT_DOWNLOAD").as_deref().map(str::trim) {
            None | Some("redirect") => false,
            Some("proxy") => true,
            Some(v) => return Err(invalid("ATTACHMENT_DOWNLOAD", format!("`{v}` is not `redirect` or `proxy`"))),
        };
        let web_dir = src.get("WEB_DIR").unwrap_or_else(|| "web".into()).into();
        let dev_tokens = match src.get("DEV_TOKENS").as_deref().map(str::trim) {
            None | Some("false") => false,
            Some("true") => true,
            Some(v) => return Err(invalid("DEV_TOKENS", format!("`{v}` is not `true` or `false`"))),
        };
        Ok(EdgeConfig {
            web_dir,
            dev_tokens,
            core,
            jwt,
            frontend_urls,
            max_file_size,
            listen,
            s3,
            ws_rate_per_sec,
            rest_rate_per_sec,
            uploads_per_min,
            upload_bytes_per_min,
            user_sends_per_sec,
            user_groups_per_day,
            unsent_upload_ttl,
            attachment_url_ttl,
            attachment_proxy,
            sio_ping_interval,
            sio_ping_timeout,
            ws_ping_interval,
            sio_pending_per_ip,
            sio_pending_max,
            trust_forwarded_for,
            catchup_max_events,
            presence_max_group,
        })
    }
}

/// `UNSENT_UPLOAD_TTL` (seconds, default 86400): how long an upload made
/// outside any room may wait to be sent in a message. After it the edge no
/// longer lets it be sent, and the attachments worker collects it (after
/// a grace period, see `collect_after`).
pub fn unsent_upload_ttl(src: &dyn Source) -> Result<std::time::Duration, ConfigError> {
    number(src, "UNSENT_UPLOAD_TTL", 86_400u64, 1..=365 * 86_400, "a number of seconds")
        .map(std::time::Duration::from_secs)
}

/// When an unsent upload is collected: `ttl` plus a grace (an hour, or
/// `ttl` itself when shorter) that outlasts any send still on its way.
pub fn collect_after(ttl: std::time::Duration) -> std::time::Duration {
    ttl + ttl.min(std::time::Duration::from_secs(3600))
}

/// Shortest `JWT_SECRET` accepted: an HS256 key should carry at least the
/// hash's 256 bits.
pub const MIN_JWT_SECRET: usize = 32;

/// How tokens are signed and what a valid one must say.
#[derive(Clone, Debug)]
pub struct JwtConfig {
    /// `JWT_SECRET` (required, at least `MIN_JWT_SECRET` bytes): the HS256 key.
    pub secret: Secret,
    /// `JWT_AUDIENCE` (optional): when set, a token's `aud` must name it.
    pub audience: Option<String>,
    /// `JWT_ISSUER` (optional): when set, a token's `iss` must equal it.
    pub issuer: Option<String>,
    /// `JWT_MAX_TTL` (optional, seconds): when set, a token may be valid for
    /// at most this long (`exp` no later than `iat`, or now, plus this).
    pub max_ttl: Option<u64>,
}

impl JwtConfig {
    pub fn load(src: &dyn Source) -> Result<Self, ConfigError> {
        let s = required(src, "JWT_SECRET")?;
        if s.len() < MIN_JWT_SECRET {
            return Err(invalid("JWT_SECRET", format!("must be at least {MIN_JWT_SECRET} bytes long")));
        }
        let max_ttl = match src.get("JWT_MAX_TTL") {
            None => None,
            Some(_) => Some(number(src, "JWT_MAX_TTL", 0u64, 1..=366 * 24 * 3600, "a number of seconds")?),
        };
        Ok(JwtConfig {
            secret: Secret(s),
            audience: src.get("JWT_AUDIENCE").map(|v| v.trim().to_string()),
            issuer: src.get("JWT_ISSUER").map(|v| v.trim().to_string()),
            max_ttl,
        })
    }

    /// Just a key, nothing else required (tools and tests).
    pub fn with_secret(secret: impl Into<String>) -> Self {
        JwtConfig { secret: Secret(secret.into()), audience: None, issuer: None, max_ttl: None }
    }
}

impl S3Config {
    /// `None` when no S3 variable is set; an error naming the first missing
    /// one when only some are.
    pub fn load(src: &dyn Source) -> Result<Option<Self>, ConfigError> {
        const VARS: [&str; 4] = ["S3_ENDPOINT", "S3_BUCKET", "S3_ACCESS_KEY", "S3_SECRET_KEY"];
        if VARS.iter().all(|v| src.get(v).is_none()) {
            return Ok(None);
        }
        let endpoint = required(src, "S3_ENDPOINT")?;
        if url::Url::parse(&endpoint).is_err() {
            return Err(invalid("S3_ENDPOINT", format!("`{endpoint}` is not a URL")));
        }
        Ok(Some(S3Config {
            endpoint,
            bucket: required(src, "S3_BUCKET")?,
            access_key: required(src, "S3_ACCESS_KEY")?,
            secret_key: Secret(required(src, "S3_SECRET_KEY")?),
            region: src.get("S3_REGION").unwrap_or_else(|| "us-east-1".into()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    const BASE: [(&str, &str); 3] = [
        ("NATS_URL", "nats://127.0.0.1:4222"),
        ("MONGODB_URI", "mongodb://127.0.0.1:27017/chatdb"),
        ("JWT_SECRET", "0123456789abcdef0123456789abcdef"),
    ];

    #[test]
    fn edge_defaults() {
        let c = EdgeConfig::load(&src(&BASE)).unwrap();
        assert_eq!(c.core.mongodb_db, "chatdb");
        assert_eq!(c.core.nats_namespace, "chat");
        assert_eq!(c.max_file_size, 10_485_760);
        assert_eq!(c.frontend_urls, vec!["http://localhost:3000".to_string()]);
        assert!(c.s3.is_none());
        assert_eq!(c.core.nats_topology, NatsTopology::Apply);
        assert!(!format!("{c:?}").contains("0123456789abcdef0123456789abcdef"), "secret leaked in Debug");
    }

    #[test]
    fn missing_variables_are_named() {
        let e = EdgeConfig::load(&src(&BASE[1..])).unwrap_err();
        assert_eq!(e, ConfigError::Missing("NATS_URL"));
        let e = EdgeConfig::load(&src(&BASE[..2])).unwrap_err();
        assert_eq!(e, ConfigError::Missing("JWT_SECRET"));
        let mut m = src(&BASE);
        m.insert("S3_ENDPOINT".into(), "http://127.0.0.1:9000".into());
        assert_eq!(EdgeConfig::load(&m).unwrap_err(), ConfigError::Missing("S3_BUCKET"));
    }

    #[test]
    fn invalid_values_are_named() {
        let mut m = src(&BASE);
        m.insert("MAX_FILE_SIZE".into(), "ten".into());
        assert!(matches!(EdgeConfig::load(&m), Err(ConfigError::Invalid { var: "MAX_FILE_SIZE", .. })));
        m.insert("MAX_FILE_SIZE".into(), u64::MAX.to_string());
        assert!(matches!(EdgeConfig::load(&m), Err(ConfigError::Invalid { var: "MAX_FILE_SIZE", .. })));
        let mut m = src(&BASE);
        m.insert("STAGING_MAX_BYTES".into(), "1024".into());
        assert!(matches!(EdgeConfig::load(&m), Err(ConfigError::Invalid { var: "STAGING_MAX_BYTES", .. })));
        m.insert("STAGING_MAX_BYTES".into(), (8 << 20).to_string());
        assert!(matches!(EdgeConfig::load(&m), Err(ConfigError::Invalid { var: "STAGING_MAX_BYTES", .. })));
        m.insert("MAX_FILE_SIZE".into(), (8 << 20).to_string());
        assert_eq!(EdgeConfig::load(&m).unwrap().core.staging_max_bytes, 8 << 20);
        let mut m = src(&BASE);
        m.insert("JWT_SECRET".into(), "short".into());
        assert!(matches!(EdgeConfig::load(&m), Err(ConfigError::Invalid { var: "JWT_SECRET", .. })));
        m.insert("JWT_SECRET".into(), "x".repeat(MIN_JWT_SECRET - 1));
        assert!(matches!(EdgeConfig::load(&m), Err(ConfigError::Invalid { var: "JWT_SECRET", .. })));
        m.insert("JWT_SECRET".into(), "x".repeat(MIN_JWT_SECRET));
        m.insert("JWT_MAX_TTL".into(), "0".into());
        assert!(matches!(EdgeConfig::load(&m), Err(ConfigError::Invalid { var: "JWT_MAX_TTL", .. })));
        m.insert("JWT_MAX_TTL".into(), "3600".into());
        m.insert("JWT_AUDIENCE".into(), "natter".into());
        let c = EdgeConfig::load(&m).unwrap();
        assert_eq!((c.jwt.max_ttl, c.jwt.audience.as_deref(), c.jwt.issuer), (Some(3600), Some("natter"), None));
        let mut m = src(&BASE);
        m.insert("MONGODB_URI".into(), "postgres://x".into());
        assert!(matches!(EdgeConfig::load(&m), Err(ConfigError::Invalid { var: "MONGODB_URI", .. })));
        let mut m = src(&BASE);
        m.insert("LISTEN_ADDR".into(), "nowhere".into());
        assert!(matches!(EdgeConfig::load(&m), Err(ConfigError::Invalid { var: "LISTEN_ADDR", .. })));
        let mut m = src(&BASE);
        m.insert("NATS_TOPOLOGY".into(), "declare".into());
        assert!(matches!(CoreConfig::load(&m), Err(ConfigError::Invalid { var: "NATS_TOPOLOGY", .. })));
        assert!(matches!(EdgeConfig::load(&m), Err(ConfigError::Invalid { var: "NATS_TOPOLOGY", .. })));
        m.insert("NATS_TOPOLOGY".into(), "verify".into());
        assert_eq!(CoreConfig::load(&m).unwrap().nats_topology, NatsTopology::Verify);
        m.insert("NATS_TOPOLOGY".into(), "apply".into());
        assert_eq!(CoreConfig::load(&m).unwrap().nats_topology, NatsTopology::Apply);
    }

    #[test]
    fn db_name_from_uri() {
        assert_eq!(db_from_uri("mongodb://a:1,b:2/x?replicaSet=r").as_deref(), Some("x"));
        assert_eq!(db_from_uri("mongodb://a:1/?w=1"), None);
        assert_eq!(db_from_uri("mongodb://a:1"), None);
    }
}
