//! HTTPS for a function's HTTP server, with client certificates as credentials (mutual TLS).
//!
//! With a client CA, the handshake asks for a certificate but does not require one, so probes
//! and token-bearing callers still connect; a certificate that is presented must chain to the
//! CA, or the handshake fails and no request is read. A verified certificate names its caller by
//! its subject's common name (for the rate per caller and the logs).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, ServerConnection, WebPkiClientVerifier};
use sha2::{Digest, Sha256};

/// Why the TLS settings were refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} from {path}: {source}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no {what}")]
    Missing { what: &'static str, path: PathBuf },
    #[error("{what}: {source}")]
    Rustls {
        what: &'static str,
        source: rustls::Error,
    },
    #[error("the client CA {path} is not usable: {detail}")]
    ClientCa { path: PathBuf, detail: String },
}

/// The server's configuration: its certificate and key, and the CA of the client certificates
/// it accepts, if any.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    // The process has two rustls crypto providers compiled in; pick the one it uses everywhere.
    crate::connect::choose_tls_provider();
    let chain = certificates(cert, "a certificate")?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Pem {
        what: "a private key",
        path: key.to_path_buf(),
        source,
    })?;
    let builder = ServerConfig::builder();
    let builder = match client_ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for ca in certificates(path, "a CA certificate")? {
                roots.add(ca).map_err(|err| TlsError::ClientCa {
                    path: path.to_path_buf(),
                    detail: err.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                .allow_unauthenticated()
                .build()
                .map_err(|err| TlsError::ClientCa {
                    path: path.to_path_buf(),
                    detail: err.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Rustls {
            what: "the server certificate and key do not go together",
            source,
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn certificates(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |source| TlsError::Pem {
        what,
        path: path.to_path_buf(),
        source,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if chain.is_empty() {
        return Err(TlsError::Missing {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(chain)
}

/// The caller a connection's verified client certificate names: its subject's common name, or
/// a short digest of its subject when it has none. `None` without a client certificate.
pub fn client_caller(connection: &ServerConnection) -> Option<Arc<str>> {
    let certificate = connection.peer_certificates()?.first()?;
    let parsed = webpki::EndEntityCert::try_from(certificate).ok()?;
    let subject = parsed.subject();
    let name = common_name(subject)
        .map(|cn| {
            cn.chars()
                .filter(|c| !c.is_control())
                .take(64)
                .collect::<String>()
        })
        .filter(|cn| !cn.is_empty())
        .unwrap_or_else(|| format!("subject-{}", hex::encode(&Sha256::digest(subject)[..4])));
    Some(format!("cert:{name}").into())
}

/// The first common name (OID 2.5.4.3) in a DER `RDNSequence`'s contents, as text.
fn common_name(mut rdns: &[u8]) -> Option<String> {
    const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
    while !rdns.is_empty() {
        let (tag, set, rest) = der_item(rdns)?;
        rdns = rest;
        if tag != 0x31 {
            return None;
        }
        let mut attributes = set;
        while !attributes.is_empty() {
            let (tag, attribute, rest) = der_item(attributes)?;
            attributes = rest;
            if tag != 0x30 {
                return None;
            }
            let (oid_tag, oid, value) = der_item(attribute)?;
            if oid_tag != 0x06 || oid != COMMON_NAME {
                continue;
            }
            let (value_tag, text, _) = der_item(value)?;
            // UTF8String, PrintableString, IA5String.
            if matches!(value_tag, 0x0c | 0x13 | 0x16) {
                return String::from_utf8(text.to_vec()).ok();
            }
        }
    }
    None
}

/// Splits one DER item (tag, contents, what follows) off `input`; `None` if it is not one.
fn der_item(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let octets = usize::from(first & 0x7f);
        if octets == 0 || octets > 4 || rest.len() < octets {
            return None;
        }
        let len = rest[..octets]
            .iter()
            .fold(0usize, |len, &b| (len << 8) | usize::from(b));
        (len, &rest[octets..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `SET { SEQUENCE { OID, value } }` for one attribute.
    fn rdn(oid: &[u8], tag: u8, value: &[u8]) -> Vec<u8> {
        let mut attribute = vec![0x06, oid.len() as u8];
        attribute.extend_from_slice(oid);
        attribute.extend_from_slice(&[tag, value.len() as u8]);
        attribute.extend_from_slice(value);
        let mut sequence = vec![0x30, attribute.len() as u8];
        sequence.extend(attribute);
        let mut set = vec![0x31, sequence.len() as u8];
        set.extend(sequence);
        set
    }

    #[test]
    fn reads_the_common_name_of_a_subject() {
        let org = rdn(&[0x55, 0x04, 0x0a], 0x0c, b"bookshop");
        let cn = rdn(&[0x55, 0x04, 0x03], 0x13, b"frontend");
        let subject = [org.clone(), cn].concat();
        assert_eq!(common_name(&subject).as_deref(), Some("frontend"));
        assert_eq!(common_name(&org), None);
        assert_eq!(common_name(&[]), None);
        // Truncated or mis-tagged input is no name, never a panic.
        for cut in 0..subject.len() {
            let _ = common_name(&subject[..cut]);
        }
        assert_eq!(common_name(&[0x30, 0x00]), None);
    }

    #[test]
    fn reads_long_form_lengths() {
        let long = vec![b'a'; 200];
        let mut item = vec![0x04, 0x81, 200];
        item.extend_from_slice(&long);
        item.push(0xff);
        let (tag, contents, rest) = der_item(&item).unwrap();
        assert_eq!((tag, contents.len(), rest), (0x04, 200, &[0xff][..]));
        assert_eq!(der_item(&[0x04, 0x81]), None);
        assert_eq!(der_item(&[0x04, 0x80]), None);
        assert_eq!(der_item(&[0x04, 0x05, 1, 2]), None);
    }
}
