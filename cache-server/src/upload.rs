//! Uploads through Nix's own protocol (`nix copy --to http://…`): `PUT nar/<filehash>.nar.<ext>`
//! then `PUT <hash>.narinfo`. Every byte is verified on the way in: the NAR body hashes to
//! the FileHash its URL names and decompresses to a valid NAR; the narinfo that follows must
//! match the stored blob, name the path its URL names and reference only paths the cache
//! can serve. Anything wrong is a 4xx with a one-line reason and leaves nothing behind.

use std::io::{self, Read};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use nix_formats::store_path::parse_hash_part;
use nix_formats::{Hash, HashAlgo, NarInfo};
use store::blobs::{BlobError, Compression};
use store::meta::{BlobRecord, PathRecord, Scope};
use tokio::sync::mpsc;

use crate::auth::now;
use crate::error::ServerError;
use crate::state::AppState;

type Shared = Arc<AppState>;

/// Largest narinfo we accept (after any Content-Encoding is undone).
pub const MAX_NARINFO_BYTES: usize = 1 << 20;

/// The fields Nix writes into a narinfo. An upload with any other field is refused:
/// we would drop it silently, and the uploader should know.
const KNOWN_FIELDS: [&str; 12] = [
    "StorePath",
    "URL",
    "Compression",
    "FileHash",
    "FileSize",
    "NarHash",
    "NarSize",
    "References",
    "Deriver",
    "System",
    "Sig",
    "CA",
];

/// Request bytes handed from the connection to a blocking reader.
pub(crate) struct BodyReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        crate::replication::failpoint("mid-body");
        Ok(n)
    }
}

/// Runs `consume` on the blocking pool with the request body as a `Read`, fed chunk by
/// chunk as the connection delivers them (a few chunks buffered), and returns what it
/// returned. A body that breaks off is a read error inside `consume`.
pub(crate) async fn with_body_reader<T: Send + 'static>(
    body: Body,
    consume: impl FnOnce(BodyReader) -> Result<T, ServerError> + Send + 'static,
) -> Result<T, ServerError> {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(8);
    let task = tokio::task::spawn_blocking(move || {
        consume(BodyReader {
            rx,
            current: Bytes::new(),
        })
    });
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let failed = chunk.is_err();
        if tx.send(chunk.map_err(io::Error::other)).await.is_err() || failed {
            // The consumer stopped early (too large, bad data) or the client broke off.
            break;
        }
    }
    drop(tx);
    task.await?
}

/// Undoes a request's `Content-Encoding`; 415 for one we do not speak.
pub(crate) fn decode_transfer<'a>(
    encoding: Option<&str>,
    r: impl Read + Send + 'a,
) -> Result<Box<dyn Read + Send + 'a>, ServerError> {
    match encoding.map(|e| e.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") | Some("identity") => Ok(Box::new(r)),
        Some("zstd") => Ok(Box::new(zstd::stream::read::Decoder::new(r)?)),
        Some("xz") | Some("x-xz") => Ok(Box::new(xz2::read::XzDecoder::new_multi_decoder(r))),
        Some("bzip2") | Some("x-bzip2") => Ok(Box::new(bzip2::read::MultiBzDecoder::new(r))),
        Some(_) => Err(ServerError::UnsupportedEncoding),
    }
}

