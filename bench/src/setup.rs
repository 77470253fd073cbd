//! What the measurements need on disk: an isolated Nix configuration, the closure, the
//! static zstd cache for nginx (kept between runs), the signing key, nginx's config and
//! the request path lists for wrk. Everything lives under the output directory.

use std::collections::HashSet;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

/// nixbase32's alphabet (no e, o, u, t).
const NIX32: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// A Nix configuration of our own: no sandbox, no substituters, and nothing from the
/// user's or the machine's nix.conf.
pub fn nix_conf_dir(out: &Path) -> Result<PathBuf> {
    let dir = out.join("nix-conf");
    fs::create_dir_all(&dir)?;
    fs::write(
        dir.join("nix.conf"),
        "sandbox = false\nsubstituters =\nexperimental-features = nix-command\n",
    )?;
    Ok(dir)
}

/// A `Command` for a Nix tool under the isolated configuration.
pub fn nix(conf_dir: &Path, program: &str) -> Command {
    let mut c = Command::new(program);
    c.env("NIX_CONF_DIR", conf_dir)
        .env("NIX_USER_CONF_FILES", conf_dir.join("nix.conf"))
        .env_remove("NIX_CONFIG");
    c
}

/// Runs `cmd`, failing with its stderr; returns stdout.
pub fn output(mut cmd: Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The closure of `root` (`nix-store -qR`), in Nix's (topological) order.
pub fn closure(conf_dir: &Path, root: &str) -> Result<Vec<String>> {
    let mut cmd = nix(conf_dir, "nix-store");
    cmd.arg("-qR").arg(root);
    let paths: Vec<String> = output(cmd)?.lines().map(str::to_string).collect();
    ensure!(!paths.is_empty(), "the closure of {root} is empty");
    Ok(paths)
}

/// The 32-character hash part of a store path.
pub fn hash_part(store_path: &str) -> Result<String> {
    let base = store_path.rsplit('/').next().unwrap_or(store_path);
    let hash = base.get(..32).context("store path too short")?;
    ensure!(
        hash.bytes().all(|b| NIX32.contains(&b)),
        "not a store path: {store_path}"
    );
    Ok(hash.to_string())
}

/// The static cache nginx serves: `nix copy --to file://DIR?compression=zstd` of the
/// closure, made once per corpus root and reused while its completion marker is there.
pub fn static_cache(out: &Path, conf_dir: &Path, root: &str, paths: &[String]) -> Result<PathBuf> {
    let dir = out.join("static").join(hash_part(root)?);
    let marker = dir.join(".cairn-bench-complete");
    if marker.exists() {
        eprintln!("static cache: reusing {}", dir.display());
        return Ok(dir);
    }
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&dir)?;
    eprintln!(
        "static cache: nix copy of {} paths to {} (once per corpus)",
        paths.len(),
        dir.display()
    );
    let mut cmd = nix(conf_dir, "nix");
    cmd.arg("copy")
        .arg("--to")
        .arg(format!("file://{}?compression=zstd", dir.display()))
        .args(paths);
    output(cmd)?;
    fs::write(&marker, format!("{root}\n"))?;
    Ok(dir)
}

/// A signing key made by `nix-store --generate-binary-cache-key`, kept between runs.
pub fn signing_key(out: &Path, conf_dir: &Path) -> Result<PathBuf> {
    let dir = out.join("keys");
    fs::create_dir_all(&dir)?;
    let secret = dir.join("bench-cairn-1.sec");
    if !secret.exists() {
        let mut cmd = nix(conf_dir, "nix-store");
        cmd.arg("--generate-binary-cache-key")
            .arg("bench-cairn-1")
            .arg(&secret)
            .arg(dir.join("bench-cairn-1.pub"));
        output(cmd)?;
    }
    // cairnd refuses a secret key that group or others can read.
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600))?;
    Ok(secret)
}

/// Whether this nginx was built with a module (nginx fails on directives of modules it
/// lacks, and nginx-light leaves some out).
fn nginx_has(configure: &str, module: &str) -> bool {
    !configure.contains(&format!("--without-{module}"))
}

/// A minimal nginx config serving `root` on `port`, with every path it writes under
/// `dir`, so it needs nothing from /etc/nginx.
pub fn nginx_conf(dir: &Path, root: &Path, port: u16) -> Result<PathBuf> {
    fs::create_dir_all(dir.join("tmp"))?;
    let v = Command::new("nginx")
        .arg("-V")
        .output()
        .context("running nginx -V")?;
    let configure = String::from_utf8_lossy(&v.stderr).to_string();
    let d = dir.display();
    let mut temp =
        format!("    client_body_temp_path {d}/tmp/body;\n    proxy_temp_path {d}/tmp/proxy;\n");
    for (module, directive) in [
        ("http_fastcgi_module", "fastcgi_temp_path"),
        ("http_uwsgi_module", "uwsgi_temp_path"),
        ("http_scgi_module", "scgi_temp_path"),
    ] {
        if nginx_has(&configure, module) {
            temp.push_str(&format!("    {directive} {d}/tmp/{module};\n"));
        }
    }
    let conf = format!(
        r#"# generated by cairn-bench
daemon off;
master_process on;
worker_processes auto;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log warn;

events {{
    worker_connections 1024;
}}

http {{
    access_log off;
    # A miss is a normal answer for a cache, not an error worth a log line.
    log_not_found off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65;
    # Never close a benchmark connection after nginx's default 1000 requests (cairnd
    # does not either); wrk would count and pay for the reconnects.
    keepalive_requests 1000000000;
    default_type application/octet-stream;
    types {{
        text/x-nix-narinfo narinfo;
    }}
{temp}
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"#,
        root = root.display()
    );
    let path = dir.join("nginx.conf");
    fs::write(&path, conf)?;
    Ok(path)
}

/// `count` random, well-formed hash parts that are not in `known`, from /dev/urandom.
pub fn random_hashes(count: usize, known: &HashSet<String>) -> Result<Vec<String>> {
    let mut urandom = fs::File::open("/dev/urandom")?;
    let mut out = Vec::with_capacity(count);
    let mut buf = [0u8; 32];
    while out.len() < count {
        urandom.read_exact(&mut buf)?;
        // 256 is a multiple of 32, so `% 32` keeps every character equally likely.
        let h: String = buf
            .iter()
            .map(|b| NIX32[(b % 32) as usize] as char)
            .collect();
        if !known.contains(&h) {
            out.push(h);
        }
    }
    Ok(out)
}

/// Writes one `/<hash>.narinfo` request path per line.
pub fn write_paths(path: &Path, hashes: &[String]) -> Result<()> {
    let text: String = hashes.iter().map(|h| format!("/{h}.narinfo\n")).collect();
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_part_of_a_store_path() {
        assert_eq!(
            hash_part("/nix/store/0mhxs8i8rz8bvwxzmhygw2j8qp4asgc0-corpus-root").unwrap(),
            "0mhxs8i8rz8bvwxzmhygw2j8qp4asgc0"
        );
        assert!(hash_part("/nix/store/short").is_err());
        assert!(hash_part("/nix/store/0mhxs8i8rz8bvwxzmhygw2j8qp4asgce-x").is_err());
    }

    #[test]
    fn random_hashes_are_well_formed_and_new() {
        let known: HashSet<String> = HashSet::new();
        let hs = random_hashes(100, &known).unwrap();
        assert_eq!(hs.len(), 100);
        for h in &hs {
            assert_eq!(h.len(), 32);
            assert!(nix_formats::nixbase32::is_valid(h), "{h}");
        }
    }
}
