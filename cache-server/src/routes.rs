//! The Nix binary cache protocol over the local store: nix-cache-info, narinfo, NARs
//! (our URL, Harmonia's and nix-serve's shapes), `.ls` listings, build logs, and the
//! operator endpoints.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Extension, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use bytes::Bytes;
use nix_formats::store_path::{is_hash_part, parse_hash_part, HASH_PART_LEN};
use nix_formats::{Hash, HashAlgo, NarInfo, StorePath};
use store::PathInfo;

use crate::config::NarinfoCompression;
use crate::error::ServerError;
use crate::metrics::{Encoding, Route};
use crate::nar_stream::{self, Plan};
use crate::state::AppState;
use crate::variants::Variant;
use crate::zerocopy::{Mapped, Zerocopy};
use crate::{api, logs, sessions, upload};
use store::blobs::Compression;
use store::meta::{PathRecord, Scope};

type Shared = Arc<AppState>;

/// What each client connection runs: the [`router`], with a shortcut in front of it for
/// the request Nix clients send most. A narinfo GET that needs no more than a lookup in
/// memory (a hit, or a standalone miss) is answered on the spot, without the router's
/// per-request machinery (route matching, extractors, boxed middleware futures), which
/// costs about as much as the answer itself. Everything else, including any narinfo
/// request the shortcut is unsure about, goes through the router unchanged.
#[derive(Clone)]
pub struct App {
    state: Shared,
    router: Router,
    /// Set for connections over a [`crate::zerocopy::SendfileIo`].
    zerocopy: bool,
}

/// The [`App`] for `state`: what [`crate::serve`] runs on every connection.
pub fn app(state: Shared) -> App {
    App {
        router: router(state.clone()),
        state,
        zerocopy: false,
    }
}

impl App {
    /// This app for a connection that sends mapped files with `sendfile`: its HTTP/1
    /// requests carry [`crate::zerocopy::Zerocopy`].
    pub fn zerocopy(mut self) -> Self {
        self.zerocopy = true;
        self
    }

    fn shortcut<B>(&self, req: &axum::http::Request<B>) -> Option<Response> {
        let s = &*self.state;
        if req.method() != Method::GET || req.uri().query().is_some() {
            return None;
        }
        let hash = req
            .uri()
            .path()
            .strip_prefix('/')?
            .strip_suffix(".narinfo")?;
        if hash.len() != HASH_PART_LEN
            || s.auth
                .check(&s.catalog, req.headers(), Scope::Read)
                .is_err()
        {
            return None;
        }
        let start = Instant::now();
        let resp = match narinfo(s, hash) {
            Ok(r) => r,
            // A node with peers confirms a miss with the leader first: the router does
            // that.
            Err(ServerError::NotFound) if s.catalog.misses_are_final() => {
                ServerError::NotFound.into_response()
            }
            Err(_) => return None,
        };
        s.metrics
            .observe(Route::Narinfo, resp.status().as_u16(), start.elapsed());
        Some(resp)
    }
}

impl<B> hyper::service::Service<axum::http::Request<B>> for App
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = futures_util::future::Either<
        std::future::Ready<Result<Response, std::convert::Infallible>>,
        axum::routing::future::RouteFuture<std::convert::Infallible>,
    >;

    fn call(&self, mut req: axum::http::Request<B>) -> Self::Future {
        use futures_util::future::Either;
        if self.zerocopy && req.version() <= axum::http::Version::HTTP_11 {
            req.extensions_mut().insert(crate::zerocopy::Zerocopy);
        }
        match self.shortcut(&req) {
            Some(resp) => Either::Left(std::future::ready(Ok(resp))),
            None => Either::Right(tower::Service::call(&mut self.router.clone(), req)),
        }
    }
}

/// The whole HTTP surface of a `cairnd`.
pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(landing))
        .route("/nix-cache-info", get(cache_info))
        .route("/health", get(health))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .route("/nar/{file}", get(nar).put(upload::put_nar))
        .route("/log/{drv}", get(build_log).put(logs::put_log))
        .route("/api/v1/missing", post(api::missing))
        .route("/api/v1/status", get(api::status))
        .route("/api/v1/cluster/init", post(api::cluster_init))
        .route("/api/v1/cluster/nodes", post(api::cluster_add))
        .route("/api/v1/cluster/nodes/{id}", delete(api::cluster_remove))
        .route("/api/v1/uploads", post(sessions::create))
        .route(
            "/api/v1/uploads/{id}",
            get(sessions::look)
                .put(sessions::put_part)
                .delete(sessions::abort),
        )
        .route(
            "/api/v1/tokens",
            get(api::list_tokens).post(api::create_token),
        )
        .route("/api/v1/tokens/{id}", delete(api::revoke_token))
        .route("/api/v1/gc", post(crate::gc::run_gc))
        .route("/api/v1/pins", get(crate::gc::list_pins))
        .route(
            "/api/v1/pins/{path}",
            axum::routing::put(crate::gc::put_pin).delete(crate::gc::delete_pin),
        )
        .route(
            "/api/v1/retention",
            get(crate::gc::get_retention).put(crate::gc::put_retention),
        )
        .route("/{file}", get(by_hash).put(put_by_hash))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(middleware::from_fn(crate::leftover::read_leftovers))
        .with_state(state)
}

