//! Configuration (SPEC section 4): a TOML file, then `WALGUARD__SECTION__KEY` environment
//! overrides, loaded with the `config` crate into types that refuse unknown keys, validated
//! once. Errors name the key, the file and what is expected. The PostgreSQL URL may hold a
//! password (in the URL's user info, as `?password=`, or as `password = ...`), so it is kept
//! in a type whose Debug never prints it, and it is described from the parsed configuration,
//! never from the string: no message, Debug output or log line holds it.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::source::tls::PgConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration {file}: {message}")]
    Invalid { file: PathBuf, message: String },
}

fn invalid(file: &Path, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        file: file.to_owned(),
        message: message.into(),
    }
}

/// A validated configuration. Only [`Config::load`] builds one (its private fields see to
/// that), so what `load` checked holds for every `Config` in the process, and what it parsed
/// is kept: the PostgreSQL target and the guarded tables' names are read once, here, and no
/// caller parses them again or has a parse error to handle.
#[derive(Debug, Clone)]
pub struct Config {
    pub postgres: PostgresConfig,
    pub nats: NatsConfig,
    pub signing: SigningConfig,
    pub server: ServerConfig,
    pub hashing: HashingConfig,
    pub archive: ArchiveConfig,
    pub audit: AuditConfig,
    pub console: ConsoleConfig,
    /// The file this was loaded from; relative paths in it are resolved against its folder.
    pub file: PathBuf,
    /// `postgres.url`, parsed: see [`Config::pg_config`].
    target: PgConfig,
    /// `[[tables]]` in the file's order, with their names parsed: see [`Config::guarded`].
    tables: Vec<GuardedTable>,
}

/// The file as serde reads it, before [`Config::load`] validates it into a [`Config`]. Its
/// fields and their order are the file's sections and serde's messages name them; it is
/// called `Config` in those messages, as it always was.
#[derive(Deserialize)]
#[serde(rename = "Config", deny_unknown_fields)]
struct ConfigFile {
    postgres: PostgresConfig,
    #[serde(default)]
    tables: Vec<TableConfig>,
    #[serde(default)]
    nats: NatsConfig,
    signing: SigningConfig,
    #[serde(default)]
    server: ServerConfig,
    #[serde(default)]
    hashing: HashingConfig,
    #[serde(default)]
    archive: ArchiveConfig,
    #[serde(default)]
    audit: AuditConfig,
    #[serde(default)]
    console: ConsoleConfig,
}

