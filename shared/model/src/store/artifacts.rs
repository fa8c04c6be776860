//! Immutable model versions in object storage: `models/<model>/<version>/model.bin` and
//! `manifest.json`, addressed by URL (`file://`, `s3://bucket/prefix`, `memory://`).
//!
//! A version is written once and never changed (`PutMode::Create`); the manifest is written last,
//! so a version without a manifest is an interrupted write, never a published version. Reads
//! verify the bytes against the manifest's sha256 before anyone can load them.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload};

use crate::store::Pointer;
use crate::{Manifest, ModelError, ModelScorer};
use freshet::ids::ModelName;

/// Where model artifacts live: flattened into the settings of every program that reads or writes
/// them (train, drift, predict and the CLI), and of no other.
#[derive(Debug, Clone, clap::Args)]
pub struct ArtifactArgs {
    /// Object store for model artifacts: file://DIR, s3://BUCKET/PREFIX or memory://
    ///
    /// file:///abs/dir or file://rel/dir; s3://bucket/prefix, with endpoint, region and keys
    /// from the standard AWS_* variables (AWS_ENDPOINT_URL for MinIO or another S3-compatible
    /// server); memory:// for tests only
    #[arg(
        long = "object-store",
        env = "FRESHET_OBJECT_STORE",
        default_value = "file://.freshet/artifacts"
    )]
    pub url: String,
}

impl ArtifactArgs {
    /// Opens the store these settings name (see [`ArtifactStore::from_url`]).
    pub fn open(&self) -> Result<ArtifactStore, ArtifactError> {
        ArtifactStore::from_url(&self.url)
    }
}

/// Why the version a pointer names cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct VersionRefusal {
    /// The object store could not be reached: the same load may work later.
    pub transient: bool,
    pub reason: String,
}

/// Why an artifact could not be stored or fetched.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("object store URL {url:?} is not supported: {reason}")]
    BadUrl { url: String, reason: String },
    /// An `s3://` store with no source of credentials configured. object_store would otherwise
    /// fall back to the EC2 instance metadata endpoint, and a missing key would surface at first
    /// use as a connection error to 169.254.169.254.
    #[error(
        "no S3 credentials for {url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or \
         AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN, or AWS_CONTAINER_CREDENTIALS_RELATIVE_URI \
         (or _FULL_URI); on EC2, AWS_METADATA_ENDPOINT=http://169.254.169.254 uses the \
         instance's role, and AWS_SKIP_SIGNATURE=true reads a public bucket"
    )]
    NoCredentials { url: String },
    #[error("object store at {url} cannot be opened: {source}")]
    Open {
        url: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("model {model} version {version} is not in the object store ({path})")]
    Missing {
        model: String,
        version: u64,
        path: String,
    },
    #[error(
        "model {model} version {version} already exists with other contents; versions are immutable"
    )]
    VersionExists { model: String, version: u64 },
    #[error("manifest of model {model} version {version} is unreadable: {source}")]
    BadManifest {
        model: String,
        version: u64,
        source: serde_json::Error,
    },
    #[error("model {model} version {version} failed verification: {source}")]
    Verification {
        model: String,
        version: u64,
        source: ModelError,
    },
    #[error("object store {operation} {path}: {source}")]
    Store {
        operation: &'static str,
        path: String,
        source: object_store::Error,
    },
}

impl ArtifactError {
    /// Whether retrying the same call later may succeed (the store was unreachable), as opposed
    /// to a verdict about the artifact itself.
    pub fn is_transient(&self) -> bool {
        matches!(self, ArtifactError::Store { source, .. } if !matches!(source, object_store::Error::NotFound { .. }))
    }
}

/// What a follower of a pointer and a writer verifying a version read from the artifact store:
/// [`ArtifactStore`] (a `memory://` one in unit tests), or a wrapper of it that injects faults.
pub trait ArtifactReader: Send + Sync {
    /// Reads a version's manifest.
    fn manifest(
        &self,
        model: &ModelName,
        version: u64,
    ) -> impl Future<Output = Result<Manifest, ArtifactError>> + Send;

    /// Loads the version `pointer` names, ready to score (see [`ArtifactStore::load_pointed`]).
    fn load_pointed(
        &self,
        model: &ModelName,
        pointer: &Pointer,
    ) -> impl Future<Output = Result<(Manifest, ModelScorer), VersionRefusal>> + Send;
}

impl ArtifactReader for ArtifactStore {
    fn manifest(
        &self,
        model: &ModelName,
        version: u64,
    ) -> impl Future<Output = Result<Manifest, ArtifactError>> + Send {
        ArtifactStore::manifest(self, model, version)
    }