fn classify(path: &str) -> Route {
    match path {
        "/" => Route::Landing,
        "/nix-cache-info" => Route::CacheInfo,
        "/health" => Route::Health,
        "/version" => Route::Version,
        "/metrics" => Route::Metrics,
        p if p.starts_with("/nar/") => Route::Nar,
        p if p.starts_with("/log/") => Route::Log,
        p if p.starts_with("/api/") => Route::Api,
        p if p.ends_with(".narinfo") => Route::Narinfo,
        p if p.ends_with(".ls") => Route::Listing,
        _ => Route::Other,
    }
}

async fn observe(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let route = classify(req.uri().path());
    let start = Instant::now();
    let resp = next.run(req).await;
    state
        .metrics
        .observe(route, resp.status().as_u16(), start.elapsed());
    resp
}

async fn landing(State(s): State<Shared>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        s.landing.clone(),
    )
        .into_response()
}

async fn cache_info(State(s): State<Shared>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/x-nix-cache-info")],
        s.cache_info.clone(),
    )
        .into_response()
}

async fn health(State(s): State<Shared>) -> Response {
    let probe = match &s.store {
        Some(store) => store
            .query_by_hash_part("00000000000000000000000000000000")
            .map(|_| ())
            .map_err(|e| e.to_string()),
        None => Ok(()),
    };
    let probe = probe.and_then(|()| {
        s.catalog
            .path_count()
            .map(|_| ())
            .map_err(|e| format!("{e:?}"))
    });
    match probe {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => {
            tracing::error!(error = %e, "health check: store unreadable");
            (StatusCode::SERVICE_UNAVAILABLE, "store unreadable\n").into_response()
        }
    }
}

async fn version() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!(
            "{{\"name\":\"cairnd\",\"version\":\"{}\"}}\n",
            env!("CARGO_PKG_VERSION")
        ),
    )
        .into_response()
}