/// A `[[tables]]` entry and its name split as PostgreSQL reads it ([`parse_table_name`]).
#[derive(Debug, Clone)]
struct GuardedTable {
    schema: String,
    name: String,
    config: TableConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres.url` as written, which may hold the password; only [`Config::load`] reads
    /// it, everything else uses the parsed [`Config::pg_config`].
    url: Secret,
    #[serde(default = "default_slot")]
    pub slot: String,
    #[serde(default = "default_publication")]
    pub publication: String,
    /// Create the slot as a failover slot (PostgreSQL 17 and later), so it is synchronized
    /// to standbys and survives a promotion.
    #[serde(default, deserialize_with = "de_bool")]
    pub failover_slot: bool,
    /// Warn when the slot retains more WAL than this (`"1GiB"`, `"512MB"`, bytes).
    #[serde(default = "default_retained_wal_warn", deserialize_with = "de_size")]
    pub retained_wal_warn: u64,
}

/// A string that Debug and Display never print.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A NATS server URL (or a comma-separated list of them) with the user info's password, or a
/// token given as the whole user info, replaced, for logs and messages.
pub fn redact_url(url: &str) -> String {
    url.split(',').map(redact_one_url).collect::<Vec<_>>().join(",")
}

fn redact_one_url(url: &str) -> String {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[authority_start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| authority_start + i);
    let Some(at) = url[authority_start..authority_end]
        .rfind('@')
        .map(|i| authority_start + i)
    else {
        return url.to_owned();
    };
    let hidden = match url[authority_start..at].split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_owned(),
    };
    format!("{}{hidden}{}", &url[..authority_start], &url[at..])
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    pub name: String,
    pub type_prefix: Option<String>,
    pub key: Option<Vec<String>>,
    /// Columns replaced by a keyed hash (HMAC-SHA-256 with `hashing.salt_file`) before
    /// signing, for personal data consumers must not see.
    #[serde(default)]
    pub hash_columns: Vec<String>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    #[serde(default = "default_nats_url")]
    pub url: String,
    #[serde(default = "default_stream")]
    pub stream: String,
    #[serde(default = "default_subject_prefix")]
    pub subject_prefix: String,
    #[serde(default = "default_replicas", deserialize_with = "de_from_str")]
    pub replicas: usize,
    #[serde(default = "default_duplicate_window", deserialize_with = "de_duration")]
    pub duplicate_window: Duration,
    #[serde(default, deserialize_with = "de_duration")]
    pub durability_delay: Duration,
    #[serde(default = "default_watermark_interval", deserialize_with = "de_duration")]
    pub watermark_interval: Duration,
    #[serde(default, deserialize_with = "de_bool")]
    pub allow_unsafe_stream: bool,
    pub creds_file: Option<PathBuf>,
    pub nkey_file: Option<PathBuf>,
    pub tls_ca_file: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &redact_url(&self.url))
            .field("stream", &self.stream)
            .field("subject_prefix", &self.subject_prefix)
            .field("replicas", &self.replicas)
            .field("duplicate_window", &self.duplicate_window)
            .field("durability_delay", &self.durability_delay)
            .field("watermark_interval", &self.watermark_interval)
            .field("allow_unsafe_stream", &self.allow_unsafe_stream)
            .field("creds_file", &self.creds_file)
            .field("nkey_file", &self.nkey_file)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .finish()
    }
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: default_nats_url(),
            stream: default_stream(),
            subject_prefix: default_subject_prefix(),
            replicas: default_replicas(),
            duplicate_window: default_duplicate_window(),
            durability_delay: Duration::ZERO,
            watermark_interval: default_watermark_interval(),
            allow_unsafe_stream: false,
            creds_file: None,
            nkey_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningConfig {
    pub key_file: PathBuf,
    /// Public keys (SPKI PEM) of earlier signing keys, so a rotated stream still verifies and
    /// resumes.
    #[serde(default)]
    pub trusted_keys: Vec<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashingConfig {
    /// The secret salt (any bytes, at least 16) for `hash_columns`; a file readable only by
    /// its owner.
    pub salt_file: Option<PathBuf>,
}

/// `[archive]`: how `walguard archive` cuts the stream into segments (SPEC section 7).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// The most events in one segment.
    #[serde(default = "default_segment_events")]
    pub segment_events: u64,
    /// With `--follow`, a segment with new events is sealed at least this often.
    #[serde(default = "default_segment_seconds", deserialize_with = "de_duration")]
    pub segment_seconds: Duration,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            segment_events: default_segment_events(),
            segment_seconds: default_segment_seconds(),
        }
    }
}

fn default_segment_events() -> u64 {
    100_000
}

fn default_segment_seconds() -> Duration {
    Duration::from_secs(60)
}

/// `[console]`: where `walguard console` listens and how auditors prove who they are (SPEC
/// section 9): a bearer token file, or TLS with client certificates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    #[serde(default = "default_console_listen")]
    pub listen: String,
    /// A file holding the bearer token (mode 0600, like the signing key).
    pub token_file: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// The CA that issued the auditors' client certificates.
    pub tls_client_ca_file: Option<PathBuf>,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            listen: default_console_listen(),
            token_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
        }
    }
}

fn default_console_listen() -> String {
    "127.0.0.1:9188".into()
}

/// `console.*`: the address parses, and TLS is all three files or none.
fn check_console(console: &ConsoleConfig) -> Result<(), String> {
    if console.listen.parse::<std::net::SocketAddr>().is_err() {
        return Err(format!(
            "console.listen {:?}: expected host:port such as 127.0.0.1:9188",
            console.listen
        ));
    }
    let tls = [
        &console.tls_cert_file,
        &console.tls_key_file,
        &console.tls_client_ca_file,
    ];
    let given = tls.iter().filter(|f| f.is_some()).count();
    if given != 0 && given != tls.len() {
        return Err(
            "console.tls_cert_file, console.tls_key_file and console.tls_client_ca_file: set all three (TLS with client certificates) or none"
                .into(),
        );
    }
    Ok(())
}

/// `[audit]`: the transparency log's checkpoints and their witnesses (SPEC section 8).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The checkpoints' origin line; `{system_identifier}`, `{database}` and `{slot}` are
    /// filled in at start-up ([`AuditConfig::origin_for`]).
    #[serde(default = "default_origin")]
    pub origin: String,
    /// A checkpoint at most this often, when there are new messages.
    #[serde(default = "default_checkpoint_interval", deserialize_with = "de_duration")]
    pub checkpoint_interval: Duration,
    /// How many witnesses must cosign; `None`: every configured witness.
    #[serde(default)]
    pub witness_quorum: Option<usize>,
    /// Confirm the slot only past events covered by a checkpoint the quorum cosigned.
    #[serde(default)]
    pub require_witness: bool,
    #[serde(default)]
    pub witnesses: Vec<WitnessConfig>,
}

/// One `[[audit.witnesses]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessConfig {
    /// The witness's submission prefix (`http://` or `https://`).
    pub url: String,
    /// Its C2SP vkey, `name+keyid+base64`.
    pub key: String,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            origin: default_origin(),
            checkpoint_interval: default_checkpoint_interval(),
            witness_quorum: None,
            require_witness: false,
            witnesses: Vec::new(),
        }
    }
}

