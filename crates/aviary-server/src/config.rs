//! Server configuration: livekit.yaml's keys with their names and meanings, plus the flags
//! that override them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Everything `aviary serve` can be told, already merged (file, then env, then flags).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct Config {
    /// HTTP/WebSocket port.
    pub port: u16,
    /// Addresses the HTTP server binds; empty means all interfaces (or loopback in dev mode).
    pub bind_addresses: Vec<String>,
    /// API key → secret.
    pub keys: BTreeMap<String, String>,
    /// A YAML file of `key: secret` lines, read at load time.
    pub key_file: Option<PathBuf>,
    /// ICE / media settings.
    pub rtc: RtcConfig,
    /// Room defaults.
    pub room: RoomConfig,
    /// Webhook targets.
    pub webhook: WebhookConfig,
    /// Prometheus exporter.
    pub prometheus: PrometheusConfig,
    /// Top-level alias some livekit.yaml files use.
    pub prometheus_port: Option<u16>,
    /// Log settings.
    pub logging: LoggingConfig,
    /// Size limits.
    pub limit: LimitConfig,
    /// Redis (accepted for compatibility; multi-node is a later feature).
    pub redis: RedisConfig,
    /// Region name reported to clients.
    pub region: String,
    /// Development mode: dev keys, loopback binding, debug logs.
    pub development: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            port: 7880,
            bind_addresses: Vec::new(),
            keys: BTreeMap::new(),
            key_file: None,
            rtc: RtcConfig::default(),
            room: RoomConfig::default(),
            webhook: WebhookConfig::default(),
            prometheus: PrometheusConfig::default(),
            prometheus_port: None,
            logging: LoggingConfig::default(),
            limit: LimitConfig::default(),
            redis: RedisConfig::default(),
            region: String::new(),
            development: false,
        }
    }
}

/// `rtc:` section.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct RtcConfig {
    /// First UDP port; worker N uses `udp_port + N`.
    pub udp_port: Option<u16>,
    /// ICE/TCP port.
    pub tcp_port: u16,
    /// Used when `udp_port` is unset: worker N uses `port_range_start + N`.
    pub port_range_start: u16,
    /// Upper bound of the range.
    pub port_range_end: u16,
    /// The IP put in ICE candidates; detected when unset.
    pub node_ip: Option<IpAddr>,
    /// Accepted; there is no STUN lookup on this network-less design yet.
    pub use_external_ip: bool,
    /// Fitting what each subscriber receives into its estimated bandwidth.
    pub congestion_control: CongestionControlConfig,
}

/// `rtc.congestion_control:` section, as upstream.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct CongestionControlConfig {
    /// Estimate each subscriber's bandwidth (TWCC, REMB as fallback) and choose simulcast
    /// layers within it; off, every subscriber gets the layers it asks for.
    pub enabled: bool,
    /// Pause a video track when a subscriber's link cannot carry even its lowest layer
    /// (the subscriber is told with a `StreamStateUpdate`); off, the lowest layer stays.
    pub allow_pause: bool,
}

impl Default for CongestionControlConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            allow_pause: false,
        }
    }
}

impl Default for RtcConfig {
    fn default() -> Self {
        Self {
            udp_port: None,
            tcp_port: 7881,
            port_range_start: 50000,
            port_range_end: 60000,
            node_ip: None,
            use_external_ip: false,
            congestion_control: CongestionControlConfig::default(),
        }
    }
}

/// `room:` section.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct RoomConfig {
    /// Create rooms when a client joins one that does not exist.
    pub auto_create: bool,
    /// Seconds an empty room lives when nobody ever joined.
    pub empty_timeout: u32,
    /// Seconds a room lives after its last participant left.
    pub departure_timeout: u32,
    /// 0 = unlimited.
    pub max_participants: u32,
    /// Codecs offered to publishers; empty means all supported.
    pub enabled_codecs: Vec<CodecSpec>,
    /// Whether RoomService.MutePublishedTrack may unmute (off, as upstream: a server
    /// must not turn on someone's microphone unless the deployment allows it).
    pub enable_remote_unmute: bool,
}