async fn metrics(State(s): State<Shared>) -> Response {
    let c = s.keyring.counters();
    let mut text = s.metrics.render((
        c.signatures_made.load(std::sync::atomic::Ordering::Relaxed),
        c.cache_hits.load(std::sync::atomic::Ordering::Relaxed),
    ));
    text.push_str(&s.metrics.render_cluster(s.catalog.node()));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// `/<hash>.narinfo` and `/<hash>.ls`.
async fn by_hash(
    State(s): State<Shared>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ServerError> {
    s.auth.check(&s.catalog, &headers, Scope::Read)?;
    if let Some(hash) = file.strip_suffix(".narinfo") {
        match narinfo(&s, hash) {
            Err(ServerError::NotFound) if !s.catalog.misses_are_final() => {
                confirmed_miss(&s, hash).await
            }
            r => r,
        }
    } else if let Some(hash) = file.strip_suffix(".ls") {
        listing(s, hash).await
    } else {
        Err(ServerError::NotFound)
    }
}

/// `PUT /<hash>.narinfo`.
async fn put_by_hash(
    State(s): State<Shared>,
    Path(file): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ServerError> {
    match file.strip_suffix(".narinfo") {
        Some(hash) => upload::put_narinfo(s, hash, headers, body).await,
        None => Err(ServerError::NotFound),
    }
}

/// Where a path was found.
enum Found {
    Cache(PathRecord),
    Local(PathInfo),
}

/// A miss on a node with peers: this node may lag the leader (a follower, a node that just
/// restarted), and a 404 is remembered by clients for an hour. So it waits until it has
/// applied what the leader had committed (one round shared by concurrent misses) and
/// looks again. Without a reachable leader (a minority partition) it answers from what
/// it has: reads go on, and a 404 beats a 5xx that would turn the cache off.
const MISS_BARRIER_TIMEOUT: Duration = Duration::from_secs(2);

async fn confirmed_miss(s: &Shared, hash: &str) -> Result<Response, ServerError> {
    let node = s.catalog.node();
    if let Err(e) = node.read_barrier(MISS_BARRIER_TIMEOUT).await {
        tracing::debug!(error = %e, "narinfo miss not confirmed with the leader");
        return Err(ServerError::NotFound);
    }
    narinfo(s, hash)
}

/// Looks a path up by hash part, in the cache store first: 400 for a malformed hash,
/// 404 for an unknown one. redb and SQLite point lookups take microseconds, so they run
/// inline rather than paying for a hop to the blocking pool.
fn find(s: &AppState, hash: &str) -> Result<Found, ServerError> {
    check_hash(hash)?;
    if let Some(rec) = s.catalog.get_path(hash)? {
        return Ok(Found::Cache(rec));
    }
    lookup_local(s, hash).map(Found::Local)
}

/// Looks a path up in the local Nix store only.
fn lookup_local(s: &AppState, hash: &str) -> Result<PathInfo, ServerError> {
    check_hash(hash)?;
    match &s.store {
        Some(local) => local.query_by_hash_part(hash)?.ok_or(ServerError::NotFound),
        None => Err(ServerError::NotFound),
    }
}

/// The narinfo URL and Compression we advertise for a local-store path. The URL keeps
/// Harmonia's shape so URLs clients cached from Harmonia stay valid.
fn nar_url(s: &AppState, info: &PathInfo) -> (String, &'static str) {
    let nar = info.nar_hash.to_nix32();
    let hash = info.path.hash_part();
    match s.config.narinfo_compression {
        NarinfoCompression::None => (format!("nar/{nar}.nar?hash={hash}"), "none"),
        NarinfoCompression::Zstd => (format!("nar/{nar}.nar.zst?hash={hash}"), "zstd"),
        NarinfoCompression::Xz => (format!("nar/{nar}.nar.xz?hash={hash}"), "xz"),
    }
}

/// 400 for a malformed hash part.
fn check_hash(hash: &str) -> Result<(), ServerError> {
    match is_hash_part(hash) {
        true => Ok(()),
        false => Err(ServerError::BadHash),
    }
}

fn narinfo(s: &AppState, hash: &str) -> Result<Response, ServerError> {
    check_hash(hash)?;
    // Read before the lookups: a change in between makes the entry stale at once.
    // No local generation (changes cannot be watched): nothing is cached.
    let local = s.store.as_ref().map(|l| l.generation());
    let generation = match local {
        None => Some((s.catalog.generation(), 0)),
        Some(Some(g)) => Some((s.catalog.generation(), g)),
        Some(None) => None,
    };
    // Served: GC's idleness rule counts from here (paths of the local Nix store are
    // noted too, and skipped when the notes are written).
    let served = |s: &AppState| s.access.note(hash);
    if let Some(body) = generation.and_then(|g| s.narinfos.get(hash, g)) {
        served(s);
        return Ok(narinfo_response(body));
    }
    let body = match s.catalog.get_path(hash)? {
        Some(rec) => {
            served(s);
            render_cache_narinfo(s, rec)?
        }
        None => {
            let info = match &s.store {
                Some(store) => store
                    .query_by_hash_part_under(hash, local.flatten())?
                    .ok_or(ServerError::NotFound)?,
                None => return Err(ServerError::NotFound),
            };
            render_local_narinfo(s, &info)
        }
    };
    let body = Bytes::from(body);
    if let Some(g) = generation {
        s.narinfos.insert(hash, g, body.clone());
    }
    Ok(narinfo_response(body))
}

fn narinfo_response(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, "text/x-nix-narinfo")], body).into_response()
}

/// The narinfo of a local-store path, signed.
fn render_local_narinfo(s: &AppState, info: &PathInfo) -> String {
    let (url, compression) = nar_url(s, info);
    let identity = compression == "none";
    let mut ni = NarInfo {
        store_dir: nix_formats::StoreDir::new(&s.config.store_dir)
            .expect("store dir validated by Config::resolve"),
        store_path: info.path.clone(),
        url,
        compression: compression.to_string(),
        file_hash: identity.then(|| info.nar_hash.clone()),
        file_size: identity.then_some(info.nar_size),
        nar_hash: info.nar_hash.clone(),
        nar_size: info.nar_size,
        references: info.references.clone(),
        deriver: info.deriver.clone(),
        system: None,
        sigs: Vec::new(),
        ca: info.ca.clone(),
    };
    let ours = s.keyring.sign(&ni.fingerprint());
    // Our signatures first, then what Nix recorded (substituted or `nix store sign`ed),
    // skipping any line we would repeat.
    ni.sigs.extend(ours.iter().cloned());
    for sig in &info.sigs {
        if !ni.sigs.contains(sig) {
            ni.sigs.push(sig.clone());
        }
    }
    ni.render()
}