fn default_origin() -> String {
    "walguard/{system_identifier}/{database}/{slot}".to_owned()
}

fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(10)
}

impl AuditConfig {
    /// The origin line with its placeholders filled in.
    pub fn origin_for(&self, system_identifier: &str, database: &str, slot: &str) -> String {
        self.origin
            .replace("{system_identifier}", system_identifier)
            .replace("{database}", database)
            .replace("{slot}", slot)
    }

    /// The witnesses' keys, in `[[audit.witnesses]]` order; the error names the entry.
    /// Checked at load, so after it this fails for no `Config`.
    pub fn witness_keys(&self) -> Result<Vec<crate::tlog::Vkey>, String> {
        self.witnesses
            .iter()
            .enumerate()
            .map(|(i, w)| {
                crate::tlog::Vkey::parse(&w.key).map_err(|e| format!("audit.witnesses[{i}].key {:?}: {e}", w.key))
            })
            .collect()
    }

    /// The quorum: `witness_quorum`, or every witness.
    pub fn quorum(&self) -> usize {
        self.witness_quorum.unwrap_or(self.witnesses.len())
    }
}

/// The `[audit]` section's rules: an origin C2SP can name (no space, no `+`, only the known
/// placeholders), a positive interval, witnesses' keys that are cosignature keys, and a quorum
/// that the witnesses can reach.
fn check_audit(a: &AuditConfig) -> Result<(), String> {
    let filled = a.origin_for("1", "db", "slot");
    if filled.is_empty() || filled.contains(char::is_whitespace) || filled.contains('+') {
        return Err(format!(
            "audit.origin {:?}: expected a non-empty name without spaces or '+' (C2SP signed-note key names)",
            a.origin
        ));
    }
    if filled.contains('{') || filled.contains('}') {
        return Err(format!(
            "audit.origin {:?}: the only placeholders are {{system_identifier}}, {{database}} and {{slot}}",
            a.origin
        ));
    }
    if a.checkpoint_interval.is_zero() {
        return Err("audit.checkpoint_interval: expected a positive duration".into());
    }
    for (i, (w, key)) in a.witnesses.iter().zip(a.witness_keys()?).enumerate() {
        crate::witness::WitnessClient::new(&w.url, key, Duration::from_secs(1))
            .map_err(|e| format!("audit.witnesses[{i}]: {e}"))?;
    }
    let n = a.witnesses.len();
    match a.witness_quorum {
        Some(q) if q == 0 || q > n => {
            return Err(format!(
                "audit.witness_quorum {q}: expected 1 to {n} (the number of [[audit.witnesses]])"
            ))
        }
        _ => {}
    }
    if a.require_witness && n == 0 {
        return Err("audit.require_witness = true needs at least one [[audit.witnesses]] entry".into());
    }
    Ok(())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
        }
    }
}

