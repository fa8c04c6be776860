//! Bearer tokens: read from a file (one per line) or a directory (one per file, as Kubernetes
//! mounts a Secret), held as SHA-256 digests, compared in constant time, and re-read on a timer.
//!
//! A token is compared by its digest, so every comparison is over 32 bytes whatever the token's
//! length, and with [`subtle`]'s constant-time equality against every token held (no early
//! exit): how long a check takes says nothing about how much of a token was right.
//!
//! Re-reading is by polling, not by file-change notification: Kubernetes updates a mounted Secret
//! by swapping a symbolic link to a new directory, which notification APIs report unevenly, while
//! a read every few seconds of a few small files costs nothing. A token removed from the source
//! stops working at the next read. A source that cannot be read, or holds no valid token, admits
//! nobody until it can (fail closed); at start-up it is an error.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::shutdown::Shutdown;

/// Shortest token accepted: anything shorter is too easy to guess to be a secret.
pub const MIN_TOKEN_LEN: usize = 16;

/// Why a token source was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no token: nobody could call")]
    Empty { path: PathBuf },
    #[error(
        "{path}{line}: not a token: a token is at least {MIN_TOKEN_LEN} characters of A-Z a-z 0-9 \
         - . _ ~ + / (then =), with nothing else on its line"
    )]
    Invalid { path: PathBuf, line: String },
}

/// One accepted token: whom it names, and its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    caller: Arc<str>,
    digest: [u8; 32],
}

/// The tokens read from one source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenSet {
    entries: Vec<Entry>,
}

impl TokenSet {
    /// Reads `path`: a directory (each visible regular file holds one token, and its name names
    /// the caller) or a file (one token per line; `#` comments and blank lines skipped; a caller
    /// is named by a short digest of its token).
    pub fn read(path: &Path) -> Result<TokenSet, TokenError> {
        let read_error = |source| TokenError::Read {
            path: path.to_path_buf(),
            source,
        };
        let metadata = std::fs::metadata(path).map_err(read_error)?;
        let mut entries = Vec::new();
        if metadata.is_dir() {
            for dirent in std::fs::read_dir(path).map_err(read_error)? {
                let dirent = dirent.map_err(read_error)?;
                let name = dirent.file_name().to_string_lossy().into_owned();
                // Kubernetes keeps its bookkeeping in `..data` and `..<timestamp>`.
                if name.starts_with('.') {
                    continue;
                }
                let file = dirent.path();
                let text = match std::fs::read_to_string(&file) {
                    Ok(text) => text,
                    // Removed between the listing and the read: it is gone.
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                    // A directory in the directory is not a token.
                    Err(_) if file.is_dir() => continue,
                    Err(source) => return Err(TokenError::Read { path: file, source }),
                };
                let token = text.trim();
                check(token).map_err(|()| TokenError::Invalid {
                    path: file.clone(),
                    line: String::new(),
                })?;
                entries.push(Entry {
                    caller: name.into(),
                    digest: digest(token),
                });
            }
        } else {
            let text = std::fs::read_to_string(path).map_err(read_error)?;
            for (number, line) in text.lines().enumerate() {
                let token = line.trim();
                if token.is_empty() || token.starts_with('#') {
                    continue;
                }
                check(token).map_err(|()| TokenError::Invalid {
                    path: path.to_path_buf(),
                    line: format!(", line {}", number + 1),
                })?;
                let digest = digest(token);
                entries.push(Entry {
                    caller: format!("token-{}", hex::encode(&digest[..4])).into(),
                    digest,
                });
            }
        }
        if entries.is_empty() {
            return Err(TokenError::Empty {
                path: path.to_path_buf(),
            });
        }
        entries.sort_by(|a, b| a.caller.cmp(&b.caller));
        entries.dedup_by(|a, b| a.digest == b.digest);
        Ok(TokenSet { entries })
    }

