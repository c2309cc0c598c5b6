//! TLS to PostgreSQL, the way libpq does it.
//!
//! `pg_dump`, `pg_restore` and `pg_dumpall` get the url as written, so libpq
//! applies `sslmode`, `sslrootcert`, `sslcert` and `sslkey` there. Our own
//! connections (snapshot, row counts, locks, maintenance) must reach the same
//! server the same way, but tokio-postgres knows `sslmode` only up to
//! `require` and none of the certificate settings. So [`super::url::parse`]
//! takes those settings out of the url (then `PGSSL*`, then `~/.postgresql/`, as libpq
//! looks them up) and [`TlsSettings::connector`] builds the rustls client
//! that checks what libpq would check:
//!
//! | sslmode | TLS | server certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `allow`, `prefer` (default) | if the server offers it | chain checked only when a root certificate is there, as libpq does |
//! | `require` | always | likewise |
//! | `verify-ca` | always | chain must lead to `sslrootcert` |
//! | `verify-full` | always | chain, and the host name must match |
//!
//! Unix sockets never use TLS, whatever the mode (libpq ignores it there).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::url::{SslMode, TlsSettings};
use crate::error::{Error, Result};

/// Where a setting's value came from, for messages.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn home_file(name: &str) -> Option<PathBuf> {
    env("HOME").map(|home| Path::new(&home).join(".postgresql").join(name))
}

impl TlsSettings {
    /// The mode in effect: the url's, else `PGSSLMODE`, else `prefer`, or
    /// `verify-full` with `sslrootcert=system` (as libpq 16 has it).
    pub fn mode(&self) -> Result<SslMode> {
        let explicit = match self.mode {
            Some(mode) => Some(mode),
            None => match env("PGSSLMODE") {
                Some(value) => Some(SslMode::parse(&value).ok_or_else(|| {
                    Error::config(format!("PGSSLMODE '{value}' is not a valid sslmode"))
                        .with_hint("use disable, allow, prefer, require, verify-ca or verify-full")
                })?),
                None => None,
            },
        };
        let system = self.root_cert_setting().as_deref() == Some("system");
        match explicit {
            Some(mode) if system && mode != SslMode::VerifyFull => Err(Error::config(format!(
                "sslmode {} may not be used with sslrootcert=system",
                mode_name(mode)
            ))
            .with_hint("use sslmode=verify-full: the system's CAs sign certificates for names")),
            Some(mode) => Ok(mode),
            None if system => Ok(SslMode::VerifyFull),
            None => Ok(SslMode::Prefer),
        }
    }

    fn root_cert_setting(&self) -> Option<String> {
        self.root_cert.clone().or_else(|| env("PGSSLROOTCERT"))
    }

    /// What tokio-postgres is told: whether to ask for TLS and whether to
    /// insist. Hosts that are all Unix sockets never use TLS.
    pub fn driver_mode(
        &self,
        config: &tokio_postgres::Config,
    ) -> Result<tokio_postgres::config::SslMode> {
        use tokio_postgres::config::{Host, SslMode as Driver};
        // A hostaddr is always TCP, whatever host says.
        let all_sockets = config.get_hostaddrs().is_empty()
            && !config.get_hosts().is_empty()
            && config
                .get_hosts()
                .iter()
                .all(|h| matches!(h, Host::Unix(_)));
        Ok(match self.mode()? {
            _ if all_sockets => Driver::Disable,
            SslMode::Disable => Driver::Disable,
            SslMode::Allow | SslMode::Prefer => Driver::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Driver::Require,
        })
    }