/// `postgres.*`: the URL parsed into the one target every connection is made from, the slot
/// and publication names checked.
fn check_postgres(postgres: &PostgresConfig) -> Result<PgConfig, String> {
    // The message names the problem but never quotes the URL: any part of it may be the
    // password.
    let target = PgConfig::parse(postgres.url.expose())
        .map_err(|err| format!("postgres.url is not a valid libpq URL or key=value string: {err}"))?;
    let slot_ok = !postgres.slot.is_empty()
        && postgres.slot.len() <= 63
        && postgres
            .slot
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !slot_ok {
        return Err(format!(
            "postgres.slot {:?}: expected 1 to 63 lowercase letters, digits or underscores (PostgreSQL's rule for slot names)",
            postgres.slot
        ));
    }
    if postgres.publication.is_empty() {
        return Err("postgres.publication: expected a publication name".into());
    }
    Ok(target)
}

/// `nats.*`: names and subjects JetStream would refuse, and values that cannot work.
fn check_nats(n: &NatsConfig) -> Result<(), String> {
    if n.stream.is_empty() || n.stream.contains(|c: char| c.is_whitespace() || ".*>/\\".contains(c)) {
        return Err(format!(
            "nats.stream {:?}: expected a name without spaces, '.', '*', '>', '/' or '\\'",
            n.stream
        ));
    }
    let prefix_ok = !n.subject_prefix.is_empty()
        && n.subject_prefix
            .split('.')
            .all(|t| !t.is_empty() && !t.contains(|c: char| c.is_whitespace() || c == '*' || c == '>'));
    if !prefix_ok {
        return Err(format!(
            "nats.subject_prefix {:?}: expected dot-separated subject tokens without wildcards",
            n.subject_prefix
        ));
    }
    if !(1..=5).contains(&n.replicas) {
        return Err(format!("nats.replicas {}: expected 1 to 5", n.replicas));
    }
    if n.watermark_interval.is_zero() {
        return Err("nats.watermark_interval: expected a positive duration".into());
    }
    Ok(())
}

fn default_slot() -> String {
    "walguard".into()
}
fn default_publication() -> String {
    "walguard".into()
}
fn default_retained_wal_warn() -> u64 {
    1 << 30
}
fn default_nats_url() -> String {
    "nats://127.0.0.1:4222".into()
}
fn default_stream() -> String {
    "WALGUARD".into()
}
fn default_subject_prefix() -> String {
    "walguard".into()
}
fn default_replicas() -> usize {
    1
}
fn default_duplicate_window() -> Duration {
    Duration::from_secs(120)
}
fn default_watermark_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_listen() -> String {
    "127.0.0.1:9187".into()
}

/// Durations as humantime strings (`"2m"`, `"500ms"`).
fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "expected a duration such as \"10s\" or \"2m\", got {s:?} ({e})"
        ))
    })
}

/// Sizes: a number of bytes, or a number with kB, MB, GB, TB (powers of 1000) or KiB, MiB,
/// GiB, TiB (powers of 1024).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match StrOr::<u64>::deserialize(d)? {
        StrOr::Value(v) => Ok(v),
        StrOr::Str(s) => parse_size(&s).ok_or_else(|| {
            serde::de::Error::custom(format!("expected a size such as \"1GiB\" or \"512MB\", got {s:?}"))
        }),
    }
}

/// Numbers and booleans from env overrides arrive as strings; accept both forms.
#[derive(Deserialize)]
#[serde(untagged)]
enum StrOr<T> {
    Value(T),
    Str(String),
}