    fn load_pointed(
        &self,
        model: &ModelName,
        pointer: &Pointer,
    ) -> impl Future<Output = Result<(Manifest, ModelScorer), VersionRefusal>> + Send {
        ArtifactStore::load_pointed(self, model, pointer)
    }
}

/// The model artifact store.
#[derive(Clone)]
pub struct ArtifactStore {
    store: Arc<dyn ObjectStore>,
    url: String,
}

impl std::fmt::Debug for ArtifactStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactStore")
            .field("url", &self.url)
            .finish()
    }
}

/// Whether S3 settings name where credentials come from: keys, a web identity (EKS IRSA), a
/// container credentials endpoint (ECS, EKS Pod Identity), an instance metadata endpoint asked
/// for by name, or unsigned requests. The instance metadata endpoint is object_store's silent
/// last resort; freshet uses it only when asked, so forgotten keys read as forgotten keys.
fn names_credentials(builder: &AmazonS3Builder) -> bool {
    let set = |key: AmazonS3ConfigKey| {
        builder
            .get_config_value(&key)
            .is_some_and(|value| !value.trim().is_empty())
    };
    set(AmazonS3ConfigKey::AccessKeyId)
        || set(AmazonS3ConfigKey::SecretAccessKey)
        || (set(AmazonS3ConfigKey::WebIdentityTokenFile) && set(AmazonS3ConfigKey::RoleArn))
        || set(AmazonS3ConfigKey::ContainerCredentialsRelativeUri)
        || set(AmazonS3ConfigKey::ContainerCredentialsFullUri)
        || set(AmazonS3ConfigKey::MetadataEndpoint)
        || builder
            .get_config_value(&AmazonS3ConfigKey::SkipSignature)
            .is_some_and(|value| value.eq_ignore_ascii_case("true"))
}

/// Checks a version's bytes against its manifest's size and sha256.
fn verify(
    model: &str,
    version: u64,
    manifest: &Manifest,
    bytes: &[u8],
) -> Result<(), ArtifactError> {
    manifest
        .verify(bytes)
        .map_err(|source| ArtifactError::Verification {
            model: model.to_string(),
            version,
            source,
        })
}