impl Default for RoomConfig {
    fn default() -> Self {
        Self {
            auto_create: true,
            empty_timeout: 300,
            departure_timeout: 20,
            max_participants: 0,
            enabled_codecs: Vec::new(),
            enable_remote_unmute: false,
        }
    }
}

/// One entry of `room.enabled_codecs`.
#[derive(Clone, Debug, Deserialize, Serialize, Default)]
#[serde(default)]
pub struct CodecSpec {
    /// e.g. `video/vp8`.
    pub mime: String,
    /// Optional fmtp line.
    pub fmtp_line: String,
}

/// `webhook:` section.
#[derive(Clone, Debug, Deserialize, Serialize, Default)]
#[serde(default)]
pub struct WebhookConfig {
    /// Key used to sign webhook requests.
    pub api_key: String,
    /// Where to POST events.
    pub urls: Vec<String>,
}

/// `prometheus:` section.
#[derive(Clone, Debug, Deserialize, Serialize, Default)]
#[serde(default)]
pub struct PrometheusConfig {
    /// Port of the metrics endpoint.
    pub port: Option<u16>,
}

/// `logging:` section.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct LoggingConfig {
    /// trace, debug, info, warn, error.
    pub level: String,
    /// JSON lines instead of text.
    pub json: bool,
    /// Accepted for compatibility; str0m logs through `tracing` at `level`.
    pub pion_level: String,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            json: false,
            pion_level: String::new(),
        }
    }
}

/// `limit:` section (0 = unlimited). The defaults are upstream's.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct LimitConfig {
    /// Tracks this node may carry, published plus subscribed (upstream's node capacity);
    /// past it, joins are refused. 0 = unlimited.
    pub num_tracks: u32,
    /// Bytes per second this node may receive plus send; past it, joins are refused.
    /// 0 = unlimited.
    pub bytes_per_sec: f64,
    /// Video tracks one participant may subscribe to.
    pub subscription_limit_video: u32,
    /// Audio tracks one participant may subscribe to.
    pub subscription_limit_audio: u32,
    /// Largest metadata string, in bytes.
    pub max_metadata_size: u32,
    /// Largest total of attribute keys and values, in bytes.
    pub max_attributes_size: u32,
    /// Longest room name.
    pub max_room_name_length: u32,
    /// Longest participant identity.
    pub max_participant_identity_length: u32,
    /// Longest participant name.
    pub max_participant_name_length: u32,
}

impl Default for LimitConfig {
    fn default() -> Self {
        Self {
            num_tracks: 0,
            bytes_per_sec: 0.0,
            subscription_limit_video: 0,
            subscription_limit_audio: 0,
            max_metadata_size: 64_000,
            max_attributes_size: 64_000,
            max_room_name_length: 256,
            max_participant_identity_length: 256,
            max_participant_name_length: 256,
        }
    }
}

/// `redis:` section.
#[derive(Clone, Debug, Deserialize, Serialize, Default)]
#[serde(default)]
pub struct RedisConfig {
    /// host:port.
    pub address: String,
    /// Username.
    pub username: String,
    /// Password.
    pub password: String,
    /// Database number.
    pub db: u32,
}

/// What the command line says; each set field overrides the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--dev`.
    pub dev: bool,
    /// `--config FILE` (or `LIVEKIT_CONFIG` as a body when unset).
    pub config_file: Option<PathBuf>,
    /// `--config-body YAML` / `LIVEKIT_CONFIG`.
    pub config_body: Option<String>,
    /// `--bind` (repeatable).
    pub bind: Vec<String>,
    /// `--port`.
    pub port: Option<u16>,
    /// `--udp-port`.
    pub udp_port: Option<u16>,
    /// `--tcp-port`.
    pub tcp_port: Option<u16>,
    /// `--node-ip`.
    pub node_ip: Option<IpAddr>,
    /// `--keys` / `LIVEKIT_KEYS`: `key: secret` lines.
    pub keys: Option<String>,
    /// `--key-file`.
    pub key_file: Option<PathBuf>,
    /// `--redis-host`.
    pub redis_host: Option<String>,
    /// `--prometheus-port`.
    pub prometheus_port: Option<u16>,
}

