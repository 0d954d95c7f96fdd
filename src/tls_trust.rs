//! Whom this node's TLS clients trust: the certificates of a `ca_file`
//! setting (PEM) alone, or, without it, the web PKI's roots (Mozilla's,
//! built in); and what to tell the user when a server's certificate is
//! refused. Shared by the follower's link to an `https://` primary
//! (`replication.ca_file`) and the MQTT bridge's `mqtts://` link
//! (`mqtt.ca_file`), so both read, check and explain the file alike.

use std::path::PathBuf;

#[cfg(feature = "tls")]
use rustls::pki_types::CertificateDer;

/// A TLS client's `ca_file` setting, and the words its messages use.
#[derive(Debug, Clone)]
pub struct CaFile {
    /// The setting's name, as the user writes it (`replication.ca_file`).
    pub setting: &'static str,
    /// The server whose certificate it checks (`primary`, `broker`).
    pub server: &'static str,
    /// The file; `None`: the web PKI's roots are trusted.
    pub path: Option<PathBuf>,
}

impl CaFile {
    /// The certificates in the file (PEM), which alone are trusted to sign
    /// the server's certificate; `None` if no file is set. Fails, naming
    /// the setting and the file, if it cannot be read or holds no
    /// certificate.
    #[cfg(feature = "tls")]
    pub fn certificates(&self) -> Result<Option<Vec<CertificateDer<'static>>>, String> {
        use rustls::pki_types::pem::{PemObject, SectionKind};
        let Some(path) = &self.path else {
            return Ok(None);
        };
        let pem = std::fs::read(path).map_err(|err| self.cannot_use(path, &err.to_string()))?;
        let (mut certificates, mut keys) = (Vec::new(), 0);
        for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(&pem) {
            let (kind, der) =
                item.map_err(|err| self.cannot_use(path, &format!("it is not valid PEM ({err})")))?;
            match kind {
                SectionKind::Certificate => certificates.push(CertificateDer::from(der)),
                SectionKind::PrivateKey
                | SectionKind::RsaPrivateKey
                | SectionKind::EcPrivateKey => keys += 1,
                _ => {}
            }
        }
        match (certificates.is_empty(), keys) {
            (true, 0) => Err(self.cannot_use(path, "it holds no certificate")),
            (true, _) => Err(self.cannot_use(
                path,
                &format!(
                    "it holds a private key and no certificate (a client needs the {}'s \
                     certificate, never its key)",
                    self.server
                ),
            )),
            (false, _) => Ok(Some(certificates)),
        }
    }

    /// The roots a rustls client trusts: the file's certificates, or the
    /// web PKI's roots without one. Fails as
    /// [`certificates`](Self::certificates) does, or if a certificate in
    /// the file is not one rustls can read.
    #[cfg(feature = "tls")]
    pub fn root_store(&self) -> Result<rustls::RootCertStore, String> {
        let (Some(path), Some(certificates)) = (&self.path, self.certificates()?) else {
            return Ok(rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            });
        };
        let mut roots = rustls::RootCertStore::empty();
        for certificate in certificates {
            roots.add(certificate).map_err(|err| {
                self.cannot_use(path, &format!("a certificate in it is malformed ({err})"))
            })?;
        }
        Ok(roots)
    }

    /// Why the file at `path` cannot be used, and what it must hold.
    #[cfg(feature = "tls")]
    fn cannot_use(&self, path: &std::path::Path, why: &str) -> String {
        format!(
            "{} {}: {why}; it must hold, in PEM (-----BEGIN CERTIFICATE-----), the certificate \
             of the CA that signed the {server}'s certificate, or that certificate itself if it \
             is self-signed",
            self.setting,
            path.display(),
            server = self.server,
        )
    }

    /// Why the server's certificate was refused (`why`: rustls's words),
    /// and what to do about it.
    pub fn refusal(&self, why: &str) -> String {
        let (setting, server) = (self.setting, self.server);
        if why.contains("CaUsedAsEndEntity") {
            // Trusting it would not help: a CA's certificate never serves.
            return format!(
                "the {server}'s TLS certificate was refused ({why}): it is a CA's certificate \
                 (basicConstraints CA:TRUE, which `openssl req -x509` sets unless told \
                 otherwise), and TLS takes none as a server's own; give the {server} a \
                 certificate signed by that CA, or a self-signed one made with `-addext \
                 basicConstraints=critical,CA:FALSE`"
            );
        }
        match &self.path {
            Some(path) => format!(
                "the {server}'s TLS certificate was refused ({why}): only the certificates in \
                 {setting} {} are trusted; put there the certificate of the CA that signed it, \
                 or the {server}'s own if it is self-signed",
                path.display()
            ),
            None => format!(
                "the {server}'s TLS certificate was refused ({why}): without {setting}, only \
                 certificates signed by a public CA are trusted; if it is self-signed or signed \
                 by your own CA, name that certificate in {setting}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker_trust(path: Option<PathBuf>) -> CaFile {
        CaFile {
            setting: "mqtt.ca_file",
            server: "broker",
            path,
        }
    }

    #[test]
    fn a_refusal_says_what_is_trusted_and_what_to_do() {
        let why = "invalid peer certificate: UnknownIssuer";
        let text = broker_trust(Some("/etc/lucid/ca.pem".into())).refusal(why);
        assert_eq!(
            text,
            "the broker's TLS certificate was refused (invalid peer certificate: \
             UnknownIssuer): only the certificates in mqtt.ca_file /etc/lucid/ca.pem are \
             trusted; put there the certificate of the CA that signed it, or the broker's own \
             if it is self-signed"
        );
        let text = broker_trust(None).refusal(why);
        assert!(text.starts_with("the broker's TLS certificate was refused (invalid"));
        assert!(text.contains("without mqtt.ca_file, only certificates signed by a public CA"));
        let why = "invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))";
        let text = broker_trust(Some("ca.pem".into())).refusal(why);
        assert!(
            text.contains("CaUsedAsEndEntity))): it is a CA's certificate"),
            "{text}"
        );
        assert!(
            text.contains("basicConstraints=critical,CA:FALSE"),
            "{text}"
        );
    }

    #[cfg(feature = "tls")]
    #[test]
    fn the_roots_are_the_file_s_certificates_or_the_web_pki_s() {
        let web = broker_trust(None).root_store().unwrap();
        assert_eq!(web.len(), webpki_roots::TLS_SERVER_ROOTS.len());

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.pem");
        let cert = rcgen::generate_simple_self_signed(vec!["broker".to_string()])
            .unwrap()
            .cert;
        std::fs::write(&file, cert.pem()).unwrap();
        assert_eq!(
            broker_trust(Some(file.clone())).root_store().unwrap().len(),
            1
        );

        // Good PEM, but not a certificate inside.
        std::fs::write(
            &file,
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = broker_trust(Some(file.clone())).root_store().unwrap_err();
        assert!(err.starts_with("mqtt.ca_file "), "{err}");
        assert!(err.contains(file.to_str().unwrap()), "{err}");
        assert!(err.contains("a certificate in it is malformed"), "{err}");
        assert!(err.contains("signed the broker's certificate"), "{err}");
    }
}