fn de_from_str<'de, D: Deserializer<'de>, T: Deserialize<'de> + FromStr>(d: D) -> Result<T, D::Error> {
    match StrOr::<T>::deserialize(d)? {
        StrOr::Value(v) => Ok(v),
        StrOr::Str(s) => s
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("expected a whole number, got {s:?}"))),
    }
}

fn de_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match StrOr::<bool>::deserialize(d)? {
        StrOr::Value(v) => Ok(v),
        StrOr::Str(s) => s
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("expected true or false, got {s:?}"))),
    }
}

/// A guarded table's name, split as PostgreSQL would read it: unquoted parts fold to lower
/// case, double-quoted parts are kept as written; no schema means `public`.
pub fn parse_table_name(name: &str) -> Option<(String, String)> {
    fn ident(s: &str) -> Option<(String, &str)> {
        if let Some(rest) = s.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = rest.char_indices();
            while let Some((i, c)) = chars.next() {
                if c == '"' {
                    if rest[i + 1..].starts_with('"') {
                        out.push('"');
                        chars.next();
                    } else {
                        return (!out.is_empty()).then_some((out, &rest[i + 1..]));
                    }
                } else {
                    out.push(c);
                }
            }
            None
        } else {
            let end = s.find('.').unwrap_or(s.len());
            let part = &s[..end];
            let ok = !part.is_empty()
                && part.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '$')
                && !part.starts_with(|c: char| c.is_ascii_digit());
            ok.then(|| (part.to_lowercase(), &s[end..]))
        }
    }
    let (first, rest) = ident(name.trim())?;
    if rest.is_empty() {
        return Some(("public".into(), first));
    }
    let (second, rest) = ident(rest.strip_prefix('.')?)?;
    rest.is_empty().then_some((first, second))
}

impl Config {
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        if !file.exists() {
            return Err(invalid(
                file,
                "file not found; pass the path of a walguard TOML file with -c",
            ));
        }
        let raw = config::Config::builder()
            .add_source(config::File::from(file).format(config::FileFormat::Toml).required(true))
            .add_source(
                config::Environment::with_prefix("WALGUARD")
                    .prefix_separator("__")
                    .separator("__"),
            )
            .build()
            .map_err(|e| invalid(file, without_source_lines(&e.to_string())))?;
        let parsed: ConfigFile = raw.try_deserialize().map_err(|e| invalid(file, describe(e)))?;
        Config::validate(parsed, file)
    }

    /// The one validation step: every check, in the order the messages were always given,
    /// then the relative paths resolved against the file's folder.
    fn validate(parsed: ConfigFile, file: &Path) -> Result<Config, ConfigError> {
        let ConfigFile {
            postgres,
            tables,
            mut nats,
            mut signing,
            server,
            mut hashing,
            archive,
            audit,
            mut console,
        } = parsed;
        let e = |m: String| invalid(file, m);
        let target = check_postgres(&postgres).map_err(e)?;
        let tables = guarded_tables(tables).map_err(e)?;
        check_nats(&nats).map_err(e)?;
        // A segment ends at a signed event, and up to MAX_UNSIGNED_RUN events may precede
        // a signature: below that, "at most segment_events" could not always hold.
        let fewest = u64::from(crate::event::chain::MAX_UNSIGNED_RUN) + 1;
        if archive.segment_events < fewest {
            return Err(e(format!(
                "archive.segment_events {}: expected at least {fewest} (a segment ends at a signed event, and one signature covers up to {fewest} events)",
                archive.segment_events
            )));
        }
        if archive.segment_seconds.is_zero() {
            return Err(e("archive.segment_seconds: expected a positive duration".into()));
        }
        check_audit(&audit).map_err(e)?;
        check_console(&console).map_err(e)?;
        if server.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(e(format!(
                "server.listen {:?}: expected host:port such as 127.0.0.1:9187",
                server.listen
            )));
        }
        let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut signing.key_file);
        signing.trusted_keys.iter_mut().for_each(resolve);
        for p in [
            &mut hashing.salt_file,
            &mut nats.creds_file,
            &mut nats.nkey_file,
            &mut nats.tls_ca_file,
            &mut nats.tls_cert_file,
            &mut nats.tls_key_file,
            &mut console.token_file,
            &mut console.tls_cert_file,
            &mut console.tls_key_file,
            &mut console.tls_client_ca_file,
        ]
        .into_iter()
        .flatten()
        {
            resolve(p);
        }
        Ok(Config {
            postgres,
            nats,
            signing,
            server,
            hashing,
            archive,
            audit,
            console,
            file: file.to_owned(),
            target,
            tables,
        })
    }

    /// The PostgreSQL target (`postgres.url`), parsed and checked at load; every connection
    /// to the database is made from it. A copy (a few strings, taken once per connection
    /// attempt), so callers own it as they always have.
    pub fn pg_config(&self) -> PgConfig {
        self.target.clone()
    }

    /// The guarded tables as `(schema, table, config)`.
    pub fn guarded(&self) -> impl Iterator<Item = (String, String, &TableConfig)> {
        self.tables
            .iter()
            .map(|t| (t.schema.clone(), t.name.clone(), &t.config))
    }
}