/// A configuration that cannot be used. The text says what and where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// Which file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// YAML that does not fit the schema.
    #[error("invalid config in {origin}: {message}")]
    Invalid {
        /// The file name, or "--config-body".
        origin: String,
        /// serde's message, with line and column.
        message: String,
    },
    /// No API key outside dev mode.
    #[error("no API keys configured: set keys or key_file in the config, --keys, or LIVEKIT_KEYS")]
    NoKeys,
    /// An API key with an empty secret.
    #[error("API key {0:?} has an empty secret")]
    EmptySecret(String),
    /// Webhooks configured with a key that cannot sign them.
    #[error(
        "webhook.api_key {0:?} is not one of the configured API keys (webhooks are signed with its secret): set it to one of: {1}"
    )]
    WebhookKey(String, String),
}

/// The result of loading: the config and the unknown keys found on the way.
#[derive(Debug)]
pub struct Loaded {
    /// The merged config.
    pub config: Config,
    /// Dotted paths of keys nobody reads, to be logged as warnings.
    pub unknown_keys: Vec<String>,
}

/// Shortest API secret accepted without a warning outside dev mode (upstream's).
pub const MIN_SECRET_LEN: usize = 32;

impl Loaded {
    /// API keys whose secrets are shorter than [`MIN_SECRET_LEN`] outside dev mode: upstream
    /// logs an error for each and starts anyway; so does Aviary.
    pub fn short_secrets(&self) -> Vec<&str> {
        if self.config.development {
            return Vec::new();
        }
        self.config
            .keys
            .iter()
            .filter(|(_, s)| s.len() < MIN_SECRET_LEN)
            .map(|(k, _)| k.as_str())
            .collect()
    }
}

