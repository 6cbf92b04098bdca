//! TLS termination (`server.tls`, `admin.tls`): PEM certificate chain and key, optional client
//! CA for mTLS, TLS 1.2 and 1.3 with the ring provider, ALPN `h2` and `http/1.1`. The rustls
//! config sits behind an `ArcSwap`: every new connection takes the current one, so a reload or
//! SIGHUP swaps certificates without touching open connections, and a certificate that fails
//! to load leaves the old one serving.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::schema::TlsConfig;

/// Longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads the files and builds a rustls server config. `what` prefixes errors
/// (e.g. `server.tls`); `h2` offers HTTP/2 in ALPN besides HTTP/1.1.
pub fn load_config(files: &TlsConfig, what: &str, h2: bool) -> Result<ServerConfig, String> {
    if files.cert_file.trim().is_empty() || files.key_file.trim().is_empty() {
        return Err(format!("{what}: cert_file and key_file are required"));
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert_file)
        .map_err(|e| format!("{what}.cert_file {:?}: {e}", files.cert_file))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what}.cert_file {:?}: {e}", files.cert_file))?;
    if certs.is_empty() {
        return Err(format!(
            "{what}.cert_file {:?}: no PEM certificate found",
            files.cert_file
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key_file).map_err(|e| {
        format!(
            "{what}.key_file {:?}: no usable PEM private key ({e})",
            files.key_file
        )
    })?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("{what}: {e}"))?;
    let builder = match &files.client_ca_file {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            let cas = CertificateDer::pem_file_iter(ca)
                .map_err(|e| format!("{what}.client_ca_file {ca:?}: {e}"))?;
            for c in cas {
                let c = c.map_err(|e| format!("{what}.client_ca_file {ca:?}: {e}"))?;
                roots
                    .add(c)
                    .map_err(|e| format!("{what}.client_ca_file {ca:?}: {e}"))?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "{what}.client_ca_file {ca:?}: no PEM certificate found"
                ));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| format!("{what}.client_ca_file {ca:?}: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "{what}: cannot use cert_file {:?} with key_file {:?}: {e}",
            files.cert_file, files.key_file
        )
    })?;
    config.alpn_protocols = if h2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(config)
}

/// A listener's TLS settings, swappable at run time.
pub struct ReloadableTls {
    what: &'static str,
    h2: bool,
    files: TlsConfig,
    current: ArcSwap<ServerConfig>,
}

impl std::fmt::Debug for ReloadableTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadableTls")
            .field("what", &self.what)
            .field("cert_file", &self.files.cert_file)
            .field("client_ca_file", &self.files.client_ca_file)
            .finish_non_exhaustive()
    }
}

impl ReloadableTls {
    /// Loads a listener's certificates; `h2`: the listener speaks HTTP/2 too.
    pub fn load(files: &TlsConfig, what: &'static str, h2: bool) -> Result<Self, String> {
        let config = load_config(files, what, h2)?;
        Ok(Self {
            what,
            h2,
            files: files.clone(),
            current: ArcSwap::from_pointee(config),
        })
    }

    /// Takes over `newer`'s certificates for connections accepted from now on.
    pub fn replace_with(&self, newer: &ReloadableTls) {
        self.current.store(newer.current.load_full());
    }

    /// Re-reads this listener's files; on error the running certificate stays.
    pub fn reload(&self) -> Result<(), String> {
        let config = load_config(&self.files, self.what, self.h2)?;
        self.current.store(Arc::new(config));
        Ok(())
    }

    /// mTLS is on.
    pub fn verifies_clients(&self) -> bool {
        self.files.client_ca_file.is_some()
    }

    /// Runs the handshake on `io` with the current certificates (bounded in time).
    pub async fn accept<IO>(&self, io: IO) -> Result<TlsStream<IO>, String>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = TlsAcceptor::from(self.current.load_full());
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("TLS handshake timed out".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_bad_files_are_clear_errors() {
        let none = TlsConfig::default();
        assert!(load_config(&none, "server.tls", true)
            .unwrap_err()
            .contains("required"));
        let dir = std::env::temp_dir().join(format!("olla-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let files = TlsConfig {
            cert_file: junk.display().to_string(),
            key_file: junk.display().to_string(),
            client_ca_file: None,
        };
        let e = load_config(&files, "server.tls", true).unwrap_err();
        assert!(e.contains("server.tls.cert_file"), "{e}");
        let missing = TlsConfig {
            cert_file: dir.join("nope.pem").display().to_string(),
            ..files
        };
        assert!(load_config(&missing, "server.tls", true)
            .unwrap_err()
            .contains("nope.pem"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
