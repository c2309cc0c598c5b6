//! libpq connection strings, read as libpq reads them: a URI or `key=value`
//! pairs, the TLS settings tokio-postgres does not know taken out (what they
//! mean for a connection is [`super::tls`]'s), and the defaults libpq fills in
//! from the environment. Pure text and environment: no connection is made.

use std::str::FromStr;

/// The longest name PostgreSQL keeps whole; a longer one is cut silently.
pub const MAX_IDENTIFIER: usize = 63;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub(super) fn parse(value: &str) -> Option<SslMode> {
        Some(match value {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// Whether the server's certificate must lead to a trusted root.
    pub(super) fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// The TLS settings of one connection string, before the environment and
/// `~/.postgresql/` fill in what it leaves out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub(super) mode: Option<SslMode>,
    pub(super) root_cert: Option<String>,
    pub(super) cert: Option<String>,
    pub(super) key: Option<String>,
}

/// The keys [`parse`] takes out of a connection string.
const TLS_KEYS: [&str; 5] = ["sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword"];

/// Parses a libpq connection string (a URI or `key=value` pairs) into what
/// tokio-postgres understands and the TLS settings it does not. Errors say
/// what is wrong, for the caller to put in context.
pub fn parse(url: &str) -> std::result::Result<(tokio_postgres::Config, TlsSettings), String> {
    let (rest, pairs) = split_tls_keys(url);
    let mut tls = TlsSettings::default();
    for (key, value) in pairs {
        match key.as_str() {
            "sslmode" => {
                tls.mode = Some(SslMode::parse(&value).ok_or_else(|| {
                    format!(
                        "sslmode '{value}' is not one of disable, allow, prefer, require, \
                         verify-ca, verify-full"
                    )
                })?)
            }
            "sslrootcert" => tls.root_cert = Some(value),
            "sslcert" => tls.cert = Some(value),
            "sslkey" => tls.key = Some(value),
            // A password in a url ends up in process listings.
            _ => return Err("the url contains sslpassword".to_owned()),
        }
    }
    let config = tokio_postgres::Config::from_str(&rest).map_err(|e| e.to_string())?;
    Ok((config, tls))
}

/// Splits `sslmode`, `sslrootcert`, `sslcert`, `sslkey` and `sslpassword` out
/// of a connection string: the string without them, and them decoded.
/// A string that does not tokenize is returned whole, for tokio-postgres to
/// name the mistake.
fn split_tls_keys(url: &str) -> (String, Vec<(String, String)>) {
    let mut taken = Vec::new();
    if url.starts_with("postgresql://") || url.starts_with("postgres://") {
        let Some((head, query)) = url.split_once('?') else {
            return (url.to_owned(), taken);
        };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(key);
            if TLS_KEYS.contains(&key.as_str()) {
                taken.push((key, percent_decode(value)));
            } else {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            head.to_owned()
        } else {
            format!("{head}?{}", kept.join("&"))
        };
        return (rest, taken);
    }
    let Some(pairs) = keyword_pairs(url) else {
        return (url.to_owned(), taken);
    };
    let mut kept = Vec::new();
    for (key, value, raw) in pairs {
        if TLS_KEYS.contains(&key.as_str()) {
            taken.push((key, value));
        } else {
            kept.push(raw);
        }
    }
    (kept.join(" "), taken)
}

/// `key = value` pairs of a libpq keyword/value string: key, unquoted value,
/// and the pair as written. `None` if it does not tokenize.
fn keyword_pairs(text: &str) -> Option<Vec<(String, String, &str)>> {
    let bytes = text.as_bytes();
    let mut pairs = Vec::new();
    let mut i = 0;
    let skip_space = |mut i: usize| {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    loop {
        i = skip_space(i);
        if i == bytes.len() {
            return Some(pairs);
        }
        let start = i;
        while i < bytes.len() && bytes[i] != b'=' && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = text[start..i].to_owned();
        i = skip_space(i);
        if bytes.get(i) != Some(&b'=') || key.is_empty() {
            return None;
        }
        i = skip_space(i + 1);
        let mut value = Vec::new();
        if bytes.get(i) == Some(&b'\'') {
            i += 1;
            loop {
                match bytes.get(i)? {
                    b'\'' => break i += 1,
                    b'\\' => {
                        value.push(*bytes.get(i + 1)?);
                        i += 2;
                    }
                    b => {
                        value.push(*b);
                        i += 1;
                    }
                }
            }
        } else {
            while let Some(&b) = bytes.get(i) {
                if b.is_ascii_whitespace() {
                    break;
                }
                if b == b'\\' {
                    value.push(*bytes.get(i + 1)?);
                    i += 2;
                } else {
                    value.push(b);
                    i += 1;
                }
            }
        }
        pairs.push((key, String::from_utf8(value).ok()?, &text[start..i]));
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = || std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok();
        match (bytes[i], hex().and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// libpq fills in what a url leaves out; tokio-postgres does not, so do it here
/// the same way, so the children (which use libpq) and we reach the same server.
pub fn apply_libpq_defaults(config: &mut tokio_postgres::Config) {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if config.get_hosts().is_empty() {
        if config.get_hostaddrs().is_empty() {
            let host = env("PGHOST").unwrap_or_else(|| "/var/run/postgresql".to_owned());
            config.host(&host);
        } else {
            // The address is the name TLS checks, as with libpq.
            let addrs: Vec<String> = config
                .get_hostaddrs()
                .iter()
                .map(|a| a.to_string())
                .collect();
            for addr in addrs {
                config.host(&addr);
            }
        }
    }
    if config.get_ports().is_empty()
        && let Some(port) = env("PGPORT").and_then(|p| p.parse().ok())
    {
        config.port(port);
    }
    if config.get_user().is_none()
        && let Some(user) = env("PGUSER").or_else(|| env("USER"))
    {
        config.user(&user);
    }
    if config.get_dbname().is_none() {
        let dbname = env("PGDATABASE").or_else(|| config.get_user().map(str::to_owned));
        if let Some(dbname) = dbname {
            config.dbname(&dbname);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(url: &str) -> (String, Vec<(String, String)>) {
        split_tls_keys(url)
    }

    #[test]
    fn tls_keys_come_out_of_a_uri_and_the_rest_stays_as_written() {
        let (rest, keys) = taken(
            "postgresql://app@db.example:5432/app?connect_timeout=5&sslmode=verify-full&sslrootcert=%2Fetc%2Fca%20x.pem&application_name=a",
        );
        assert_eq!(
            rest,
            "postgresql://app@db.example:5432/app?connect_timeout=5&application_name=a"
        );
        assert_eq!(
            keys,
            vec![
                ("sslmode".to_owned(), "verify-full".to_owned()),
                ("sslrootcert".to_owned(), "/etc/ca x.pem".to_owned())
            ]
        );
        let (rest, _) = taken("postgres://h/db?sslmode=require");
        assert_eq!(rest, "postgres://h/db");
        assert_eq!(taken("postgres://h/db").0, "postgres://h/db");
    }

    #[test]
    fn tls_keys_come_out_of_keyword_value_strings_with_quotes() {
        let (rest, keys) = taken(
            "host=db port=5432 sslmode = verify-ca sslrootcert='/etc/my ca\\'s.pem' dbname=app",
        );
        assert_eq!(rest, "host=db port=5432 dbname=app");
        assert_eq!(
            keys,
            vec![
                ("sslmode".to_owned(), "verify-ca".to_owned()),
                ("sslrootcert".to_owned(), "/etc/my ca's.pem".to_owned())
            ]
        );
        // Not tokenizable: left whole for tokio-postgres to name the mistake.
        assert_eq!(taken("host=db sslmode").0, "host=db sslmode");
    }

    #[test]
    fn every_libpq_sslmode_parses_and_others_are_named() {
        for (text, mode) in [
            ("disable", SslMode::Disable),
            ("allow", SslMode::Allow),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            let (config, tls) = parse(&format!("postgresql://h/db?sslmode={text}")).unwrap();
            assert_eq!(tls.mode, Some(mode));
            assert_eq!(config.get_dbname(), Some("db"));
        }
        let err = parse("postgresql://h/db?sslmode=verify").unwrap_err();
        assert!(err.contains("sslmode 'verify'"), "{err}");
        let err = parse("host=h sslpassword=hunter2").unwrap_err();
        assert!(
            err.contains("sslpassword") && !err.contains("hunter2"),
            "{err}"
        );
    }
}