impl ArtifactStore {
    /// Opens the store a URL names. `file://` paths may be relative to the working directory and
    /// are created if missing; `s3://` takes endpoint, region and keys from the AWS_* variables.
    pub fn from_url(url: &str) -> Result<ArtifactStore, ArtifactError> {
        let open_error = |source: object_store::Error| ArtifactError::Open {
            url: url.to_string(),
            source: Box::new(source),
        };
        let store: Arc<dyn ObjectStore> = if let Some(path) = url.strip_prefix("file://") {
            let dir = PathBuf::from(if path.is_empty() { "." } else { path });
            std::fs::create_dir_all(&dir).map_err(|source| ArtifactError::Open {
                url: url.to_string(),
                source: Box::new(source),
            })?;
            // A folder per version: without the cleanup, deleting a version's two files would
            // leave its folder behind, and retention would fill the disk with empty folders.
            Arc::new(
                LocalFileSystem::new_with_prefix(&dir)
                    .map_err(open_error)?
                    .with_automatic_cleanup(true),
            )
        } else if url.starts_with("memory://") {
            Arc::new(InMemory::new())
        } else if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(ArtifactError::BadUrl {
                    url: url.to_string(),
                    reason: "the bucket is missing (s3://bucket/prefix)".to_string(),
                });
            }
            let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
            if !names_credentials(&builder) {
                return Err(ArtifactError::NoCredentials {
                    url: url.to_string(),
                });
            }
            // MinIO and other local S3 servers speak plain HTTP; allow it when asked for by URL.
            let endpoint =
                std::env::var("AWS_ENDPOINT_URL").or_else(|_| std::env::var("AWS_ENDPOINT"));
            if endpoint.is_ok_and(|e| e.starts_with("http://")) {
                builder = builder.with_allow_http(true);
            }
            let s3 = builder.build().map_err(open_error)?;
            let prefix = prefix.trim_matches('/');
            if prefix.is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(PrefixStore::new(s3, prefix))
            }
        } else {
            return Err(ArtifactError::BadUrl {
                url: url.to_string(),
                reason: "use file://DIR, s3://BUCKET/PREFIX or memory://".to_string(),
            });
        };
        Ok(ArtifactStore {
            store,
            url: url.to_string(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn version_dir(model: &str, version: u64) -> Path {
        Path::from(format!("models/{model}/{version}"))
    }

    /// Writes a new version: the model bytes, then the manifest. Writing the same version with the
    /// same bytes again (a retry after a crash) succeeds; different bytes are refused.
    pub async fn put_version(
        &self,
        manifest: &Manifest,
        model_bytes: &[u8],
    ) -> Result<(), ArtifactError> {
        let dir = Self::version_dir(&manifest.model, manifest.version);
        let manifest_json = serde_json::to_vec_pretty(manifest)
            .expect("a manifest is plain data and always serialises");
        self.put_once(manifest, dir.clone().join("model.bin"), model_bytes)
            .await?;
        self.put_once(manifest, dir.join("manifest.json"), &manifest_json)
            .await
    }

    async fn put_once(
        &self,
        manifest: &Manifest,
        path: Path,
        bytes: &[u8],
    ) -> Result<(), ArtifactError> {
        let payload = PutPayload::from(Bytes::copy_from_slice(bytes));
        match self
            .store
            .put_opts(&path, payload, PutMode::Create.into())
            .await
        {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => {
                let existing = self.get_bytes("read back", &path).await?;
                if existing.as_ref() == bytes {
                    Ok(())
                } else {
                    Err(ArtifactError::VersionExists {
                        model: manifest.model.clone(),
                        version: manifest.version,
                    })
                }
            }
            Err(source) => Err(ArtifactError::Store {
                operation: "put",
                path: path.to_string(),
                source,
            }),
        }
    }

    async fn get_bytes(
        &self,
        operation: &'static str,
        path: &Path,
    ) -> Result<Bytes, ArtifactError> {
        let store_error = |source| ArtifactError::Store {
            operation,
            path: path.to_string(),
            source,
        };
        self.store
            .get(path)
            .await
            .map_err(store_error)?
            .bytes()
            .await
            .map_err(store_error)
    }

    /// Reads one file of a version; a missing file means a missing version.
    async fn version_file(
        &self,
        model: &ModelName,
        version: u64,
        file: &str,
    ) -> Result<Bytes, ArtifactError> {
        let path = Self::version_dir(model.as_str(), version).join(file);
        match self.get_bytes("get", &path).await {
            Err(ArtifactError::Store {
                source: object_store::Error::NotFound { .. },
                ..
            }) => Err(ArtifactError::Missing {
                model: model.to_string(),
                version,
                path: path.to_string(),
            }),
            other => other,
        }
    }

    /// Reads a version's manifest.
    pub async fn manifest(
        &self,
        model: &ModelName,
        version: u64,
    ) -> Result<Manifest, ArtifactError> {
        let bytes = self.version_file(model, version, "manifest.json").await?;
        serde_json::from_slice(&bytes).map_err(|source| ArtifactError::BadManifest {
            model: model.to_string(),
            version,
            source,
        })
    }

    /// Reads a version and verifies its bytes against the manifest's size and sha256.
    pub async fn load(
        &self,
        model: &ModelName,
        version: u64,
    ) -> Result<(Manifest, Bytes), ArtifactError> {
        let (manifest, bytes) = self.read_unverified(model, version).await?;
        verify(model.as_str(), version, &manifest, &bytes)?;
        Ok((manifest, bytes))
    }

    /// A version's manifest and bytes, not yet checked against each other.
    async fn read_unverified(
        &self,
        model: &ModelName,
        version: u64,
    ) -> Result<(Manifest, Bytes), ArtifactError> {
        let manifest = self.manifest(model, version).await?;
        let bytes = self.version_file(model, version, "model.bin").await?;
        Ok((manifest, bytes))
    }

    /// Deletes a version: the manifest first, so that [`versions`](Self::versions) stops listing
    /// it before its bytes go. Deleting a version already gone succeeds. On `file://` the
    /// version's folder goes with its last file (object stores have no folders to leave).
    pub async fn delete_version(
        &self,
        model: &ModelName,
        version: u64,
    ) -> Result<(), ArtifactError> {
        let dir = Self::version_dir(model.as_str(), version);
        for file in ["manifest.json", "model.bin"] {
            let path = dir.clone().join(file);
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(source) => {
                    return Err(ArtifactError::Store {
                        operation: "delete",
                        path: path.to_string(),
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Loads the version `pointer` names, ready to score: the bytes verified against the
    /// manifest, the manifest against the pointer's sha256, the model decoded, its width
    /// checked against the manifest's schema, and one test inference run. What follows a
    /// pointer (predict, drift) calls this and adds its own checks.
    pub async fn load_pointed(
        &self,
        model: &ModelName,
        pointer: &Pointer,
    ) -> Result<(Manifest, ModelScorer), VersionRefusal> {
        let verdict = |reason: String| VersionRefusal {
            transient: false,
            reason,
        };
        let transient = |e: ArtifactError| VersionRefusal {
            transient: e.is_transient(),
            reason: e.to_string(),
        };
        let (manifest, bytes) = self
            .read_unverified(model, pointer.version)
            .await
            .map_err(transient)?;
        if !manifest.sha256.eq_ignore_ascii_case(&pointer.sha256) {
            return Err(verdict(format!(
                "pointer names sha256 {} but the manifest says {}",
                pointer.sha256, manifest.sha256
            )));
        }
        let (model, version) = (model.to_string(), pointer.version);
        let ready = move || {
            verify(&model, version, &manifest, &bytes).map_err(|e| verdict(e.to_string()))?;
            let scorer = ModelScorer::from_bytes(&bytes)
                .map_err(|e| verdict(format!("undecodable model bytes: {e}")))?;
            if scorer.n_features() != manifest.schema.n_features() {
                return Err(verdict(format!(
                    "manifest lists {} features but the model takes {}",
                    manifest.schema.n_features(),
                    scorer.n_features()
                )));
            }
            scorer
                .score(&vec![0.0; scorer.n_features()])
                .map_err(|e| verdict(format!("test inference failed: {e}")))?;
            Ok((manifest, scorer))
        };
        // Hashing, decoding and the test inference run on the blocking pool, even for a small
        // model (a millisecond with the tensor set-up): the OS time-slices that thread with the
        // async workers, so a predictor swapping versions in does not hold up the requests they
        // serve (the predictor benchmark: p99 while swapping 1.26× p99 without, with all of it
        // inline for artifacts under 64 KiB).
        tokio::task::spawn_blocking(ready)
            .await
            .map_err(|e| VersionRefusal {
                transient: true,
                reason: format!("loading was interrupted: {e}"),
            })?
    }

    /// Every version of a model that has a manifest, oldest first.
    pub async fn versions(&self, model: &ModelName) -> Result<Vec<u64>, ArtifactError> {
        let prefix = Path::from(format!("models/{model}"));
        let objects: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|source| list_error(&prefix, source))?;
        let mut versions: Vec<u64> = objects
            .iter()
            .filter(|meta| meta.location.filename() == Some("manifest.json"))
            .filter_map(|meta| meta.location.parts().nth(2)?.as_ref().parse().ok())
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    /// Every version of a model that has a manifest, oldest first, with when its manifest was
    /// written (the version's last write): what retention by age and a rollback to a time go by,
    /// read from the listing alone.
    pub async fn versions_dated(
        &self,
        model: &ModelName,
    ) -> Result<Vec<(u64, chrono::DateTime<chrono::Utc>)>, ArtifactError> {
        let prefix = Path::from(format!("models/{model}"));
        let objects: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|source| list_error(&prefix, source))?;
        let mut versions: Vec<(u64, chrono::DateTime<chrono::Utc>)> = objects
            .iter()
            .filter(|meta| meta.location.filename() == Some("manifest.json"))
            .filter_map(|meta| {
                let version = meta.location.parts().nth(2)?.as_ref().parse().ok()?;
                Some((version, meta.last_modified))
            })
            .collect();
        versions.sort_unstable_by_key(|(version, _)| *version);
        Ok(versions)
    }

    /// Every model with at least one object in the store.
    pub async fn models(&self) -> Result<Vec<String>, ArtifactError> {
        let prefix = Path::from("models");
        let listing = self
            .store
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|source| list_error(&prefix, source))?;
        let mut models: Vec<String> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        models.sort();
        Ok(models)
    }

    /// Direct access for tools that must damage an artifact on purpose (tests of refusal).
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }
}

fn list_error(prefix: &Path, source: object_store::Error) -> ArtifactError {
    ArtifactError::Store {
        operation: "list",
        path: prefix.to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder(settings: &[(AmazonS3ConfigKey, &str)]) -> AmazonS3Builder {
        settings
            .iter()
            .fold(AmazonS3Builder::new(), |builder, (key, value)| {
                builder.with_config(*key, *value)
            })
    }

    #[test]
    fn s3_settings_without_a_credential_source_are_told_apart() {
        use AmazonS3ConfigKey as Key;
        assert!(!names_credentials(&builder(&[])));
        assert!(!names_credentials(&builder(&[
            (Key::Endpoint, "http://127.0.0.1:9000"),
            (Key::Region, "us-east-1"),
            (Key::AccessKeyId, " "),
            (Key::SkipSignature, "false"),
            // A token file without the role to assume is no source either.
            (Key::WebIdentityTokenFile, "/var/run/token"),
        ])));
        for source in [
            vec![(Key::AccessKeyId, "id"), (Key::SecretAccessKey, "secret")],
            vec![
                (Key::WebIdentityTokenFile, "/var/run/token"),
                (Key::RoleArn, "arn:aws:iam::1:role/r"),
            ],
            vec![(Key::ContainerCredentialsRelativeUri, "/v2/credentials")],
            vec![(Key::MetadataEndpoint, "http://169.254.169.254")],
            vec![(Key::SkipSignature, "true")],
        ] {
            assert!(names_credentials(&builder(&source)), "{source:?}");
        }
    }
}