pub(crate) fn content_encoding(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// `<nix32 filehash>.nar<ext>` → (FileHash, Compression).
pub fn parse_blob_file(file: &str) -> Option<(Hash, Compression)> {
    let (stem, ext) = file.split_once(".nar")?;
    let compression = [
        Compression::None,
        Compression::Zstd,
        Compression::Xz,
        Compression::Bzip2,
    ]
    .into_iter()
    .find(|c| c.ext() == ext)?;
    if stem.len() != nix_formats::nixbase32::encoded_len(32) {
        return None;
    }
    let hash = Hash::parse_digest(HashAlgo::Sha256, stem).ok()?;
    Some((hash, compression))
}

pub fn blob_error(e: BlobError) -> ServerError {
    match e {
        BlobError::InsufficientStorage { .. } => ServerError::InsufficientStorage,
        BlobError::TooLarge { max } => ServerError::TooLarge(max),
        BlobError::FileHashMismatch { .. } => {
            ServerError::Rejected("NAR body does not hash to the FileHash in its URL".into())
        }
        BlobError::NotANar(reason) => {
            ServerError::Rejected(format!("body is not a valid NAR: {reason}"))
        }
        BlobError::Decompress(reason) => {
            ServerError::Rejected(format!("body does not decompress: {reason}"))
        }
        BlobError::Body(e) => {
            tracing::debug!(error = %e, "upload body broke off");
            ServerError::Rejected("the upload body broke off before its end".into())
        }
        BlobError::NarMismatch(reason) => ServerError::Rejected(format!("NAR rejected: {reason}")),
        BlobError::Io(e) => ServerError::Io(e),
    }
}

/// `PUT /nar/<filehash>.nar<ext>`.
pub async fn put_nar(
    State(s): State<Shared>,
    Path(file): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ServerError> {
    s.auth.check(&s.catalog, &headers, Scope::Push)?;
    let (file_hash, compression) = parse_blob_file(&file).ok_or(ServerError::BadRequest(
        "NAR uploads go to nar/<filehash>.nar[.xz|.zst|.bz2]",
    ))?;
    let max = s.config.max_nar_upload_bytes;
    // Refuse before reading a byte when the declared size cannot fit.
    if let Some(len) = content_length(&headers) {
        if len > max {
            return Err(ServerError::TooLarge(max));
        }
        s.blobs.check_space(len).map_err(blob_error)?;
    }
    if s.blobs.contains(&file_hash) && s.catalog.get_blob(&file_hash)?.is_some() {
        // Already durable and verified: drain nothing, answer at once.
        return Ok(StatusCode::OK.into_response());
    }
    let encoding = content_encoding(&headers);
    let blobs = s.clone();
    let expected = file_hash.clone();
    let ingested = with_body_reader(body, move |reader| {
        let reader = decode_transfer(encoding.as_deref(), reader)?;
        blobs
            .blobs
            .ingest(reader, compression, Some(&expected), max)
            .map_err(blob_error)
    })
    .await?;
    crate::replication::commit_blob(
        &s,
        &BlobRecord {
            file_hash: ingested.file_hash.clone(),
            file_size: ingested.file_size,
            compression: ingested.compression,
            nar_hash: ingested.nar_hash.clone(),
            nar_size: ingested.nar_size,
            created: now(),
        },
    )
    .await?;
    tracing::info!(
        file_hash = %ingested.file_hash,
        nar_size = ingested.nar_size,
        compression = ingested.compression.name(),
        "stored NAR"
    );
    Ok(StatusCode::OK.into_response())
}

/// `PUT /<hash>.narinfo`.
pub async fn put_narinfo(
    s: Shared,
    hash: &str,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ServerError> {
    s.auth.check(&s.catalog, &headers, Scope::Push)?;
    parse_hash_part(hash).map_err(|_| ServerError::BadHash)?;
    if content_length(&headers).is_some_and(|l| l > MAX_NARINFO_BYTES as u64) {
        return Err(ServerError::TooLarge(MAX_NARINFO_BYTES as u64));
    }
    let raw = axum::body::to_bytes(body, MAX_NARINFO_BYTES)
        .await
        .map_err(|_| ServerError::TooLarge(MAX_NARINFO_BYTES as u64))?;
    let encoding = content_encoding(&headers);
    let text = {
        let mut out = Vec::new();
        decode_transfer(encoding.as_deref(), &raw[..])?
            .take(MAX_NARINFO_BYTES as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|_| ServerError::Rejected("narinfo body does not decode".into()))?;
        if out.len() > MAX_NARINFO_BYTES {
            return Err(ServerError::TooLarge(MAX_NARINFO_BYTES as u64));
        }
        String::from_utf8(out).map_err(|_| ServerError::Rejected("narinfo is not UTF-8".into()))?
    };
    let record = verify_narinfo(&s, hash, &text)?;
    crate::replication::commit_path(&s, &record).await?;
    tracing::info!(path = %record.store_path, "registered path");
    Ok(StatusCode::OK.into_response())
}

fn reject(msg: impl Into<String>) -> ServerError {
    ServerError::Rejected(msg.into())
}

/// Checks an uploaded narinfo against the URL it was sent to and the blob it names.
fn verify_narinfo(s: &AppState, hash: &str, text: &str) -> Result<PathRecord, ServerError> {
    for line in text.lines().filter(|l| !l.is_empty()) {
        let key = line.split_once(':').map(|(k, _)| k).unwrap_or(line);
        if !KNOWN_FIELDS.contains(&key) {
            return Err(reject(format!("unknown narinfo field {key:?}")));
        }
    }
    let ni = NarInfo::parse(text).map_err(|e| reject(format!("invalid narinfo: {e}")))?;
    if ni.store_dir.as_str() != s.config.store_dir {
        return Err(reject(format!(
            "StorePath is not in this cache's store directory {}",
            s.config.store_dir
        )));
    }
    if ni.store_path.hash_part() != hash {
        return Err(reject("StorePath does not match the narinfo's URL"));
    }
    let file = ni
        .url
        .strip_prefix("nar/")
        .ok_or_else(|| reject("URL must be nar/<filehash>.nar[.ext]"))?;
    let (file_hash, compression) =
        parse_blob_file(file).ok_or_else(|| reject("URL must be nar/<filehash>.nar[.ext]"))?;
    if ni.compression != compression.name() {
        return Err(reject("Compression does not match the URL's extension"));
    }
    let blob = s
        .catalog
        .get_blob(&file_hash)?
        .ok_or_else(|| reject("the NAR this narinfo names has not been uploaded"))?;
    if ni.file_hash.as_ref().is_some_and(|h| *h != blob.file_hash)
        || ni.file_size.is_some_and(|n| n != blob.file_size)
    {
        return Err(reject("FileHash/FileSize do not match the stored NAR"));
    }
    if ni.nar_hash != blob.nar_hash {
        return Err(reject("NarHash does not match the uploaded NAR"));
    }
    if ni.nar_size != blob.nar_size {
        return Err(reject("NarSize does not match the uploaded NAR"));
    }
    if !s.config.allow_missing_references {
        let mut missing = 0usize;
        let mut first = None;
        for r in ni.references.iter().filter(|r| **r != ni.store_path) {
            let h = r.hash_part();
            let known = s.catalog.has_path(&h)?
                || match &s.store {
                    Some(local) => local.query_by_hash_part(&h)?.is_some(),
                    None => false,
                };
            if !known {
                missing += 1;
                first.get_or_insert_with(|| r.to_string());
            }
        }
        if let Some(first) = first {
            return Err(reject(format!(
                "{missing} reference(s) not in the cache, e.g. {first}; upload them first"
            )));
        }
    }
    let sigs = s.trusted.valid_signatures(&ni.fingerprint(), &ni.sigs);
    Ok(PathRecord {
        store_path: ni.store_path,
        url_file_hash: file_hash,
        nar_hash: ni.nar_hash,
        nar_size: ni.nar_size,
        references: ni.references,
        deriver: ni.deriver,
        system: ni.system,
        sigs,
        ca: ni.ca,
        registered: now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_file_names() {
        let h = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
        assert_eq!(
            parse_blob_file(&format!("{h}.nar.xz")).unwrap().1,
            Compression::Xz
        );
        assert_eq!(
            parse_blob_file(&format!("{h}.nar.zst")).unwrap().1,
            Compression::Zstd
        );
        assert_eq!(
            parse_blob_file(&format!("{h}.nar")).unwrap().1,
            Compression::None
        );
        assert!(parse_blob_file(&format!("{h}.nar.gz")).is_none());
        assert!(parse_blob_file(&format!("{h}x.nar")).is_none());
        assert!(parse_blob_file("../../etc/passwd.nar").is_none());
    }
}