/// The narinfo of an uploaded path: it advertises the stored form, so clients fetch the
/// stored bytes with no recompression.
/// The narinfo of an uploaded path, naming its blob as stored, signed.
fn render_cache_narinfo(s: &AppState, rec: PathRecord) -> Result<String, ServerError> {
    let blob = s
        .catalog
        .get_blob(&rec.url_file_hash)?
        .ok_or(ServerError::NotFound)?;
    let mut ni = NarInfo {
        store_dir: nix_formats::StoreDir::new(&s.config.store_dir)
            .expect("store dir validated by Config::resolve"),
        store_path: rec.store_path,
        url: format!(
            "nar/{}.nar{}",
            blob.file_hash.to_nix32(),
            blob.compression.ext()
        ),
        compression: blob.compression.name().to_string(),
        file_hash: Some(blob.file_hash),
        file_size: Some(blob.file_size),
        nar_hash: rec.nar_hash,
        nar_size: rec.nar_size,
        references: rec.references,
        deriver: rec.deriver,
        system: rec.system,
        sigs: Vec::new(),
        ca: rec.ca,
    };
    ni.sigs = s.keyring.sign(&ni.fingerprint());
    for sig in rec.sigs {
        if !ni.sigs.contains(&sig) {
            ni.sigs.push(sig);
        }
    }
    Ok(ni.render())
}

async fn listing(s: Shared, hash: &str) -> Result<Response, ServerError> {
    let info = match find(&s, hash)? {
        Found::Cache(rec) => return cache_listing(s, rec).await,
        Found::Local(info) => info,
    };
    let real = local_path(&s, &info)?;
    let json = tokio::task::spawn_blocking(move || -> Result<String, ServerError> {
        // The listing needs NAR offsets, so run our writer into our reader.
        let (reader, mut writer) = std::io::pipe()?;
        std::thread::scope(|scope| {
            let producer = scope.spawn(move || nix_formats::nar::dump_path(&real, &mut writer));
            let listed = nix_formats::nar::list(reader);
            let produced = producer
                .join()
                .map_err(|_| std::io::Error::other("NAR writer panicked"))?;
            produced.map_err(|e| std::io::Error::other(e.to_string()))?;
            let (_, root) = listed.map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok(nix_formats::nar::listing_json(&root))
        })
    })
    .await??;
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}

/// The listing of an uploaded path, read from its stored blob.
async fn cache_listing(s: Shared, rec: PathRecord) -> Result<Response, ServerError> {
    let blob = s
        .catalog
        .get_blob(&rec.url_file_hash)?
        .ok_or(ServerError::NotFound)?;
    let (file, _) = crate::replication::open_or_fetch(&s, &blob.file_hash)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "opening a blob");
            ServerError::NotFound
        })?
        .ok_or(ServerError::NotFound)?;
    let json = tokio::task::spawn_blocking(move || -> Result<String, ServerError> {
        let reader = decompressor(blob.compression, std::io::BufReader::new(file))?;
        let (_, root) =
            nix_formats::nar::list(reader).map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(nix_formats::nar::listing_json(&root))
    })
    .await??;
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}

/// A reader of the NAR inside a stored blob.
fn decompressor<'a>(
    c: Compression,
    r: impl std::io::Read + Send + 'a,
) -> std::io::Result<Box<dyn std::io::Read + Send + 'a>> {
    Ok(match c {
        Compression::None => Box::new(r),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
        Compression::Xz => Box::new(xz2::read::XzDecoder::new_multi_decoder(r)),
        Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(r)),
    })
}

/// The real location of a local-store path, or 404 when it vanished since the
/// database said it was valid.
fn local_path(s: &AppState, info: &PathInfo) -> Result<std::path::PathBuf, ServerError> {
    let local = s.store.as_ref().ok_or(ServerError::NotFound)?;
    let real = local.real_path(&info.path);
    if std::fs::symlink_metadata(&real).is_err() {
        return Err(ServerError::NotFound);
    }
    Ok(real)
}

/// A NAR request's parsed file name.
#[derive(Debug, PartialEq, Eq)]
struct NarRequest {
    out_hash: String,
    nar_hash: Hash,
    /// `""`, `"zst"` or `"xz"`.
    ext: &'static str,
}

fn parse_nar_file(file: &str, query: Option<&str>) -> Result<NarRequest, ServerError> {
    let (stem, ext) = if let Some(s) = file.strip_suffix(".nar") {
        (s, "")
    } else if let Some(s) = file.strip_suffix(".nar.zst") {
        (s, "zst")
    } else if let Some(s) = file.strip_suffix(".nar.xz") {
        (s, "xz")
    } else {
        return Err(ServerError::NotFound);
    };
    let nar_len = nix_formats::nixbase32::encoded_len(32);
    let (out_hash, nar) = match stem.split_once('-') {
        // nix-serve: nar/<outhash>-<narhash>.nar
        Some((out, nar)) => (out.to_string(), nar),
        // Harmonia and Cairn: nar/<narhash>.nar?hash=<outhash>
        None => {
            let out = query
                .unwrap_or("")
                .split('&')
                .find_map(|kv| kv.strip_prefix("hash="))
                .ok_or(ServerError::NotFound)?;
            (out.to_string(), stem)
        }
    };
    if out_hash.len() != HASH_PART_LEN || parse_hash_part(&out_hash).is_err() {
        return Err(ServerError::BadHash);
    }
    if nar.len() != nar_len {
        return Err(ServerError::BadHash);
    }
    let nar_hash = Hash::parse_digest(HashAlgo::Sha256, nar).map_err(|_| ServerError::BadHash)?;
    Ok(NarRequest {
        out_hash,
        nar_hash,
        ext,
    })
}