/// The known key an unknown one most likely meant: the same name in another section (say
/// `udp_port` for `rtc.udp_port`), or a key a typo or two away. `None` when nothing is close.
pub fn likely_key(unknown: &str) -> Option<String> {
    let known = known_keys();
    let leaf = unknown.rsplit('.').next().unwrap_or(unknown);
    if let Some(k) = known
        .iter()
        .find(|k| k.as_str() != unknown && k.rsplit('.').next() == Some(leaf))
    {
        return Some(k.clone());
    }
    known
        .into_iter()
        .map(|k| (strsim::levenshtein(unknown, &k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 5))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Every key the config reads, as dotted paths (from the defaults, so never out of date).
fn known_keys() -> Vec<String> {
    fn walk(prefix: &str, v: &serde_yaml::Value, out: &mut Vec<String>) {
        match v {
            serde_yaml::Value::Mapping(m) if !m.is_empty() => {
                for (k, v) in m {
                    let Some(k) = k.as_str() else { continue };
                    let path = if prefix.is_empty() {
                        k.to_string()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&path, v, out);
                }
            }
            _ if !prefix.is_empty() => out.push(prefix.to_string()),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(v) = serde_yaml::to_value(Config::default()) {
        walk("", &v, &mut out);
    }
    out
}

/// Parses YAML into a config, collecting unknown keys instead of failing on them.
pub fn parse_yaml(text: &str, origin: &str) -> Result<Loaded, ConfigError> {
    if text.trim().is_empty() {
        return Ok(Loaded {
            config: Config::default(),
            unknown_keys: Vec::new(),
        });
    }
    let mut unknown_keys = Vec::new();
    let de = serde_yaml::Deserializer::from_str(text);
    // serde_yaml's errors name the key path, line and column.
    let config: Config = serde_ignored::deserialize(de, |path| unknown_keys.push(path.to_string()))
        .map_err(|e| ConfigError::Invalid {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
    Ok(Loaded {
        config,
        unknown_keys,
    })
}

/// Parses `key: secret` lines (the `--keys`, `LIVEKIT_KEYS` and key-file format).
pub fn parse_keys(text: &str, origin: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        origin: origin.to_string(),
        message,
    };
    let value: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| invalid(e.to_string()))?;
    let map = value
        .as_mapping()
        .ok_or_else(|| invalid("expected `key: secret` pairs".into()))?;
    let mut keys = BTreeMap::new();
    for (k, v) in map {
        let (Some(k), Some(v)) = (yaml_scalar(k), yaml_scalar(v)) else {
            return Err(invalid("expected `key: secret` pairs".into()));
        };
        keys.insert(k, v);
    }
    Ok(keys)
}

fn yaml_scalar(v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Loads the file (or body), then applies the flag overrides and dev-mode defaults, and
/// checks what must hold before the server starts.
pub fn load(o: &Overrides) -> Result<Loaded, ConfigError> {
    // As upstream: a body (`--config-body` or `LIVEKIT_CONFIG`) wins over a file.
    let mut loaded = match (&o.config_body, &o.config_file) {
        (Some(body), _) => parse_yaml(body, "--config-body")?,
        (None, Some(path)) => parse_yaml(&read(path)?, &path.display().to_string())?,
        (None, None) => parse_yaml("", "")?,
    };
    let c = &mut loaded.config;
    if o.dev {
        c.development = true;
    }
    if c.development {
        if c.keys.is_empty() && o.keys.is_none() && o.key_file.is_none() && c.key_file.is_none() {
            c.keys.insert("devkey".into(), "secret".into());
        }
        if c.bind_addresses.is_empty() && o.bind.is_empty() {
            c.bind_addresses = vec!["127.0.0.1".into(), "::1".into()];
        }
        if c.logging.level == "info" {
            c.logging.level = "debug".into();
        }
        if c.rtc.udp_port.is_none() {
            c.rtc.udp_port = Some(7882);
        }
    }
    if !o.bind.is_empty() {
        c.bind_addresses = o.bind.clone();
    }
    if let Some(p) = o.port {
        c.port = p;
    }
    if let Some(p) = o.udp_port {
        c.rtc.udp_port = Some(p);
    }
    if let Some(p) = o.tcp_port {
        c.rtc.tcp_port = p;
    }
    if let Some(ip) = o.node_ip {
        c.rtc.node_ip = Some(ip);
    }
    if let Some(p) = o.prometheus_port {
        c.prometheus.port = Some(p);
    }
    if let Some(host) = &o.redis_host {
        c.redis.address = host.clone();
    }
    if let Some(path) = o.key_file.clone().or(c.key_file.clone()) {
        let text = read(&path)?;
        c.keys
            .extend(parse_keys(&text, &path.display().to_string())?);
    }
    if let Some(keys) = &o.keys {
        c.keys.extend(parse_keys(keys, "--keys")?);
    }
    if c.keys.is_empty() {
        return Err(ConfigError::NoKeys);
    }
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        origin: key.to_string(),
        message,
    };
    for addr in &c.bind_addresses {
        if addr.parse::<IpAddr>().is_err() {
            return Err(invalid(
                "bind_addresses",
                format!("{addr:?} is not an IP address"),
            ));
        }
    }
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "warning", "error"];
    if !LEVELS.contains(&c.logging.level.to_ascii_lowercase().as_str()) {
        return Err(invalid(
            "logging.level",
            format!("{:?} is not one of {}", c.logging.level, LEVELS.join(", ")),
        ));
    }
    if c.rtc.port_range_end != 0 && c.rtc.port_range_end < c.rtc.port_range_start {
        return Err(invalid(
            "rtc",
            format!(
                "port_range_end {} is below port_range_start {}",
                c.rtc.port_range_end, c.rtc.port_range_start
            ),
        ));
    }
    if let Some((k, _)) = c.keys.iter().find(|(_, v)| v.is_empty()) {
        return Err(ConfigError::EmptySecret(k.clone()));
    }
    if !c.webhook.urls.is_empty() && !c.keys.contains_key(&c.webhook.api_key) {
        let known: Vec<&str> = c.keys.keys().map(String::as_str).collect();
        return Err(ConfigError::WebhookKey(
            c.webhook.api_key.clone(),
            known.join(", "),
        ));
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_keys_and_defaults() {
        let l = parse_yaml(
            "port: 9000\nkeys:\n  k1: s1\nroom:\n  empty_timeout: 7\nrtc:\n  udp_port: 9100\n",
            "t.yaml",
        )
        .unwrap();
        assert_eq!(l.config.port, 9000);
        assert_eq!(l.config.keys.get("k1").map(String::as_str), Some("s1"));
        assert_eq!(l.config.room.empty_timeout, 7);
        assert_eq!(l.config.room.departure_timeout, 20);
        assert!(l.config.room.auto_create);
        assert_eq!(l.config.rtc.udp_port, Some(9100));
        assert!(l.unknown_keys.is_empty());
    }

    #[test]
    fn unknown_keys_come_with_the_likely_one() {
        assert_eq!(likely_key("portt").as_deref(), Some("port"));
        assert_eq!(
            likely_key("room.auto_creat").as_deref(),
            Some("room.auto_create")
        );
        assert_eq!(likely_key("udp_port").as_deref(), Some("rtc.udp_port"));
        assert_eq!(
            likely_key("limits.num_tracks").as_deref(),
            Some("limit.num_tracks")
        );
        assert_eq!(likely_key("completely_unrelated_thing"), None);
    }

    #[test]
    fn unknown_keys_are_reported_not_fatal() {
        let l = parse_yaml("portt: 1\nroom:\n  auto_creat: false\n", "t.yaml").unwrap();
        assert_eq!(l.unknown_keys, vec!["portt", "room.auto_creat"]);
        assert!(l.config.room.auto_create);
    }

    #[test]
    fn invalid_values_name_the_origin() {
        let e = parse_yaml("port: lots\n", "my.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("my.yaml") && e.contains("port"), "{e}");
    }

    #[test]
    fn flags_override_file_and_dev_supplies_keys() {
        let o = Overrides {
            dev: true,
            config_body: Some("port: 1234\n".into()),
            port: Some(4321),
            ..Default::default()
        };
        let c = load(&o).unwrap().config;
        assert_eq!(c.port, 4321);
        assert_eq!(c.keys.get("devkey").map(String::as_str), Some("secret"));
        assert_eq!(c.bind_addresses, vec!["127.0.0.1", "::1"]);
        assert_eq!(c.logging.level, "debug");
    }

    #[test]
    fn webhooks_need_a_configured_key() {
        let body = |key: &str| Overrides {
            dev: true,
            config_body: Some(format!(
                "webhook:\n  api_key: {key}\n  urls: [http://127.0.0.1:9/hook]\n"
            )),
            ..Default::default()
        };
        assert!(load(&body("devkey")).is_ok());
        let e = load(&body("other")).unwrap_err().to_string();
        assert!(e.contains("\"other\"") && e.contains("devkey"), "{e}");
    }

    #[test]
    fn missing_keys_outside_dev_is_an_error() {
        assert!(matches!(
            load(&Overrides::default()),
            Err(ConfigError::NoKeys)
        ));
        let o = Overrides {
            keys: Some("a: b\nc: d".into()),
            ..Default::default()
        };
        assert_eq!(load(&o).unwrap().config.keys.len(), 2);
    }
}
