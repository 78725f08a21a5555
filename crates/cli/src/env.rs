//! Every environment variable the binary reads, in one place. Each overrides
//! `bulkhead.toml` and is overridden by its flag.

pub const API: &str = "BULKHEAD_API";
pub const TOKEN: &str = "BULKHEAD_TOKEN";
pub const DATA_DIR: &str = "BULKHEAD_DATA_DIR";
pub const CONFIG: &str = "BULKHEAD_CONFIG";
pub const STORE: &str = "BULKHEAD_STORE";
pub const API_LISTEN: &str = "BULKHEAD_API_LISTEN";
pub const GATEWAY_LISTEN: &str = "BULKHEAD_GATEWAY_LISTEN";
pub const BASE_DOMAIN: &str = "BULKHEAD_BASE_DOMAIN";
/// Redis shared by every gateway replica for rate limits.
pub const REDIS: &str = "BULKHEAD_REDIS";
pub const PUBLIC_URL: &str = "BULKHEAD_PUBLIC_URL";
/// Comma-separated hosts whose JWKS may be fetched over http or at private
/// addresses.
pub const INSECURE_JWKS_HOSTS: &str = "BULKHEAD_INSECURE_JWKS_HOSTS";
pub const LOG_FORMAT: &str = "BULKHEAD_LOG_FORMAT";
pub const MASTER_KEY_FILE: &str = "BULKHEAD_MASTER_KEY_FILE";
/// The master key itself (base64 of 32 bytes), for platforms that inject
/// secrets as environment variables. Bulkhead cannot rotate such a key.
pub const MASTER_KEY: &str = "BULKHEAD_MASTER_KEY";
/// A `tracing` filter such as `info` or `bulkhead_control=debug,info`.
pub const LOG: &str = "BULKHEAD_LOG";

/// `$XDG_DATA_HOME/bulkhead`, else `~/.local/share/bulkhead`, else
/// `./bulkhead-data`: the same place for the server and for the client
/// commands, so that on one machine they find each other without flags.
pub fn default_data_dir() -> std::path::PathBuf {
    let non_empty = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(xdg) = non_empty("XDG_DATA_HOME") {
        return std::path::PathBuf::from(xdg).join("bulkhead");
    }
    match non_empty("HOME") {
        Some(home) => std::path::PathBuf::from(home).join(".local/share/bulkhead"),
        None => std::path::PathBuf::from("bulkhead-data"),
    }
}