/// A parsed single byte range, inclusive end.
fn parse_range(value: &str, size: u64) -> Result<Option<(u64, u64)>, ServerError> {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        // Several ranges: answer with the whole body, which RFC 9110 allows.
        return Ok(None);
    }
    let (a, b) = spec
        .split_once('-')
        .ok_or(ServerError::BadRequest("bad Range"))?;
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        let n: u64 = b
            .parse()
            .map_err(|_| ServerError::BadRequest("bad Range"))?;
        if n == 0 {
            return Err(ServerError::RangeNotSatisfiable(size));
        }
        (size.saturating_sub(n), size.saturating_sub(1))
    } else {
        let start: u64 = a
            .parse()
            .map_err(|_| ServerError::BadRequest("bad Range"))?;
        let end = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            b.parse::<u64>()
                .map_err(|_| ServerError::BadRequest("bad Range"))?
                .min(size.saturating_sub(1))
        };
        (start, end)
    };
    if range.0 >= size || range.0 > range.1 {
        return Err(ServerError::RangeNotSatisfiable(size));
    }
    Ok(Some(range))
}

fn accepts_zstd(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim();
            let q_zero = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    == Some(0.0)
            });
            name.eq_ignore_ascii_case("zstd") && !q_zero
        })
}

async fn nar(
    State(s): State<Shared>,
    Path(file): Path<String>,
    RawQuery(query): RawQuery,
    method: Method,
    headers: HeaderMap,
    zerocopy: Option<Extension<Zerocopy>>,
) -> Result<Response, ServerError> {
    s.auth.check(&s.catalog, &headers, Scope::Read)?;
    let zerocopy = zerocopy.is_some();
    // An uploaded blob: nar/<filehash>.nar[.ext], no query.
    if query.is_none() {
        if let Some((file_hash, compression)) = upload::parse_blob_file(&file) {
            return cache_nar(&s, &file_hash, compression, &method, &headers, zerocopy).await;
        }
    }
    let req = parse_nar_file(&file, query.as_deref())?;
    let info = lookup_local(&s, &req.out_hash)?;
    if info.nar_hash != req.nar_hash {
        return Err(ServerError::NotFound);
    }
    let head = method == Method::HEAD;
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let encoding = match req.ext {
        "zst" => Encoding::Zstd,
        "xz" => Encoding::Xz,
        _ if range.is_none() && s.config.enable_compression && accepts_zstd(&headers) => {
            Encoding::Zstd
        }
        _ => Encoding::Identity,
    };
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, "application/x-nix-nar")
        .header(header::VARY, "Accept-Encoding");
    // Everything that can fail is decided before the headers go out: a path that
    // vanished since its narinfo was served is a 404, not a broken body. (A compressed
    // variant already made is served as it is: its bytes stay right.)
    if let Encoding::Identity = encoding {
        let real = local_path(&s, &info)?;
        builder = builder.header(header::ACCEPT_RANGES, "bytes");
        let size = info.nar_size;
        let (status, start, len) = match range.map(|r| parse_range(r, size)).transpose()?.flatten()
        {
            Some((a, b)) => {
                builder = builder.header(header::CONTENT_RANGE, format!("bytes {a}-{b}/{size}"));
                (StatusCode::PARTIAL_CONTENT, a, b - a + 1)
            }
            None => (StatusCode::OK, 0, size),
        };
        let body = if head || len == 0 {
            Body::empty()
        } else {
            nar_stream::spawn(
                real,
                Plan::Identity {
                    start,
                    len,
                    nar_size: size,
                    zerocopy,
                },
                s.metrics.clone(),
            )
        };
        return Ok(builder
            .status(status)
            .header(header::CONTENT_LENGTH, len)
            .body(body)
            .expect("valid response"));
    }
    let (variant_key, level) = match encoding {
        Encoding::Zstd => (
            format!("{}.zst{}", info.nar_hash.to_nix32(), s.config.zstd_level),
            s.config.zstd_level as u32,
        ),
        Encoding::Xz => (
            format!("{}.xz{}", info.nar_hash.to_nix32(), s.config.xz_level),
            s.config.xz_level,
        ),
        Encoding::Identity => unreachable!("handled above"),
    };
    // A `.nar.zst` URL names a zstd file; a plain `.nar` URL gets zstd as a
    // transfer-level encoding that the client undoes.
    if req.ext.is_empty() {
        builder = builder.header(header::CONTENT_ENCODING, "zstd");
    }
    let cached = match s.variants.get(&variant_key) {
        Some(Variant::Memory(bytes)) => Some((bytes.len() as u64, Ok(bytes))),
        Some(Variant::File(path, len)) => match std::fs::File::open(&path) {
            Ok(file) => Some((len, Err(file))),
            Err(_) => {
                s.variants.forget(&variant_key);
                None
            }
        },
        None => None,
    };
    if let Some((len, source)) = cached {
        s.metrics
            .variant_cache_hits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let body = match source {
            _ if head => Body::empty(),
            Ok(bytes) => {
                s.metrics.add_bytes(encoding, len);
                Body::from(bytes)
            }
            Err(file) => file_body(&s, file, 0, len, encoding, zerocopy, None),
        };
        return Ok(builder
            .header(header::CONTENT_LENGTH, len)
            .body(body)
            .expect("valid response"));
    }
    let real = local_path(&s, &info)?;
    if head {
        return Ok(builder.body(Body::empty()).expect("valid response"));
    }
    s.metrics
        .variant_cache_misses
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let permit = encoder_permit(&s).await;
    let variant = s.variants.begin(&variant_key);
    let body = nar_stream::spawn(
        real,
        Plan::Compressed {
            encoding,
            level,
            nar_size: info.nar_size,
            permit,
            variant,
        },
        s.metrics.clone(),
    );
    Ok(builder.body(body).expect("valid response"))
}

