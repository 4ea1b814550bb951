//! TLS to PostgreSQL with rustls (its ring provider, as etcd-client's), with libpq's `sslmode`
//! meanings: `prefer` and `require` encrypt without verifying the server's certificate,
//! `verify-ca` verifies it against `postgres_ca`, `verify-full` also checks the host name.

use std::{path::Path, sync::Arc};

use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject as _},
};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{PostgresConfig, PostgresTls};

/// A TLS file that cannot be used, naming its key and path.
#[derive(Debug, thiserror::Error)]
#[error("cannot use {key} {path}: {cause}")]
pub struct TlsFileError {
    key: &'static str,
    path: String,
    cause: String,
}

fn file_error(key: &'static str, path: &Path) -> impl FnOnce(String) -> TlsFileError {
    let path = path.display().to_string();
    move |cause| TlsFileError { key, path, cause }
}

/// The connector of `config`'s `sslmode`, `postgres_ca` and client certificate.
pub fn connector(config: &PostgresConfig) -> Result<MakeRustlsConnect, TlsFileError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    let verifier: Arc<dyn ServerCertVerifier> = match &config.tls {
        PostgresTls::Disable | PostgresTls::Prefer | PostgresTls::Require => Arc::new(Unverified {
            webpki: None,
            algorithms,
        }),
        PostgresTls::Verify { ca, host_name } => {
            let error = file_error("postgres_ca", ca);
            let mut roots = rustls::RootCertStore::empty();
            let certificates = CertificateDer::pem_file_iter(ca)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|cause| error(cause.to_string()))?;
            let (added, _) = roots.add_parsable_certificates(certificates);
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .build()
                    .map_err(|cause| {
                        file_error("postgres_ca", ca)(format!(
                            "{cause} ({added} certificates read)"
                        ))
                    })?;
            if *host_name {
                webpki
            } else {
                Arc::new(Unverified {
                    webpki: Some(webpki),
                    algorithms,
                })
            }
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match &config.identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|cause| file_error("postgres_cert", cert)(cause.to_string()))?;
            let private = PrivateKeyDer::from_pem_file(key)
                .map_err(|cause| file_error("postgres_key", key)(cause.to_string()))?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|cause| file_error("postgres_key", key)(cause.to_string()))?
        }
    };
    Ok(MakeRustlsConnect::new(config))
}

/// libpq's weaker modes: `require` accepts any certificate (`webpki` absent), `verify-ca` one
/// of the CA for any host name. Either still checks that the server holds the certificate's key.
#[derive(Debug)]
struct Unverified {
    webpki: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.webpki else {
            return Ok(ServerCertVerified::assertion());
        };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, signature, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, signature, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