    /// The rustls client for these settings on `config`'s hosts: the root
    /// certificates to check the server against (if any), and the client
    /// certificate (if any). When TLS will not be used, none of their files
    /// is read, as libpq reads none.
    pub fn connector(&self, config: &tokio_postgres::Config) -> Result<MakeRustlsConnect> {
        let mode = self.mode()?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::config(format!("TLS: {e}")))?;
        let plain = self.driver_mode(config)? == tokio_postgres::config::SslMode::Disable;
        let roots = if plain { None } else { self.roots(mode)? };
        let verifier: Arc<dyn ServerCertVerifier> = match roots {
            Some((roots, trusted)) => {
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| Error::config(format!("TLS: the root certificates: {e}")))?;
                Arc::new(Checked {
                    webpki,
                    trusted,
                    check_name: mode == SslMode::VerifyFull,
                })
            }
            None => Arc::new(Unverified(provider.clone())),
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let client_cert = if plain { None } else { self.client_cert()? };
        let mut config = match client_cert {
            // Not with_client_auth_cert: it parses the certificate, and
            // refuses the X.509 v1 ones `openssl x509 -req` makes by default,
            // which OpenSSL (libpq, the server) takes.
            Some((chain, key, from)) => {
                let signing = provider.key_provider.load_private_key(key).map_err(|e| {
                    Error::config(format!(
                        "TLS: the key of the client certificate {from}: {e}"
                    ))
                })?;
                builder.with_client_cert_resolver(Arc::new(ClientCert(Arc::new(
                    rustls::sign::CertifiedKey::new(chain, signing),
                ))))
            }
            None => builder.with_no_client_auth(),
        };
        // What libpq 17 sends; servers before 17 ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(MakeRustlsConnect::new(config))
    }

    /// The certificates the server's must lead to, as libpq picks them:
    /// `sslrootcert` (or `system`), else `~/.postgresql/root.crt` if it
    /// exists, and their DER. `None` when there are none and the mode does
    /// not insist.
    #[allow(clippy::type_complexity)]
    fn roots(
        &self,
        mode: SslMode,
    ) -> Result<Option<(RootCertStore, Vec<CertificateDer<'static>>)>> {
        let explicit = self.root_cert_setting();
        let path = match explicit {
            Some(value) if value == "system" => {
                let found = rustls_native_certs::load_native_certs();
                let mut roots = RootCertStore::empty();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err(Error::config(
                        "sslrootcert=system: no certificates in the system's trust store",
                    )
                    .with_hint("install ca-certificates, or set sslrootcert to the CA's file"));
                }
                return Ok(Some((roots, Vec::new())));
            }
            // libpq checks nothing when a named file is missing and the
            // mode does not insist; it refuses when the mode does.
            Some(value) if !Path::new(&value).exists() && !mode.verifies() => return Ok(None),
            Some(value) if !Path::new(&value).exists() => {
                return Err(Error::config(format!(
                    "sslrootcert {value} does not exist (sslmode {})",
                    mode_name(mode)
                ))
                .with_hint(
                    "set sslrootcert to the PEM file of the CA that signed the server's \
                     certificate, or sslrootcert=system for the system's trust store",
                ));
            }
            Some(value) => PathBuf::from(value),
            None => match home_file("root.crt") {
                Some(path) if path.exists() => path,
                default => {
                    if !mode.verifies() {
                        return Ok(None);
                    }
                    let shown = default.map_or("~/.postgresql/root.crt".to_owned(), |p| {
                        p.display().to_string()
                    });
                    return Err(Error::config(format!(
                        "sslmode {} needs the CA that signed the server's certificate, \
                         and {shown} does not exist",
                        mode_name(mode)
                    ))
                    .with_hint(
                        "add sslrootcert=/path/to/ca.crt to the url (or sslrootcert=system for \
                         the system's trust store), or use sslmode=require to encrypt without \
                         checking the certificate",
                    ));
                }
            },
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&path)
            .and_then(|certs| certs.collect())
            .map_err(|e| {
                Error::config(format!(
                    "sslrootcert {}: cannot read certificates: {e}",
                    path.display()
                ))
                .with_hint("sslrootcert names a PEM file holding the CA's certificate")
            })?;
        let mut roots = RootCertStore::empty();
        let (_, unusable) = roots.add_parsable_certificates(certs.clone());
        if roots.is_empty() {
            return Err(Error::config(format!(
                "sslrootcert {}: no usable certificate in it ({unusable} unusable)",
                path.display()
            ))
            .with_hint("sslrootcert names a PEM file holding the CA's certificate"));
        }
        Ok(Some((roots, certs)))
    }

    /// The client certificate and key, as libpq picks them: `sslcert` and
    /// `sslkey`, else `~/.postgresql/postgresql.{crt,key}` if they exist.
    #[allow(clippy::type_complexity)]
    fn client_cert(
        &self,
    ) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, String)>> {
        let explicit = self.cert.clone().or_else(|| env("PGSSLCERT"));
        let cert = match &explicit {
            Some(path) => PathBuf::from(path),
            None => match home_file("postgresql.crt") {
                Some(path) if path.exists() => path,
                _ => return Ok(None),
            },
        };
        if !cert.exists() {
            return Err(Error::config(format!(
                "sslcert {} does not exist",
                cert.display()
            ))
            .with_hint("fix the path in the url, or remove sslcert to connect without a client certificate"));
        }
        let key = match self.key.clone().or_else(|| env("PGSSLKEY")) {
            Some(path) => PathBuf::from(path),
            None => match home_file("postgresql.key") {
                Some(path) => path,
                None => cert.with_extension("key"),
            },
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
            .and_then(|certs| certs.collect())
            .map_err(|e| {
                Error::config(format!("sslcert {}: cannot read it: {e}", cert.display()))
                    .with_hint("sslcert names a PEM file holding the client's certificate")
            })?;
        // libpq refuses a key others may read, and so do we.
        let pem = crate::secret::read_private(&key)?;
        let private = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| {
            Error::config(format!(
                "sslkey {}: cannot read a key from it: {e}",
                key.display()
            ))
            .with_hint("sslkey names an unencrypted PEM key; encrypted keys are not supported")
        })?;
        Ok(Some((chain, private, cert.display().to_string())))
    }
}