/// The body for `len` bytes of a stored file (a blob or a compressed variant) from
/// `start`. On a [`Zerocopy`] connection a file that needs no check goes out with
/// `sendfile`; otherwise it is read on the blocking pool (and checked, with `verify`).
fn file_body(
    s: &AppState,
    file: std::fs::File,
    start: u64,
    len: u64,
    encoding: Encoding,
    zerocopy: bool,
    verify: Option<nar_stream::Verify>,
) -> Body {
    let file = if zerocopy && verify.is_none() && len > 0 {
        let size = start + len;
        match Mapped::new(file, size) {
            Ok(mapped) => {
                s.metrics.add_bytes(encoding, len);
                return Body::from(mapped.into_bytes(start, len));
            }
            Err((file, e)) => {
                tracing::debug!(error = %e, "mapping a stored file failed; reading it");
                file
            }
        }
    } else {
        file
    };
    nar_stream::spawn_file(file, start, len, encoding, s.metrics.clone(), verify)
}

/// Serves an uploaded blob. The stored form goes out as is (with `Content-Length` and
/// ranges); a plain `.nar` request for a compressed blob gets the stored zstd bytes as
/// `Content-Encoding: zstd` when the client accepts it, else the NAR decompressed on
/// the fly. HEAD answers 200 only for a blob that is recorded and on disk.
async fn cache_nar(
    s: &Shared,
    file_hash: &Hash,
    requested: Compression,
    method: &Method,
    headers: &HeaderMap,
    zerocopy: bool,
) -> Result<Response, ServerError> {
    let blob = s
        .catalog
        .get_blob(file_hash)?
        .ok_or(ServerError::NotFound)?;
    // A cluster node without a copy fetches and verifies one before answering.
    let opened = match crate::replication::open_or_fetch(s, file_hash).await {
        Err(ServerError::NotFound) => return Err(ServerError::NotFound),
        r => r.map_err(|e| {
            tracing::error!(error = ?e, "opening a recorded blob");
            ServerError::NotFound
        })?,
    };
    let Some((file, len)) = opened else {
        tracing::error!(file_hash = %file_hash, "a recorded blob is missing from disk");
        return Err(ServerError::NotFound);
    };
    let head = *method == Method::HEAD;
    let builder = Response::builder()
        .header(header::CONTENT_TYPE, "application/x-nix-nar")
        .header(header::VARY, "Accept-Encoding");
    let stored_as_is = requested == blob.compression
        || (requested == Compression::None
            && blob.compression == Compression::Zstd
            && headers.get(header::RANGE).is_none()
            && accepts_zstd(headers));
    if stored_as_is {
        let mut builder = builder.header(header::ACCEPT_RANGES, "bytes");
        if requested != blob.compression {
            builder = builder.header(header::CONTENT_ENCODING, "zstd");
        }
        let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
        let (status, start, n) = match range.map(|r| parse_range(r, len)).transpose()?.flatten() {
            Some((a, b)) => {
                builder = builder.header(header::CONTENT_RANGE, format!("bytes {a}-{b}/{len}"));
                (StatusCode::PARTIAL_CONTENT, a, b - a + 1)
            }
            None => (StatusCode::OK, 0, len),
        };
        let encoding = match blob.compression {
            Compression::Zstd => Encoding::Zstd,
            Compression::Xz => Encoding::Xz,
            Compression::None | Compression::Bzip2 => Encoding::Identity,
        };
        let body = if head {
            Body::empty()
        } else if n == len && len <= crate::variants::MEMORY_ENTRY_MAX as u64 {
            // Small blobs (most of them) are kept in memory once read: a blocking
            // task and a channel per request cost more than the bytes.
            let bytes = match small_blob(s, file_hash, file, len).await {
                Err(ServerError::CorruptBlob) => {
                    let file = fetch_again(s, file_hash).await?;
                    small_blob(s, file_hash, file, len)
                        .await
                        .map_err(|_| ServerError::NotFound)?
                }
                r => r?,
            };
            s.metrics.add_bytes(encoding, len);
            Body::from(bytes)
        } else {
            // A whole blob is checked as it streams unless it is known unchanged since
            // it last hashed right; for a part, the whole blob is hashed first.
            let before = store::blobs::Stamp::of(&file);
            let known_good = before.is_some_and(|b| s.blobs.is_verified(file_hash, &b));
            let file = if n < len && !known_good && !hashes_right(s, file_hash, &file).await? {
                let file = fetch_again(s, file_hash).await?;
                if !hashes_right(s, file_hash, &file).await? {
                    return Err(ServerError::NotFound);
                }
                file
            } else {
                file
            };
            let verify = (n == len && !known_good).then(|| {
                let (st, h) = (s.clone(), file_hash.clone());
                let (st2, h2) = (s.clone(), file_hash.clone());
                let rt = tokio::runtime::Handle::current();
                nar_stream::Verify {
                    expected: file_hash.clone(),
                    on_match: Box::new(move |file| {
                        st2.blobs.note_verified_since(&h2, before, file)
                    }),
                    on_mismatch: Box::new(move || {
                        rt.spawn(async move { crate::replication::quarantine(&st, &h).await });
                    }),
                }
            });
            file_body(s, file, start, n, encoding, zerocopy, verify)
        };
        return Ok(builder
            .status(status)
            .header(header::CONTENT_LENGTH, n)
            .body(body)
            .expect("valid response"));
    }
    if requested != Compression::None {
        return Err(ServerError::NotFound);
    }
    // The plain NAR of a compressed blob: decompress on the fly.
    let body = if head {
        Body::empty()
    } else {
        let permit = encoder_permit(s).await;
        nar_stream::spawn_decompressed(
            file,
            blob.compression,
            blob.nar_size,
            permit,
            s.metrics.clone(),
        )
    };
    Ok(builder
        .header(header::CONTENT_LENGTH, blob.nar_size)
        .body(body)
        .expect("valid response"))
}

