//! How a follower asks its primary: the one client configuration its
//! connections share (the stream, the snapshot's download, the acks): no
//! redirect followed, any status an answer, the token sent as a bearer
//! token. With the `tls` feature, an `https://` primary's certificate is
//! checked against the certificates of `replication.ca_file` alone, or,
//! without it, against the web PKI's roots (Mozilla's, built in): see
//! [`crate::tls_trust`].

use std::time::Duration;

use ureq::http::Response;
use ureq::{Body, RequestBuilder};

use crate::config;
use crate::tls_trust::CaFile;

/// How long to wait for the primary to accept a connection (and finish
/// the TLS handshake), and then for its answer to begin.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a follower needs to reach its primary, read from the config once
/// at the start.
pub struct PrimaryClient {
    token: Option<String>,
    /// `replication.ca_file`, named when the primary's certificate is
    /// refused.
    trust: CaFile,
    #[cfg(feature = "tls")]
    tls: ureq::tls::TlsConfig,
}

impl PrimaryClient {
    /// The client `config` describes; reads its token and CA files, and
    /// fails with a message for the user if one cannot be used.
    pub fn new(config: &config::Replication) -> Result<Self, String> {
        let token = config.follower_token().map_err(|err| err.to_string())?;
        #[cfg(feature = "tls")]
        let tls = {
            use ureq::tls::{RootCerts, TlsConfig};
            let certificates = config
                .primary_certificates()
                .map_err(|err| err.to_string())?;
            let roots = certificates.map_or(RootCerts::WebPki, RootCerts::from);
            TlsConfig::builder().root_certs(roots).build()
        };
        Ok(Self {
            token,
            trust: config.primary_trust(),
            #[cfg(feature = "tls")]
            tls,
        })
    }

    /// A client whose requests give up after `whole`, if given (a stream
    /// has no end, so it has none).
    pub fn agent(&self, whole: Option<Duration>) -> ureq::Agent {
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(CONNECT_TIMEOUT))
            .timeout_global(whole)
            .http_status_as_error(false)
            .max_redirects(0);
        #[cfg(feature = "tls")]
        let config = config.tls_config(self.tls.clone());
        config.build().into()
    }

    /// Sends `GET url` with the `query` pairs (percent-encoded) through
    /// `agent`, with the token.
    pub fn get(
        &self,
        agent: &ureq::Agent,
        url: &str,
        query: &[(&str, &str)],
    ) -> Result<Response<Body>, String> {
        let request = agent.get(url).query_pairs(query.iter().copied());
        let sent = self.authorized(request).call();
        sent.map_err(|err| self.unreachable(&err))
    }

    /// Sends `POST url` with an empty body through `agent`, with the token.
    pub fn post(&self, agent: &ureq::Agent, url: &str) -> Result<Response<Body>, String> {
        let sent = self.authorized(agent.post(url)).send_empty();
        sent.map_err(|err| self.unreachable(&err))
    }

    /// `request` with the token, if any.
    fn authorized<B>(&self, request: RequestBuilder<B>) -> RequestBuilder<B> {
        match &self.token {
            Some(token) => request.header("Authorization", format!("Bearer {token}")),
            None => request,
        }
    }

    /// Why the primary could not be asked, and what to do if it is its
    /// certificate (rustls's refusal reaches here inside an I/O error; its
    /// message names the certificate).
    fn unreachable(&self, err: &ureq::Error) -> String {
        let why = err.to_string();
        if !why.contains("certificate") {
            return format!("cannot reach the primary: {why}");
        }
        self.trust.refusal(&why)
    }
}
