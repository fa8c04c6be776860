//! The envelope every artifact format shares:
//!
//! ```text
//! b"FRESHETM" | u32 LE header length | header JSON | record | SHA-256 of all before
//! ```
//!
//! The magic rejects random blobs before any parsing, and the trailing digest covers header and
//! record alike, so a truncated or corrupted artifact is refused before a single header field is
//! trusted. What the header and record hold is the format's business (`mod.rs`, `format2.rs`).

use sha2::{Digest, Sha256};

use crate::error::ModelError;

/// Length of the trailing SHA-256 digest.
pub(crate) const DIGEST_LEN: usize = 32;

/// Leading bytes of every artifact, so a random blob is rejected before JSON parsing.
pub(crate) const MAGIC: &[u8; 8] = b"FRESHETM";

/// Upper bound on the JSON header; a real one is ~300 bytes, and a bound keeps a corrupted
/// length field from being trusted.
const MAX_HEADER_LEN: usize = 64 * 1024;

/// Frames a header and record: magic, header length, header, record, digest.
pub(super) fn frame(header: &[u8], record: &[u8]) -> Result<Vec<u8>, ModelError> {
    let header_len = u32::try_from(header.len())
        .ok()
        .filter(|len| (*len as usize) <= MAX_HEADER_LEN)
        .ok_or_else(|| ModelError::Encode(format!("header too large: {} bytes", header.len())))?;
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + header.len() + record.len() + DIGEST_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&header_len.to_le_bytes());
    out.extend_from_slice(header);
    out.extend_from_slice(record);
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    Ok(out)
}

/// Checks the digest, magic and header length; returns the header and record bytes.
pub(super) fn unframe(bytes: &[u8]) -> Result<(&[u8], &[u8]), ModelError> {
    let decode = |msg: &str| ModelError::Decode(msg.into());
    let body_len = bytes
        .len()
        .checked_sub(DIGEST_LEN)
        .ok_or_else(|| decode("shorter than its checksum"))?;
    let (body, digest) = bytes.split_at(body_len);
    if Sha256::digest(body).as_slice() != digest {
        return Err(decode("artifact checksum does not match its contents"));
    }
    let rest = body
        .strip_prefix(MAGIC.as_slice())
        .ok_or_else(|| decode("not a freshet model artifact (bad magic)"))?;
    let (len_bytes, rest) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| decode("truncated before header length"))?;
    let header_len = u32::from_le_bytes(*len_bytes) as usize;
    if header_len > MAX_HEADER_LEN || header_len > rest.len() {
        return Err(ModelError::Decode(format!(
            "header length {header_len} exceeds the {} bytes available",
            rest.len()
        )));
    }
    Ok(rest.split_at(header_len))
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