async fn build_log(
    State(s): State<Shared>,
    Path(drv): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ServerError> {
    s.auth.check(&s.catalog, &headers, Scope::Read)?;
    let path = StorePath::from_base_name(&drv).map_err(|_| ServerError::BadHash)?;
    if !path.name().ends_with(".drv") {
        return Err(ServerError::NotFound);
    }
    if let Some(text) = s.logs.get(&path).await? {
        return Ok(log_response(text));
    }
    let Some((file, compression)) = s.store.as_ref().and_then(|l| l.log_file(&path)) else {
        return Err(ServerError::NotFound);
    };
    let text = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
        let raw = std::fs::read(&file)?;
        match compression {
            store::local::LogCompression::None => Ok(raw),
            store::local::LogCompression::Bzip2 => {
                let mut out = Vec::new();
                std::io::Read::read_to_end(&mut bzip2::read::BzDecoder::new(&raw[..]), &mut out)?;
                Ok(out)
            }
        }
    })
    .await??;
    Ok(log_response(text.into()))
}

fn log_response(text: Bytes) -> Response {
    let mut resp = text.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The bytes of a small stored blob, from the memory tier of the variant cache or read
/// (and kept there). Blobs are immutable under their file hash, so a copy never goes
/// stale; one shorter than recorded is an error, never a short body.
async fn small_blob(
    s: &AppState,
    file_hash: &Hash,
    file: std::fs::File,
    len: u64,
) -> Result<Bytes, ServerError> {
    let key = crate::replication::blob_memory_key(file_hash);
    if let Some(Variant::Memory(bytes)) = s.variants.get(&key) {
        return Ok(bytes);
    }
    let bytes = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
        let mut v = Vec::with_capacity(len as usize);
        std::io::Read::read_to_end(&mut std::io::Read::take(file, len), &mut v)?;
        Ok(v)
    })
    .await??;
    if bytes.len() as u64 != len || Hash::sha256_of(&bytes) != *file_hash {
        tracing::error!(file_hash = %file_hash, "a stored blob does not hash to its name");
        return Err(ServerError::CorruptBlob);
    }
    let bytes = Bytes::from(bytes);
    s.variants.put_memory(&key, bytes.clone());
    Ok(bytes)
}

