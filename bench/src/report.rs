//! RESULTS.md: the measured numbers (medians of the repetitions, with every run listed),
//! the ratios, the issue's targets with a verdict each, and Harmonia's reference numbers.

use std::fmt::Write;

use crate::narpass::PassSample;
use crate::wrk::RateSample;

/// Harmonia 3.2 and nginx in an earlier, comparable setup (quoted, never measured here).
mod reference {
    pub const HARMONIA_HITS_PER_S: f64 = 17_200.0;
    pub const HARMONIA_US_PER_HIT: f64 = 66.0;
    pub const HARMONIA_MISSES_PER_S: f64 = 39_700.0;
    pub const HARMONIA_IDENTITY_WALL_S: f64 = 0.78;
    pub const HARMONIA_IDENTITY_CPU_S: f64 = 0.68;
    pub const HARMONIA_ZSTD_WALL_S: f64 = 2.21;
    pub const HARMONIA_ZSTD_CPU_S: f64 = 3.35;
    pub const HARMONIA_ZSTD_WIRE_RATIO: f64 = 0.41;
    pub const HARMONIA_PEAK_RSS_MB: f64 = 182.0;
    pub const NGINX_HITS_PER_S: f64 = 49_700.0;
    pub const NGINX_US_PER_HIT: f64 = 10.7;
    pub const NGINX_MISSES_PER_S: f64 = 42_500.0;
}

/// The issue's targets.
mod target {
    pub const HITS_VS_NGINX: f64 = 0.8;
    pub const US_PER_HIT: f64 = 25.0;
    pub const MISSES_VS_NGINX: f64 = 0.9;
    pub const IDENTITY_BYTES_PER_S: f64 = 1e9;
    pub const IDENTITY_CPU_S: f64 = 0.6;
    pub const ZSTD_COLD_VS_HARMONIA: f64 = 1.5;
    pub const ZSTD_COLD_WIRE_RATIO: f64 = 0.45;
    pub const ZSTD_WARM_VS_NGINX: f64 = 0.8;
    pub const PEAK_RSS_BYTES: u64 = 64 << 20;
}

pub struct Machine {
    pub date: String,
    pub nproc: usize,
    pub cpu_model: String,
    pub mem_total: String,
    pub kernel: String,
    pub tree: String,
    pub versions: Vec<(String, String)>,
}

pub struct Corpus {
    pub root: String,
    pub paths: usize,
    pub nar_bytes: u64,
    pub static_bytes: u64,
}

pub struct Settings {
    pub reps: usize,
    pub duration_s: u64,
    pub threads: u32,
    pub connections: u32,
    pub parallel: usize,
    pub miss_hashes: usize,
    pub cairnd_flags: String,
}

/// Per repetition: (cairnd, nginx).
pub type RatePairs = Vec<(RateSample, RateSample)>;

pub struct Results {
    pub machine: Machine,
    pub corpus: Corpus,
    pub settings: Settings,
    pub hits: RatePairs,
    pub misses: RatePairs,
    pub identity: Vec<PassSample>,
    pub zstd_cold: Vec<PassSample>,
    pub zstd_warm: Vec<PassSample>,
    pub nginx_zstd: Vec<PassSample>,
    /// Harmonia on the same store, when the run was given one.
    pub harmonia: Option<crate::harmonia::HarmoniaRun>,
    /// The upload side, when measured.
    pub uploads: Option<crate::uploads::UploadResults>,
    /// (which cairnd instance, VmHWM bytes)
    pub peak_rss: Vec<(String, u64)>,
    /// Warnings and errors cairnd logged, with counts.
    pub cairnd_log: Vec<String>,
    pub wall_minutes: f64,
}

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "**met**"
    } else {
        "**not met**"
    }
}

pub fn k(x: f64) -> String {
    format!("{:.1}k", x / 1000.0)
}

fn mb(bytes: f64) -> String {
    format!("{:.1} MB", bytes / 1e6)
}