    /// The caller `presented` names, if it is one of these tokens. Compares against every token
    /// held, each in constant time.
    pub fn caller(&self, presented: &str) -> Option<Arc<str>> {
        let presented = digest(presented);
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.digest.ct_eq(&presented)) {
                found = Some(entry.caller.clone());
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Checks a token has the characters of RFC 6750's `b64token` and is long enough; what is on a
/// line beside a token (a name, a second token) is refused rather than guessed at.
fn check(token: &str) -> Result<(), ()> {
    let body = token.trim_end_matches('=');
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-._~+/".contains(c);
    if token.len() >= MIN_TOKEN_LEN && !body.is_empty() && body.chars().all(allowed) {
        Ok(())
    } else {
        Err(())
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A token source kept current: the set last read from `path`, re-read by
/// [`reload_every`](TokenFile::reload_every).
#[derive(Debug, Clone)]
pub struct TokenFile {
    path: PathBuf,
    current: Arc<ArcSwap<TokenSet>>,
}

impl TokenFile {
    /// Reads `path` once; an unreadable or empty source is an error.
    pub fn open(path: &Path) -> Result<TokenFile, TokenError> {
        let set = TokenSet::read(path)?;
        Ok(TokenFile {
            path: path.to_path_buf(),
            current: Arc::new(ArcSwap::from_pointee(set)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The caller `presented` names, among the tokens read last.
    pub fn caller(&self, presented: &str) -> Option<Arc<str>> {
        self.current.load().caller(presented)
    }

    /// Reads the source again and keeps what it holds now; if it cannot be read or holds no
    /// valid token, keeps nothing (nobody is admitted) and returns the error.
    pub fn reload(&self) -> Result<(), TokenError> {
        match TokenSet::read(&self.path) {
            Ok(set) => {
                if **self.current.load() != set {
                    tracing::info!(path = %self.path.display(), tokens = set.len(), "HTTP tokens changed");
                    self.current.store(Arc::new(set));
                }
                Ok(())
            }
            Err(err) => {
                self.current.store(Arc::new(TokenSet::default()));
                Err(err)
            }
        }
    }

    /// Re-reads the source every `period` until `shutdown`. An error is logged when it starts
    /// and when it ends, not at every read.
    pub async fn reload_every(self, period: Duration, mut shutdown: Shutdown) {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        let mut failing = false;
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.wait() => return,
            }
            let file = self.clone();
            let outcome = tokio::task::spawn_blocking(move || file.reload()).await;
            match outcome {
                Ok(Ok(())) if failing => {
                    tracing::info!(path = %self.path.display(), "HTTP tokens readable again");
                    failing = false;
                }
                Ok(Ok(())) => {}
                Ok(Err(err)) if !failing => {
                    tracing::error!(error = %err, "cannot read the HTTP tokens; admitting nobody until they can be read");
                    failing = true;
                }
                Ok(Err(_)) => {}
                Err(join) => tracing::error!(error = %join, "re-reading the HTTP tokens failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "alpha-token-0123456789";
    const B: &str = "bravo-token-0123456789";

    #[test]
    fn a_file_holds_one_token_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, format!("# callers\n{A}\n\n  {B}  \n{A}\n")).unwrap();
        let set = TokenSet::read(&path).unwrap();
        assert_eq!(set.len(), 2);
        let (a, b) = (set.caller(A).unwrap(), set.caller(B).unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with("token-") && !a.contains(A));
        assert_eq!(set.caller("alpha-token-012345678"), None);
        assert_eq!(set.caller(""), None);
        assert_eq!(set.caller(&format!("{A}x")), None);
    }

    #[test]
    fn a_directory_holds_one_token_per_file_named_by_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("frontend"), format!("{A}\n")).unwrap();
        std::fs::write(dir.path().join("batch-scorer"), B).unwrap();
        // What Kubernetes keeps beside the keys of a mounted Secret.
        std::fs::create_dir(dir.path().join("..2026_11_28")).unwrap();
        std::fs::write(dir.path().join("..data"), "not a token").unwrap();
        std::fs::create_dir(dir.path().join("nested")).unwrap();
        let set = TokenSet::read(dir.path()).unwrap();
        assert_eq!(set.caller(A).as_deref(), Some("frontend"));
        assert_eq!(set.caller(B).as_deref(), Some("batch-scorer"));
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn refuses_what_is_not_a_token_or_no_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        for bad in [
            "short\n",
            &format!("frontend {A}\n"),
            "é-token-0123456789abc\n",
        ] {
            std::fs::write(&path, bad).unwrap();
            let err = TokenSet::read(&path).unwrap_err().to_string();
            assert!(err.contains("line 1") && !err.contains(A), "{err}");
        }
        std::fs::write(&path, "# nobody yet\n").unwrap();
        assert!(matches!(
            TokenSet::read(&path),
            Err(TokenError::Empty { .. })
        ));
        assert!(matches!(
            TokenSet::read(&dir.path().join("missing")),
            Err(TokenError::Read { .. })
        ));
        // Base64 padding is part of a token.
        std::fs::write(&path, "c2VjcmV0LXRva2VuLXZhbHVl==\n").unwrap();
        assert!(
            TokenSet::read(&path)
                .unwrap()
                .caller("c2VjcmV0LXRva2VuLXZhbHVl==")
                .is_some()
        );
    }

    #[test]
    fn a_reload_drops_a_removed_token_and_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, format!("{A}\n{B}\n")).unwrap();
        let file = TokenFile::open(&path).unwrap();
        assert!(file.caller(A).is_some());
        std::fs::write(&path, format!("{B}\n")).unwrap();
        file.reload().unwrap();
        assert_eq!(file.caller(A), None);
        assert!(file.caller(B).is_some());
        std::fs::remove_file(&path).unwrap();
        assert!(file.reload().is_err());
        assert_eq!(file.caller(B), None, "an unreadable source admits nobody");
        std::fs::write(&path, format!("{A}\n")).unwrap();
        file.reload().unwrap();
        assert!(file.caller(A).is_some());
    }
}