/// `[[tables]]` with their names parsed: at least one table, every name valid and listed
/// once (as PostgreSQL reads it, so `Orders` and `public.orders` are the same table), every
/// `key` a non-empty list of names. Messages name the entry (`tables[2].name`).
fn guarded_tables(tables: Vec<TableConfig>) -> Result<Vec<GuardedTable>, String> {
    if tables.is_empty() {
        return Err(
            "[[tables]]: no table is guarded; add at least one [[tables]] entry with name = \"schema.table\"".into(),
        );
    }
    let mut seen = std::collections::HashSet::new();
    let mut guarded = Vec::with_capacity(tables.len());
    for (i, t) in tables.into_iter().enumerate() {
        let (schema, name) = parse_table_name(&t.name).ok_or_else(|| {
            format!(
                "tables[{i}].name {:?}: expected \"schema.table\" (double-quote parts that need it)",
                t.name
            )
        })?;
        if !seen.insert((schema.clone(), name.clone())) {
            return Err(format!("tables[{i}].name {:?} is listed twice", t.name));
        }
        if t.key
            .as_ref()
            .is_some_and(|k| k.is_empty() || k.iter().any(String::is_empty))
        {
            return Err(format!("tables[{i}].key: expected a non-empty list of column names"));
        }
        guarded.push(GuardedTable {
            schema,
            name,
            config: t,
        });
    }
    Ok(guarded)
}

/// serde's messages name the field but not its section; the config crate adds the key path
/// for type errors. Both are kept, with a hint for unknown fields.
fn describe(e: config::ConfigError) -> String {
    let s = e.to_string();
    if s.contains("unknown field") {
        format!("{s}; remove the key or fix its spelling (see config/walguard.example.toml)")
    } else if s.contains("missing field") {
        format!("{s}; add it (see config/walguard.example.toml)")
    } else {
        s
    }
}

