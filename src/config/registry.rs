//! `kafka.schemaRegistry`: KaflowSQL's URL string, or a block with basic
//! auth, TLS, a timeout and the subject name strategy; resolved into a
//! [`RegistryConfig`] (secrets read) when the global config is loaded.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::security::Secret;
use super::HumanDuration;
use crate::registry::{RegistryConfig, SubjectStrategy};

/// `kafka.schemaRegistry` as written.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum RegistrySetting {
    /// `schemaRegistry: http://registry:8081` (KaflowSQL's form).
    Url(String),
    /// The block form.
    Block(RegistryBlock),
}

/// The block form of `kafka.schemaRegistry`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegistryBlock {
    /// `http://host:port` or `https://host:port`.
    pub url: String,
    /// Basic-auth user (Confluent Cloud: the API key).
    #[serde(default)]
    pub username: Option<String>,
    /// Basic-auth password (Confluent Cloud: the API secret): a value,
    /// `{ env: VAR }` or `{ file: PATH }`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// TLS files.
    #[serde(default)]
    pub tls: RegistryTls,
    /// Timeout of one request (default 10s).
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// Subject of the output value's schema: `TopicNameStrategy` (default,
    /// `<topic>-value`), `RecordNameStrategy`, `TopicRecordNameStrategy`.
    #[serde(default)]
    pub subject_name_strategy: SubjectStrategy,
}

/// TLS files of the registry connection.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegistryTls {
    /// CA certificate(s), PEM.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client certificate, PEM (mutual TLS).
    #[serde(default)]
    pub certificate: Option<PathBuf>,
    /// Its private key, PEM.
    #[serde(default)]
    pub key: Option<PathBuf>,
}

/// One problem found resolving the setting: the key's path, the message,
/// what to do.
pub(crate) type Problem = (String, String, String);

impl RegistrySetting {
    /// The client settings, the password read through `var`.
    ///
    /// Errors: every problem found (a URL that is not http(s), an unset
    /// password variable, a TLS file that does not exist, a password
    /// without a username), each with its key's path.
    pub(crate) fn resolve(
        &self,
        var: &dyn Fn(&str) -> Option<String>,
    ) -> Result<RegistryConfig, Vec<Problem>> {
        let base = "kafka.schemaRegistry";
        let block = match self {
            RegistrySetting::Url(url) => RegistryBlock {
                url: url.clone(),
                username: None,
                password: None,
                tls: RegistryTls::default(),
                timeout: None,
                subject_name_strategy: SubjectStrategy::default(),
            },
            RegistrySetting::Block(b) => b.clone(),
        };
        let mut problems = Vec::new();
        let url_key = match self {
            RegistrySetting::Url(_) => base.to_string(),
            RegistrySetting::Block(_) => format!("{base}.url"),
        };
        if !(block.url.starts_with("http://") || block.url.starts_with("https://")) {
            problems.push((
                url_key,
                format!("{base} `{}` is not an http:// or https:// URL", block.url),
                "write the registry's address, for example http://localhost:8081".to_string(),
            ));
        }
        let password = match &block.password {
            Some(secret) => match secret.resolve(var) {
                Ok(p) => Some(p),
                Err(why) => {
                    problems.push((
                        format!("{base}.password"),
                        format!("{base}.password cannot be read: {why}"),
                        "set the variable or mount the file, or write the value".to_string(),
                    ));
                    None
                }
            },
            None => None,
        };
        if block.password.is_some() && block.username.is_none() {
            problems.push((
                format!("{base}.password"),
                format!("{base}.password is set without a username"),
                "add username (basic auth needs both)".to_string(),
            ));
        }
        for (key, file) in [
            ("ca", &block.tls.ca),
            ("certificate", &block.tls.certificate),
            ("key", &block.tls.key),
        ] {
            if let Some(f) = file {
                if !f.is_file() {
                    problems.push((
                        format!("{base}.tls.{key}"),
                        format!("{base}.tls.{key}: `{}` is not a readable file", f.display()),
                        "give the path of a PEM file".to_string(),
                    ));
                }
            }
        }
        if block.tls.certificate.is_some() != block.tls.key.is_some() {
            problems.push((
                format!("{base}.tls"),
                format!("{base}.tls needs certificate and key together"),
                "give both (mutual TLS) or neither".to_string(),
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(RegistryConfig {
            url: block.url,
            username: block.username,
            password,
            ca: block.tls.ca,
            certificate: block.tls.certificate,
            key: block.tls.key,
            timeout: block.timeout.map_or(Duration::from_secs(10), |d| d.0),
            subject_strategy: block.subject_name_strategy,
        })
    }
}