pub fn mbps(bytes_per_s: f64) -> String {
    format!("{:.0} MB/s", bytes_per_s / 1e6)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

fn list(v: impl IntoIterator<Item = String>) -> String {
    v.into_iter().collect::<Vec<_>>().join(" / ")
}

/// Medians of one kind of NAR pass.
struct PassMedians {
    wall: f64,
    cpu: f64,
    nar: f64,
    wire: f64,
    throughput: f64,
    wire_ratio: f64,
}

fn pass_medians(v: &[PassSample]) -> PassMedians {
    let m = |f: &dyn Fn(&PassSample) -> f64| median(v.iter().map(f).collect());
    PassMedians {
        wall: m(&|p| p.wall.as_secs_f64()),
        cpu: m(&|p| p.server_cpu_s),
        nar: m(&|p| p.nar_bytes as f64),
        wire: m(&|p| p.wire_bytes as f64),
        throughput: m(&|p| p.nar_throughput()),
        wire_ratio: m(&|p| p.wire_ratio()),
    }
}

pub fn render(r: &Results) -> String {
    let mut s = String::new();
    let w = &mut s;
    let st = &r.settings;
    let m = &r.machine;

    let hits_c = median(r.hits.iter().map(|p| p.0.per_second).collect());
    let hits_n = median(r.hits.iter().map(|p| p.1.per_second).collect());
    let hcpu_c = median(r.hits.iter().map(|p| p.0.cpu_us_per_request()).collect());
    let hcpu_n = median(r.hits.iter().map(|p| p.1.cpu_us_per_request()).collect());
    let miss_c = median(r.misses.iter().map(|p| p.0.per_second).collect());
    let miss_n = median(r.misses.iter().map(|p| p.1.per_second).collect());
    let mcpu_c = median(r.misses.iter().map(|p| p.0.cpu_us_per_request()).collect());
    let mcpu_n = median(r.misses.iter().map(|p| p.1.cpu_us_per_request()).collect());
    let id = pass_medians(&r.identity);
    let cold = pass_medians(&r.zstd_cold);
    let warm = pass_medians(&r.zstd_warm);
    let ngx = pass_medians(&r.nginx_zstd);
    let corpus_nar = r.corpus.nar_bytes as f64;
    let harmonia = r.harmonia.as_ref();
    let h_id = harmonia.map(|h| pass_medians(&h.identity));
    let h_zstd = harmonia.map(|h| pass_medians(&h.zstd));
    let h_again = harmonia
        .filter(|h| !h.zstd_again.is_empty())
        .map(|h| pass_medians(&h.zstd_again));
    // The yardstick for the zstd target: Harmonia measured in this run when there is
    // one, else its quoted figure.
    let (harmonia_zstd_tp, harmonia_label) = match (&h_zstd, harmonia) {
        (Some(z), Some(h)) => (z.throughput, format!("{} (this run)", h.version)),
        _ => (
            corpus_nar / reference::HARMONIA_ZSTD_WALL_S,
            "Harmonia ref.".to_string(),
        ),
    };
    let cold_target_tp = target::ZSTD_COLD_VS_HARMONIA * harmonia_zstd_tp;
    let peak = r.peak_rss.iter().map(|p| p.1).max().unwrap_or(0);

    let _ = writeln!(w, "# Cairn benchmark results\n");
    let _ = writeln!(
        w,
        "Written by `bench/run` (the `cairn-bench` orchestrator); do not edit by hand. \
         Each figure is the median of {} runs (every run is listed under its table); \
         the servers were measured one at a time in the same run.\n",
        st.reps
    );
    let _ = writeln!(w, "- date: {}", m.date);
    let _ = writeln!(
        w,
        "- machine: {} CPUs (`nproc`), {}, {} RAM, Linux {}",
        m.nproc, m.cpu_model, m.mem_total, m.kernel
    );
    let _ = writeln!(w, "- source tree: {}", m.tree);
    for (what, v) in &m.versions {
        let _ = writeln!(w, "- {what}: {v}");
    }
    let _ = writeln!(
        w,
        "- corpus: `make-corpus 1`, root `{}`: {} store paths, {} of NAR ({} bytes); \
         static zstd cache for nginx {}",
        r.corpus.root,
        r.corpus.paths,
        mb(corpus_nar),
        r.corpus.nar_bytes,
        mb(r.corpus.static_bytes as f64)
    );
    let _ = writeln!(w, "- cairnd flags: `{}`", st.cairnd_flags);
    match harmonia {
        Some(h) => {
            let _ = writeln!(
                w,
                "- Harmonia: {}, measured in this run on its default configuration \
                 (the same store and signing key)",
                h.version
            );
        }
        None => {
            let _ = writeln!(
                w,
                "- Harmonia: not measured in this run (`--harmonia` not given); comparisons \
                 use its quoted reference figures"
            );
        }
    }
    let _ = writeln!(w, "- whole run: {:.1} minutes\n", r.wall_minutes);

    // 1 and 2: narinfo rates and CPU per request.
    let _ = writeln!(
        w,
        "## 1–2. narinfo hits and misses, server CPU per request\n"
    );
    let _ = writeln!(
        w,
        "wrk, {} threads, {} keep-alive connections, {} s per run. Hits cycle over all {} \
         `<hash>.narinfo` URLs of the closure (every response checked to be 200); misses \
         cycle over {} random well-formed hashes not in the store (every response checked \
         to be 404). Server CPU is utime+stime from `/proc/PID/stat` around the run (nginx: \
         master and workers), divided by the requests wrk completed.\n",
        st.threads, st.connections, st.duration_s, r.corpus.paths, st.miss_hashes
    );
    let _ = writeln!(
        w,
        "| measurement | cairnd | nginx | cairnd/nginx | target |"
    );
    let _ = writeln!(w, "|---|---:|---:|---:|---|");
    let _ = writeln!(
        w,
        "| narinfo hits/s | {} | {} | {:.2}× | ≥ {}× nginx |",
        k(hits_c),
        k(hits_n),
        hits_c / hits_n,
        target::HITS_VS_NGINX
    );
    let _ = writeln!(
        w,
        "| server CPU per hit (signing on) | {:.1} µs | {:.1} µs | {:.2}× | ≤ {} µs |",
        hcpu_c,
        hcpu_n,
        hcpu_c / hcpu_n,
        target::US_PER_HIT
    );
    let _ = writeln!(
        w,
        "| narinfo misses/s | {} | {} | {:.2}× | ≥ {}× nginx |",
        k(miss_c),
        k(miss_n),
        miss_c / miss_n,
        target::MISSES_VS_NGINX
    );
    let _ = writeln!(
        w,
        "| server CPU per miss | {:.1} µs | {:.1} µs | {:.2}× | — |\n",
        mcpu_c,
        mcpu_n,
        mcpu_c / mcpu_n
    );
    let rate_runs = |pairs: &RatePairs, pick: fn(&(RateSample, RateSample)) -> &RateSample| {
        list(
            pairs
                .iter()
                .map(pick)
                .map(|x| format!("{} ({:.1} µs)", k(x.per_second), x.cpu_us_per_request())),
        )
    };
    let _ = writeln!(
        w,
        "Runs, requests/s (server CPU per request): hits cairnd {}; hits nginx {}; \
         misses cairnd {}; misses nginx {}.",
        rate_runs(&r.hits, |p| &p.0),
        rate_runs(&r.hits, |p| &p.1),
        rate_runs(&r.misses, |p| &p.0),
        rate_runs(&r.misses, |p| &p.1),
    );
    let socket_errors: u64 = r
        .hits
        .iter()
        .chain(&r.misses)
        .map(|p| p.0.socket_errors + p.1.socket_errors)
        .sum();
    let _ = writeln!(
        w,
        "Socket errors reported by wrk over all runs: {socket_errors}.\n"
    );
    if let Some(h) = harmonia {
        let rate = |v: &[RateSample], f: fn(&RateSample) -> f64| median(v.iter().map(f).collect());
        let hh = rate(&h.hits, |x| x.per_second);
        let hc = rate(&h.hits, RateSample::cpu_us_per_request);
        let hm = rate(&h.misses, |x| x.per_second);
        let hmc = rate(&h.misses, RateSample::cpu_us_per_request);
        let _ = writeln!(
            w,
            "Harmonia in this run (the same wrk runs, each right after cairnd's and nginx's):\n"
        );
        let _ = writeln!(w, "| measurement | cairnd | Harmonia | cairnd/Harmonia |");
        let _ = writeln!(w, "|---|---:|---:|---:|");
        let us = |x: f64| format!("{x:.1} µs");
        for (what, ours, theirs, ratio) in [
            ("narinfo hits/s", k(hits_c), k(hh), hits_c / hh),
            ("server CPU per hit", us(hcpu_c), us(hc), hcpu_c / hc),
            ("narinfo misses/s", k(miss_c), k(hm), miss_c / hm),
            ("server CPU per miss", us(mcpu_c), us(hmc), mcpu_c / hmc),
        ] {
            let _ = writeln!(w, "| {what} | {ours} | {theirs} | {ratio:.2}× |");
        }
        let _ = writeln!(w);
        let runs = |v: &[RateSample]| {
            list(
                v.iter()
                    .map(|x| format!("{} ({:.1} µs)", k(x.per_second), x.cpu_us_per_request())),
            )
        };
        let _ = writeln!(
            w,
            "Harmonia runs: hits {}; misses {}.\n",
            runs(&h.hits),
            runs(&h.misses)
        );
    }

    // 3: NAR passes.
    let _ = writeln!(
        w,
        "## 3. Full-closure NAR pass, {} parallel downloads\n",
        st.parallel
    );
    let _ = writeln!(
        w,
        "`cairn-bench`'s client (tokio + reqwest) fetches every narinfo of the closure, then \
         every NAR at the narinfo's URL, {} at a time. Wall time covers both phases. \
         Wire bytes are the NAR response bodies as received; NAR throughput = NAR bytes / \
         wall. Every body was checked afterwards (zstd decoded where encoded; size = \
         NarSize; sha256 = NarHash).\n",
        st.parallel
    );
    let _ = writeln!(
        w,
        "| pass | server | wall | server CPU | NAR bytes | wire bytes | wire ratio | NAR throughput |"
    );
    let _ = writeln!(w, "|---|---|---:|---:|---:|---:|---:|---:|");
    for (name, server, p) in [
        ("(a) identity (no Accept-Encoding)", "cairnd", &id),
        ("(b) zstd, first time (cold variant cache)", "cairnd", &cold),
        (
            "(c) zstd, second time (warm variant cache)",
            "cairnd",
            &warm,
        ),
        ("(d) zstd, static `.nar.zst` files", "nginx", &ngx),
    ]
    .into_iter()
    .chain(
        h_id.as_ref()
            .map(|p| ("(e) identity (no Accept-Encoding)", "Harmonia", p)),
    )
    .chain(h_zstd.as_ref().map(|p| {
        (
            "(f) zstd, on the fly, fresh process (as cairnd's (b))",
            "Harmonia",
            p,
        )
    }))
    .chain(h_again.as_ref().map(|p| {
        (
            "(g) zstd, on the fly, again on (f)'s process",
            "Harmonia",
            p,
        )
    })) {
        let _ = writeln!(
            w,
            "| {name} | {server} | {:.2} s | {:.2} s | {} | {} | {:.3} | {} |",
            p.wall,
            p.cpu,
            mb(p.nar),
            mb(p.wire),
            p.wire_ratio,
            mbps(p.throughput)
        );
    }
    let pass_runs = |v: &[PassSample]| {
        list(v.iter().map(|p| {
            format!(
                "{:.2} s / {:.2} CPU-s",
                p.wall.as_secs_f64(),
                p.server_cpu_s
            )
        }))
    };
    let _ = write!(
        w,
        "\nRuns (wall / server CPU): (a) {}; (b) {}; (c) {}; (d) {}",
        pass_runs(&r.identity),
        pass_runs(&r.zstd_cold),
        pass_runs(&r.zstd_warm),
        pass_runs(&r.nginx_zstd)
    );
    if let Some(h) = harmonia {
        let _ = write!(
            w,
            "; (e) {}; (f) {}",
            pass_runs(&h.identity),
            pass_runs(&h.zstd)
        );
        if !h.zstd_again.is_empty() {
            let _ = write!(w, "; (g) {}", pass_runs(&h.zstd_again));
        }
    }
    let _ = writeln!(w, ".");
    let zstd_bodies =
        |v: &[PassSample]| list(v.iter().map(|p| format!("{}/{}", p.zstd_bodies, p.paths)));
    let _ = write!(
        w,
        "zstd-encoded bodies per run: (b) {}; (c) {}; (d) {}",
        zstd_bodies(&r.zstd_cold),
        zstd_bodies(&r.zstd_warm),
        zstd_bodies(&r.nginx_zstd)
    );
    if let Some(h) = harmonia {
        let _ = write!(w, "; (f) {}", zstd_bodies(&h.zstd));
        if !h.zstd_again.is_empty() {
            let _ = write!(w, "; (g) {}", zstd_bodies(&h.zstd_again));
        }
    }
    let _ = writeln!(w, ".\n");
    let _ = writeln!(
        w,
        "| comparison | cairnd | nginx / Harmonia | ratio | target |"
    );
    let _ = writeln!(w, "|---|---:|---:|---:|---|");
    let _ = writeln!(
        w,
        "| (a) identity NAR throughput | {} | {} | {} | ≥ 1 GB/s |",
        mbps(id.throughput),
        h_id.as_ref()
            .map_or("no identity variant".to_string(), |h| format!(
                "{harmonia_label} {}",
                mbps(h.throughput)
            )),
        h_id.as_ref().map_or("—".to_string(), |h| format!(
            "{:.2}×",
            id.throughput / h.throughput
        )),
    );
    let _ = writeln!(
        w,
        "| (a) identity server CPU | {:.2} s | {} | {} | ≤ {} s |",
        id.cpu,
        h_id.as_ref().map_or("—".to_string(), |h| format!(
            "{harmonia_label} {:.2} s",
            h.cpu
        )),
        h_id.as_ref()
            .map_or("—".to_string(), |h| format!("{:.2}×", id.cpu / h.cpu)),
        target::IDENTITY_CPU_S
    );
    let _ = writeln!(
        w,
        "| (b) zstd first time, NAR throughput | {} | {harmonia_label} {}{} | {:.2}× | ≥ {}× Harmonia = {} |",
        mbps(cold.throughput),
        mbps(harmonia_zstd_tp),
        if harmonia.is_some() { "" } else { " (corpus / 2.21 s)" },
        cold.throughput / harmonia_zstd_tp,
        target::ZSTD_COLD_VS_HARMONIA,
        mbps(cold_target_tp)
    );
    let _ = writeln!(
        w,
        "| (b) zstd first time, wire ratio | {:.3} | {harmonia_label} {:.3} | — | ≤ {} |",
        cold.wire_ratio,
        h_zstd
            .as_ref()
            .map_or(reference::HARMONIA_ZSTD_WIRE_RATIO, |h| h.wire_ratio),
        target::ZSTD_COLD_WIRE_RATIO
    );
    if let Some(h) = &h_zstd {
        let _ = writeln!(
            w,
            "| (b) zstd first time, server CPU | {:.2} s | {harmonia_label} {:.2} s | {:.2}× | — |",
            cold.cpu,
            h.cpu,
            cold.cpu / h.cpu
        );
    }
    if let Some(g) = &h_again {
        let _ = writeln!(
            w,
            "| (b) vs (g): against Harmonia's second pass | {} at {:.2} CPU-s | {} at {:.2} CPU-s | {:.2}× | — |",
            mbps(cold.throughput),
            cold.cpu,
            mbps(g.throughput),
            g.cpu,
            cold.throughput / g.throughput
        );
    }
    let _ = writeln!(
        w,
        "| (c) vs (d): zstd second time, NAR throughput | {} | nginx {} | {:.2}× | ≥ {}× nginx |",
        mbps(warm.throughput),
        mbps(ngx.throughput),
        warm.throughput / ngx.throughput,
        target::ZSTD_WARM_VS_NGINX
    );
    let _ = writeln!(
        w,
        "| (c) vs (d): server CPU | {:.2} s | nginx {:.2} s | {:.2}× | — |\n",
        warm.cpu,
        ngx.cpu,
        warm.cpu / ngx.cpu
    );

    // 4: memory.
    let _ = writeln!(w, "## 4. Peak RSS of cairnd\n");
    let _ = writeln!(
        w,
        "VmHWM from `/proc/PID/status` of each cairnd process just before it was stopped \
         (one process served all narinfo runs and the identity passes; each zstd repetition \
         ran on a fresh process with an empty data dir so its variant cache started cold).\n"
    );
    let _ = writeln!(w, "| cairnd process | peak RSS |");
    let _ = writeln!(w, "|---|---:|");
    for (what, bytes) in &r.peak_rss {
        let _ = writeln!(w, "| {what} | {} |", mib(*bytes));
    }
    let _ = writeln!(
        w,
        "| **whole benchmark (max)** | **{}** (target ≤ 64 MiB) |",
        mib(peak)
    );
    if let Some(h) = harmonia {
        let _ = writeln!(
            w,
            "| for comparison: Harmonia, the largest of its processes | {} |",
            mib(h.peak_rss)
        );
    }
    let _ = writeln!(w);

    // Verdicts.
    let upload_lines = match &r.uploads {
        Some(u) => crate::uploads::render(w, u),
        None => Vec::new(),
    };
    let _ = writeln!(w, "## Verdicts\n");
    let lines = [
        (
            hits_c >= target::HITS_VS_NGINX * hits_n,
            format!("narinfo hits ≥ 0.8× nginx: {:.2}×", hits_c / hits_n),
        ),
        (
            hcpu_c <= target::US_PER_HIT,
            format!("≤ 25 µs server CPU per hit, signing on: {hcpu_c:.1} µs"),
        ),
        (
            miss_c >= target::MISSES_VS_NGINX * miss_n,
            format!("narinfo misses ≥ 0.9× nginx: {:.2}×", miss_c / miss_n),
        ),
        (
            id.throughput >= target::IDENTITY_BYTES_PER_S,
            format!("identity pass ≥ 1 GB/s of NAR: {}", mbps(id.throughput)),
        ),
        (
            id.cpu <= target::IDENTITY_CPU_S,
            format!("identity pass ≤ 0.6 server CPU-s: {:.2} s", id.cpu),
        ),
        (
            cold.throughput >= cold_target_tp,
            format!(
                "zstd pass first time ≥ 1.5× Harmonia's throughput ({} {}): {} = {:.2}×",
                if harmonia.is_some() {
                    "measured in this run,"
                } else {
                    "its reference figure,"
                },
                mbps(cold_target_tp),
                mbps(cold.throughput),
                cold.throughput / harmonia_zstd_tp
            ),
        ),
        (
            cold.wire_ratio <= target::ZSTD_COLD_WIRE_RATIO,
            format!(
                "zstd pass first time at wire ratio ≤ 0.45: {:.3}",
                cold.wire_ratio
            ),
        ),
        (
            warm.throughput >= target::ZSTD_WARM_VS_NGINX * ngx.throughput,
            format!(
                "zstd pass second time ≥ 0.8× nginx throughput: {:.2}×",
                warm.throughput / ngx.throughput
            ),
        ),
        (
            peak <= target::PEAK_RSS_BYTES,
            format!("peak RSS ≤ 64 MiB: {}", mib(peak)),
        ),
    ];
    for (ok, text) in lines.iter().chain(&upload_lines) {
        let _ = writeln!(w, "- {}: {text}", verdict(*ok));
    }
    let _ = writeln!(w);

    // Reference.
    let _ = writeln!(w, "## Reference numbers (NOT measured in this run)\n");
    let _ = writeln!(
        w,
        "Quoted from the issue: Harmonia 3.2 and nginx over a static cache, measured earlier \
         in a comparable setup with the same corpus. When Harmonia was not measured in this \
         run, its zstd wall time here is the yardstick of the first-time zstd target.\n"
    );
    let _ = writeln!(
        w,
        "| measurement | Harmonia 3.2 (ref.) | nginx static (ref.) |"
    );
    let _ = writeln!(w, "|---|---:|---:|");
    let _ = writeln!(
        w,
        "| narinfo hits/s | {} | {} |",
        k(reference::HARMONIA_HITS_PER_S),
        k(reference::NGINX_HITS_PER_S)
    );
    let _ = writeln!(
        w,
        "| server CPU per hit | {} µs | {} µs |",
        reference::HARMONIA_US_PER_HIT,
        reference::NGINX_US_PER_HIT
    );
    let _ = writeln!(
        w,
        "| narinfo misses/s | {} | {} |",
        k(reference::HARMONIA_MISSES_PER_S),
        k(reference::NGINX_MISSES_PER_S)
    );
    let _ = writeln!(
        w,
        "| identity pass | {} s, {} CPU-s | — |",
        reference::HARMONIA_IDENTITY_WALL_S,
        reference::HARMONIA_IDENTITY_CPU_S
    );
    let _ = writeln!(
        w,
        "| zstd pass | {} s, {} CPU-s, wire ratio {} | — |",
        reference::HARMONIA_ZSTD_WALL_S,
        reference::HARMONIA_ZSTD_CPU_S,
        reference::HARMONIA_ZSTD_WIRE_RATIO
    );
    let _ = writeln!(
        w,
        "| peak RSS | {} MB | — |\n",
        reference::HARMONIA_PEAK_RSS_MB
    );

    // Notes.
    let _ = writeln!(w, "## How this was measured, and caveats\n");
    let notes = [
        format!(
            "The machine has {} CPUs, shared by the server under test, wrk or the NAR client, \
             and whatever else ran on it; every client's CPU use competes with the server's. \
             The NAR client keeps bodies in memory and verifies them after the clock stops \
             (on all cores) so that decoding and hashing do not take CPU from the server \
             during the timed part.",
            m.nproc
        ),
        "Both servers were warmed before timing (one untimed NAR pass each), so store files, \
         the static cache and Nix's database are in the page cache. The narinfo hit runs \
         cycle over the same URLs, so after the first round cairnd answers from its \
         signature cache (ed25519 work only once per path), as it would in steady state."
            .to_string(),
        "nginx: generated minimal config, `worker_processes auto`, `sendfile on`, \
         `access_log off`, `log_not_found off` (no error-log line per miss), keep-alive with \
         `keepalive_requests` raised so neither server closes benchmark connections."
            .to_string(),
        "zstd passes (b) and (c) ask for the plain `.nar` URL of cairnd's narinfo \
         (`narinfo_compression none`) with `Accept-Encoding: zstd`; (d) fetches the \
         `.nar.zst` files the static narinfos name. Each repetition of (b) runs on a new \
         cairnd process with an empty `--data-dir`, then (c) on the same process, then (d); \
         with Harmonia, (f) on a new Harmonia process (treated as cairnd's: no warm-up), \
         then (g) on that same process. The first-time target compares (b) with (f); (g) \
         shows what a process that already served costs instead (on this machine a \
         process's first touch of memory is expensive, see bench/README.md)."
            .to_string(),
        "MB = 10^6 bytes, GB = 10^9 bytes, MiB = 2^20 bytes.".to_string(),
    ];
    for n in &notes {
        let _ = writeln!(w, "- {n}");
    }
    let _ = writeln!(w);
    let _ = writeln!(w, "## cairnd's log\n");
    if r.cairnd_log.is_empty() {
        let _ = writeln!(w, "No warnings or errors logged by cairnd during the run.");
    } else {
        let _ = writeln!(w, "Warnings and errors cairnd logged during the run:\n");
        let _ = writeln!(w, "```");
        for l in &r.cairnd_log {
            let _ = writeln!(w, "{l}");
        }
        let _ = writeln!(w, "```");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }
}
