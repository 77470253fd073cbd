//! The HTML page at `/`: what this cache is and the nix.conf lines to use it.

use crate::config::Config;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub fn render(config: &Config, public_keys: &[String]) -> String {
    let keys = if public_keys.is_empty() {
        "<p>This cache does not sign; clients must trust the signatures Nix recorded.</p>"
            .to_string()
    } else {
        let list: String = public_keys
            .iter()
            .map(|k| format!("<li><code>{}</code></li>", escape(k)))
            .collect();
        format!("<h2>Public keys</h2><ul>{list}</ul>")
    };
    let trusted = public_keys.join(" ");
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Cairn binary cache</title>
<style>body{{font-family:system-ui,sans-serif;max-width:50rem;margin:2rem auto;padding:0 1rem}}
pre{{background:#f4f4f4;padding:1rem;overflow-x:auto}}</style></head>
<body><h1>Cairn Nix binary cache</h1>
<p>Serving the Nix store <code>{store}</code> (priority {prio}), version {ver}.</p>
{keys}
<h2>Use it</h2>
<p>Add to <code>/etc/nix/nix.conf</code> (replace the address with the one you reach this host by):</p>
<pre>extra-substituters = http://HOST:5000
extra-trusted-public-keys = {trusted}</pre>
<p>On NixOS: <code>nix.settings.substituters</code> and <code>nix.settings.trusted-public-keys</code>.</p>
<p><a href="/nix-cache-info">nix-cache-info</a> · <a href="/health">health</a> · <a href="/metrics">metrics</a> · <a href="/version">version</a></p>
</body></html>
"#,
        store = escape(&config.store_dir),
        prio = config.priority,
        ver = env!("CARGO_PKG_VERSION"),
        trusted = escape(&trusted),
    )
}