/// A TOML syntax error without the file's line that toml quotes under it (`3 | url = ...`):
/// that line may be `postgres.url` with its password. The line and column numbers stay.
fn without_source_lines(message: &str) -> String {
    let quoted = |line: &str| {
        let rest = line.trim_start().trim_start_matches(|c: char| c.is_ascii_digit());
        rest.trim_start().starts_with('|')
    };
    message
        .lines()
        .filter(|line| !quoted(line))
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::value::tests::{ci_config, tricky_text};

    fn write(dir: &tempfile::TempDir, body: &str) -> PathBuf {
        let p = dir.path().join("walguard.toml");
        std::fs::write(&p, body).unwrap();
        p
    }

    const MINIMAL: &str = r#"
[postgres]
url = "postgres://walguard:s3cret@127.0.0.1:5432/app"
[[tables]]
name = "public.customers"
[signing]
key_file = "walguard.key"
"#;

    #[test]
    fn defaults_and_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::load(&write(&dir, MINIMAL)).unwrap();
        assert_eq!(cfg.postgres.slot, "walguard");
        assert_eq!(cfg.nats.stream, "WALGUARD");
        assert_eq!(cfg.nats.duplicate_window, Duration::from_secs(120));
        assert_eq!(cfg.nats.watermark_interval, Duration::from_secs(10));
        assert_eq!(cfg.server.listen, "127.0.0.1:9187");
        assert_eq!(cfg.signing.key_file, dir.path().join("walguard.key"));
        assert!(!format!("{cfg:?}").contains("s3cret"));
    }

    #[test]
    fn unknown_keys_are_errors_naming_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, &format!("{MINIMAL}\n[nats]\nstreem = \"X\"\n"));
        let msg = Config::load(&p).unwrap_err().to_string();
        assert!(msg.contains("streem") && msg.contains("walguard.toml"), "{msg}");
        let p = write(&dir, &format!("{MINIMAL}\n[extra]\na = 1\n"));
        let msg = Config::load(&p).unwrap_err().to_string();
        assert!(msg.contains("extra"), "{msg}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        for (extra, key) in [
            ("[nats]\nduplicate_window = \"soon\"\n", "soon"),
            ("[nats]\nstream = \"a.b\"\n", "nats.stream"),
            ("[nats]\nsubject_prefix = \"a.*\"\n", "nats.subject_prefix"),
            ("[server]\nlisten = \"nowhere\"\n", "server.listen"),
        ] {
            let p = write(&dir, &format!("{MINIMAL}\n{extra}"));
            let msg = Config::load(&p).unwrap_err().to_string();
            assert!(msg.contains(key), "{extra}: {msg}");
        }
        let p = write(&dir, &MINIMAL.replace("public.customers", "a.b.c"));
        assert!(Config::load(&p).unwrap_err().to_string().contains("tables[0].name"));
    }

    #[test]
    fn table_names_follow_postgres_rules() {
        assert_eq!(
            parse_table_name("public.Customers"),
            Some(("public".into(), "customers".into()))
        );
        assert_eq!(parse_table_name("orders"), Some(("public".into(), "orders".into())));
        assert_eq!(
            parse_table_name("\"My.Schema\".\"Odd \"\"T\"\"\""),
            Some(("My.Schema".into(), "Odd \"T\"".into()))
        );
        assert_eq!(parse_table_name("a.b.c"), None);
        assert_eq!(parse_table_name(""), None);
        assert_eq!(parse_table_name("\"unterminated"), None);
    }

    #[test]
    fn the_example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/walguard.example.toml");
        let cfg = Config::load(&path).unwrap();
        assert_eq!(cfg.tables.len(), 2);
        assert_eq!(cfg.tables[0].config.type_prefix.as_deref(), Some("com.acme.customer"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("512MB"), Some(512_000_000));
        assert_eq!(parse_size("1 GiB"), Some(1 << 30));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("1 parsec"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn redacts_nats_credentials() {
        assert_eq!(redact_url("nats://u:pw@h:4222"), "nats://u:***@h:4222");
        assert_eq!(redact_url("nats://t0ken@h:4222"), "nats://***@h:4222");
        assert_eq!(redact_url("tls://u:p@w@h/x?y@z"), "tls://u:***@h/x?y@z");
        assert_eq!(
            redact_url("nats://u:pw@a:4222,nats://t0ken@b:4222,nats://c:4222"),
            "nats://u:***@a:4222,nats://***@b:4222,nats://c:4222"
        );
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
    }

    /// `url` as `postgres.url` of MINIMAL, in a TOML basic string (only `\\` and `"` need
    /// escapes there: `\\PC` and the URLs below have no control characters).
    fn with_postgres_url(url: &str) -> String {
        MINIMAL.replace(
            "url = \"postgres://walguard:s3cret@127.0.0.1:5432/app\"",
            &format!("url = \"{}\"", url.replace('\\', "\\\\").replace('"', "\\\"")),
        )
    }

    #[test]
    fn the_postgres_password_is_never_printed_in_any_form() {
        // Every form tokio-postgres reads a password in, valid and with an error elsewhere.
        let dir = tempfile::tempdir().unwrap();
        for (url, password) in [
            ("postgres://walguard:pw1Zq@db:5432/app", "pw1Zq"),
            ("postgres://walguard@db:5432/app?password=pw1Zq", "pw1Zq"),
            (
                "postgresql://walguard@db/app?application_name=x&password=pw1Zq&sslmode=require",
                "pw1Zq",
            ),
            ("host=db user=walguard password=pw1Zq", "pw1Zq"),
            ("host=db user=walguard password = pw1Zq", "pw1Zq"),
            ("host=db user=walguard password='pw1Zq'", "pw1Zq"),
            ("host=db user=walguard password = 'pw1Zq pw1Zq'", "pw1Zq pw1Zq"),
            (r"host=db user=walguard password=pw1Zq\ pw1Zq", "pw1Zq pw1Zq"),
        ] {
            let cfg = Config::load(&write(&dir, &with_postgres_url(url))).unwrap();
            assert_eq!(cfg.pg_config().get_password(), Some(password.as_bytes()), "{url}");
            let shown = format!("{cfg:?}");
            assert!(!shown.contains("pw1Zq"), "{url}: {shown}");
            assert!(
                shown.contains("db:5432") && shown.contains("<redacted>"),
                "{url}: {shown}"
            );
        }
        for url in [
            "postgres://walguard:pw1Zq@db:port/app",
            "postgres://walguard@db:port/app?password=pw1Zq",
            "postgres://walguard@db/app?password=pw1Zq&sslmode=sometimes",
            "host=db port=x password=pw1Zq",
            "host=db password = pw1Zq port=x",
            "host=db password = 'pw1Zq pw1Zq' port=x",
            "host=db password = pw1Zq pw1Zq",
            "host=db password pw1Zq",
            "host=db password='pw1Zq",
        ] {
            let msg = Config::load(&write(&dir, &with_postgres_url(url)))
                .unwrap_err()
                .to_string();
            assert!(msg.contains("postgres.url is not a valid"), "{url}: {msg}");
            assert!(!msg.contains("pw1Zq") && !msg.contains("`p`"), "{url}: {msg}");
        }
    }

    #[test]
    fn a_toml_syntax_error_does_not_quote_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, &MINIMAL.replace("/app\"", "/app"));
        let msg = Config::load(&p).unwrap_err().to_string();
        assert!(msg.contains("line 3") && msg.contains("walguard.toml"), "{msg}");
        assert!(!msg.contains("s3cret"), "{msg}");
    }

    #[test]
    fn the_nats_url_is_redacted_in_debug() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            &dir,
            &format!("{MINIMAL}\n[nats]\nurl = \"nats://u:natspw@h:4222,nats://t0ken@g:4222\"\n"),
        );
        let shown = format!("{:?}", Config::load(&p).unwrap());
        assert!(!shown.contains("natspw") && !shown.contains("t0ken"), "{shown}");
        assert!(shown.contains("nats://u:***@h:4222,nats://***@g:4222"), "{shown}");
    }

    // Standing in for fuzzing in CI, as `decode::fuzz` does for the decoders: `postgres.url`
    // is sliced and percent-decoded by walguard itself, so it gets the same text dense in
    // multibyte characters as the timestamp parser.
    proptest::proptest! {
        #![proptest_config(ci_config())]

        #[test]
        fn postgres_url_with_multibyte_characters_never_panics(value in tricky_text(), form in 0usize..5) {
            // The `sslmode` and `sslrootcert` values are percent-decoded by walguard itself.
            let url = match form {
                0 => format!("postgres://u@db/app?sslrootcert={value}"),
                1 => format!("postgres://u:{value}@db/app?sslmode={value}&application_name=x"),
                2 => format!("host=db sslrootcert={value} sslmode=require"),
                3 => format!("postgresql://{value}"),
                _ => value,
            };
            // Loaded the way `run` loads it.
            let dir = tempfile::tempdir().unwrap();
            let _ = Config::load(&write(&dir, &with_postgres_url(&url)));
        }
    }
}