impl TlsSettings {
    /// What to do about a failed handshake, by what rustls said.
    pub fn failure_hint(&self, why: &str) -> String {
        let mode = self.mode().map_or("prefer", mode_name);
        if why.contains("not valid for name") {
            format!(
                "the server's certificate is for another host name (sslmode {mode}); connect \
                 by the name the certificate was made for, or use sslmode=verify-ca to check \
                 only that the CA signed it"
            )
        } else if why.contains("UnknownIssuer") || why.contains("issuer") {
            format!(
                "the server's certificate is not signed by the CA in sslrootcert (sslmode \
                 {mode}); point sslrootcert at the CA that signed it"
            )
        } else if why.contains("UnsupportedCertVersion") {
            "the server's certificate is X.509 v1 (what `openssl x509 -req` makes without \
             extensions), which rustls does not take; re-issue it as v3, e.g. with \
             `-extfile` giving its subjectAltName"
                .to_owned()
        } else if why.contains("no hostname provided") {
            "set host= to the server's name: with only hostaddr, TLS has no name to \
             check the certificate against"
                .to_owned()
        } else if why.contains("does not support TLS") {
            "the server does not offer TLS: turn on ssl in its postgresql.conf, or lower \
             sslmode"
                .to_owned()
        } else {
            format!("check the server's TLS settings and the url's ssl options (sslmode {mode})")
        }
    }
}

/// The one client certificate of a connection, offered whatever the server
/// hints.
#[derive(Debug)]
struct ClientCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn mode_name(mode: SslMode) -> &'static str {
    match mode {
        SslMode::Disable => "disable",
        SslMode::Allow => "allow",
        SslMode::Prefer => "prefer",
        SslMode::Require => "require",
        SslMode::VerifyCa => "verify-ca",
        SslMode::VerifyFull => "verify-full",
    }
}

/// A certificate checked against root certificates: the chain must lead to
/// one, and with `check_name` (verify-full) be for the host's name. Without
/// (verify-ca, and `require`/`prefer` when a root certificate is there), any
/// name will do.
#[derive(Debug)]
struct Checked {
    webpki: Arc<WebPkiServerVerifier>,
    /// The roots as given: a server may present one of them itself.
    trusted: Vec<CertificateDer<'static>>,
    check_name: bool,
}

impl ServerCertVerifier for Checked {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let result = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        match result {
            Ok(verified) => Ok(verified),
            // webpki checks the chain before the name: a name error means
            // the chain was good.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            // PostgreSQL's own recipe makes a self-signed server certificate
            // marked as a CA and has clients trust that very certificate;
            // webpki refuses a CA as the end entity, libpq takes it.
            Err(e)
                if self
                    .trusted
                    .iter()
                    .any(|t| t.as_ref() == end_entity.as_ref()) =>
            {
                if self.check_name {
                    let parsed =
                        rustls::server::ParsedCertificate::try_from(end_entity).map_err(|_| e)?;
                    rustls::client::verify_server_name(&parsed, server_name)?;
                }
                Ok(ServerCertVerified::assertion())
            }
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// `require` and `prefer` without a root certificate: encrypted, and the
/// handshake's signatures checked, but the certificate taken on trust, as
/// libpq does.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Whether a connection error came from the TLS layer, and what rustls said.
pub fn tls_failure(e: &tokio_postgres::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(inner) = s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(inner.to_string());
        }
        if let Some(inner) = s.downcast_ref::<rustls::Error>() {
            return Some(inner.to_string());
        }
        source = s.source();
    }
    let text = e.to_string();
    text.contains("TLS").then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::url::parse;

    #[test]
    fn unix_sockets_never_ask_for_tls() {
        let (config, tls) = parse("host=/var/run/postgresql sslmode=verify-full").unwrap();
        assert_eq!(
            tls.driver_mode(&config).unwrap(),
            tokio_postgres::config::SslMode::Disable
        );
        let (config, tls) = parse("postgresql://127.0.0.1/db?sslmode=verify-ca").unwrap();
        assert_eq!(
            tls.driver_mode(&config).unwrap(),
            tokio_postgres::config::SslMode::Require
        );
    }

    #[test]
    fn verify_modes_without_a_root_certificate_say_what_to_do() {
        let (config, tls) =
            parse("postgresql://h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem").unwrap();
        let err = tls.connector(&config).err().unwrap();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        let (config, tls) = parse("postgresql://h/db?sslmode=require").unwrap();
        assert!(tls.connector(&config).is_ok());
        // Over a socket TLS is not used, and its files are not looked at.
        let (config, tls) =
            parse("host=/run/postgresql sslmode=verify-full sslrootcert=/nonexistent/ca.pem")
                .unwrap();
        assert!(tls.connector(&config).is_ok());
    }

    #[test]
    fn a_hostaddr_is_tcp_and_system_roots_mean_verify_full() {
        let (config, tls) = parse("hostaddr=127.0.0.1 sslmode=require").unwrap();
        assert_eq!(
            tls.driver_mode(&config).unwrap(),
            tokio_postgres::config::SslMode::Require
        );
        let (_, tls) = parse("postgresql://h/db?sslrootcert=system").unwrap();
        assert_eq!(tls.mode().unwrap(), SslMode::VerifyFull);
        let (_, tls) = parse("postgresql://h/db?sslrootcert=system&sslmode=require").unwrap();
        let err = tls.mode().err().unwrap();
        assert!(err.to_string().contains("sslrootcert=system"), "{err}");
    }
}
