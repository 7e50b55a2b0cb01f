//! TLS configuration from PEM files, for the DICOM TLS listeners
//! (PS3.15 B.1/B.9), outgoing DICOM associations and syslog over TLS.
//!
//! rustls with the ring provider (the one sqlx's TLS brings): TLS 1.2 and
//! 1.3 only, rustls's default cipher suites, all AEAD with forward
//! secrecy, which is what BCP 195 (RFC 9325) recommends.
//!
//! [`ServerFiles`] re-reads its certificate, key and client CA bundle when
//! one of the files changes (its modification time or size, looked at
//! most once a second, at a handshake), so certificates are renewed
//! without a restart; a set that does not load keeps the previous one in
//! force and is logged.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tracing::{info, warn};

use crate::dicom::transport::ServerTls;

/// How often the files' metadata is looked at, at most.
const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("cannot read {what} from {path}: {reason}")]
    File {
        /// Which file (certificate, private key, CA bundle).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// rustls refused the combination (a key that does not match the
    /// certificate, an unusable CA).
    #[error("TLS configuration refused: {0}")]
    Config(String),
}

/// The provider: ring, TLS 1.2 and 1.3 (deprecated upstream for lacking
/// post-quantum key exchange, which only aws-lc-rs has: a second crypto
/// library we do not take on).
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let error = |reason: String| TlsError::File {
        what: "certificates",
        path: path.to_path_buf(),
        reason,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(e.to_string()))?;
    if certificates.is_empty() {
        return Err(error("no CERTIFICATE block".into()));
    }
    Ok(certificates)
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(path)? {
        roots.add(certificate).map_err(|e| TlsError::File {
            what: "CA bundle",
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// A client configuration trusting the CAs of the PEM bundle at `ca`
/// (the server's certificate is verified, its name against the host
/// connected to).
pub fn client_config(ca: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots(ca)?)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A server's PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFiles {
    /// Certificate chain, leaf first.
    pub certificate: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
    /// CA bundle client certificates must chain to; None: no client
    /// certificate asked for.
    pub client_ca: Option<PathBuf>,
}

impl ServerFiles {
    /// The configuration the files describe now.
    pub fn load(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let chain = certificates(&self.certificate)?;
        let key = PrivateKeyDer::from_pem_file(&self.private_key).map_err(|e| TlsError::File {
            what: "private key",
            path: self.private_key.clone(),
            reason: e.to_string(),
        })?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                        .build()
                        .map_err(|e| TlsError::Config(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(Arc::new(config))
    }

    fn stamps(&self) -> Vec<Option<(SystemTime, u64)>> {
        std::iter::once(&self.certificate)
            .chain(std::iter::once(&self.private_key))
            .chain(self.client_ca.iter())
            .map(|path| {
                std::fs::metadata(path)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len())))
            })
            .collect()
    }
}

/// A server configuration that follows its files (see the module).
#[derive(Debug)]
pub struct ReloadingServer {
    files: ServerFiles,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    config: Arc<ServerConfig>,
    stamps: Vec<Option<(SystemTime, u64)>>,
    checked: Instant,
}

impl ReloadingServer {
    /// Loads the files (an error when they do not load now).
    pub fn new(files: ServerFiles) -> Result<ReloadingServer, TlsError> {
        let stamps = files.stamps();
        let config = files.load()?;
        Ok(ReloadingServer {
            files,
            state: Mutex::new(Loaded {
                config,
                stamps,
                checked: Instant::now(),
            }),
        })
    }
}

impl ServerTls for ReloadingServer {
    fn server_config(&self) -> Arc<ServerConfig> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.checked.elapsed() >= RECHECK_EVERY {
            state.checked = Instant::now();
            let stamps = self.files.stamps();
            if stamps != state.stamps {
                state.stamps = stamps;
                match self.files.load() {
                    Ok(config) => {
                        info!(certificate = %self.files.certificate.display(), "TLS certificates reloaded");
                        state.config = config;
                    }
                    Err(error) => warn!(
                        error = %crate::model::error_chain(&error),
                        "TLS files changed but do not load: the previous certificates stay in force"
                    ),
                }
            }
        }
        state.config.clone()
    }
}