/// Sets aside this node's copy of a blob that failed its hash and opens one fetched
/// again from a holder (a cluster), 404 without one. The caller checks the copy
/// again: one that could not be set aside (no quorum) is still the bad one.
async fn fetch_again(s: &Shared, file_hash: &Hash) -> Result<std::fs::File, ServerError> {
    crate::replication::quarantine(s, file_hash).await;
    let (file, _) = crate::replication::open_or_fetch(s, file_hash)
        .await?
        .ok_or(ServerError::NotFound)?;
    Ok(file)
}

/// Whether the whole of `file` hashes to `file_hash` (noted, when it does, so the next
/// request need not hash it again while the file is unchanged). Hashing takes one of
/// the `max_encoders` slots: it costs as much CPU as a stream being compressed.
async fn hashes_right(
    s: &Shared,
    file_hash: &Hash,
    file: &std::fs::File,
) -> Result<bool, ServerError> {
    let (st, h, file) = (s.clone(), file_hash.clone(), file.try_clone()?);
    let _permit = encoder_permit(s).await;
    let right = tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
        let before = store::blobs::Stamp::of(&file);
        let right = crate::replication::hash_of_file(&file)? == h;
        if right {
            st.blobs.note_verified_since(&h, before, &file);
        }
        Ok(right)
    })
    .await??;
    Ok(right)
}

/// A slot among the `max_encoders` compressing or decompressing streams.
async fn encoder_permit(s: &AppState) -> tokio::sync::OwnedSemaphorePermit {
    s.encoders
        .clone()
        .acquire_owned()
        .await
        .expect("the encoder semaphore is never closed")
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "00bgd045z0d4icpbc2yyz4gx48ak44la";
    const NAR: &str = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";

    #[test]
    fn nar_url_shapes() {
        let ours = parse_nar_file(&format!("{NAR}.nar"), Some(&format!("hash={OUT}"))).unwrap();
        assert_eq!(ours.out_hash, OUT);
        assert_eq!(ours.ext, "");
        let legacy = parse_nar_file(&format!("{OUT}-{NAR}.nar"), None).unwrap();
        assert_eq!(legacy, ours);
        let zst =
            parse_nar_file(&format!("{NAR}.nar.zst"), Some(&format!("x=1&hash={OUT}"))).unwrap();
        assert_eq!(zst.ext, "zst");
        assert!(matches!(
            parse_nar_file(&format!("{NAR}.nar"), None),
            Err(ServerError::NotFound)
        ));
        assert!(matches!(
            parse_nar_file(&format!("{NAR}.nar.bz2"), None),
            Err(ServerError::NotFound)
        ));
        assert!(matches!(
            parse_nar_file("../../etc/passwd.nar", Some(&format!("hash={OUT}"))),
            Err(ServerError::BadHash)
        ));
        assert!(matches!(
            parse_nar_file(
                &format!("{NAR}.nar"),
                Some("hash=../../../../../../../etc/passwd")
            ),
            Err(ServerError::BadHash)
        ));
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100).unwrap(), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100).unwrap(), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100).unwrap(), Some((90, 99)));
        assert_eq!(parse_range("bytes=50-1000", 100).unwrap(), Some((50, 99)));
        assert_eq!(parse_range("bytes=0-1,5-6", 100).unwrap(), None);
        assert_eq!(parse_range("items=0-1", 100).unwrap(), None);
        assert!(matches!(
            parse_range("bytes=100-", 100),
            Err(ServerError::RangeNotSatisfiable(100))
        ));
        assert!(matches!(
            parse_range("bytes=5-2", 100),
            Err(ServerError::RangeNotSatisfiable(100))
        ));
        assert!(parse_range("bytes=x-2", 100).is_err());
    }

    #[test]
    fn accept_encoding() {
        let mut h = HeaderMap::new();
        assert!(!accepts_zstd(&h));
        h.insert(header::ACCEPT_ENCODING, "gzip, zstd, br".parse().unwrap());
        assert!(accepts_zstd(&h));
        h.insert(header::ACCEPT_ENCODING, "zstd;q=0, gzip".parse().unwrap());
        assert!(!accepts_zstd(&h));
        h.insert(header::ACCEPT_ENCODING, "ZSTD;q=0.5".parse().unwrap());
        assert!(accepts_zstd(&h));
    }
}
