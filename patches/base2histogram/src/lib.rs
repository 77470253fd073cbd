//! A small histogram with logarithmic buckets: the part of base2histogram's API that
//! openraft uses, without its precomputed tables (see README.md for why this exists).
//!
//! Values below 4 have a bucket each; above, every power of two is split into 4 equal
//! buckets, so a bucket's width is at most a quarter of its lower bound and a reported
//! percentile (the bucket's lower bound) is within 25% below the true value. 252 buckets
//! cover all of `u64`.

use std::fmt;
use std::marker::PhantomData;

/// Sub-buckets per power of two (a power of two itself).
const SPLIT: u64 = 4;
const SPLIT_BITS: u32 = SPLIT.trailing_zeros();
/// Buckets covering `0..=u64::MAX`.
const BUCKETS: usize = (SPLIT as usize) * (64 - SPLIT_BITS as usize + 1);

/// The bucket holding `v`.
fn bucket_of(v: u64) -> usize {
    if v < SPLIT {
        return v as usize;
    }
    let top = 63 - v.leading_zeros(); // >= SPLIT_BITS
    let sub = (v >> (top - SPLIT_BITS)) & (SPLIT - 1);
    (SPLIT as usize) * (top - SPLIT_BITS + 1) as usize + sub as usize
}

/// The smallest value in bucket `i`.
fn lower_bound(i: usize) -> u64 {
    let i = i as u64;
    if i < SPLIT {
        return i;
    }
    let top = i / SPLIT - 1 + u64::from(SPLIT_BITS);
    let sub = i % SPLIT;
    (SPLIT + sub) << (top - u64::from(SPLIT_BITS))
}

/// Counts of recorded values by logarithmic bucket. `T` is accepted for compatibility
/// with base2histogram's signature (it tags time slots there); nothing here uses it.
pub struct Histogram<T = ()> {
    counts: Vec<u64>,
    total: u64,
    _slot: PhantomData<fn() -> T>,
}

impl<T> Histogram<T> {
    pub fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            _slot: PhantomData,
        }
    }

    /// Records one occurrence of `value`.
    pub fn record(&mut self, value: u64) {
        self.record_n(value, 1);
    }

    /// Records `count` occurrences of `value`.
    pub fn record_n(&mut self, value: u64, count: u64) {
        self.counts[bucket_of(value)] += count;
        self.total += count;
    }

    /// Values recorded.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The lower bound of the bucket holding the value at fraction `p` (0.0 to 1.0) of
    /// the recorded values in ascending order; 0 when nothing was recorded.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        // The rank (1-based) of the value asked for.
        let rank = ((p.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return lower_bound(i);
            }
        }
        lower_bound(BUCKETS - 1)
    }

    /// The usual percentiles at once.
    pub fn percentile_stats(&self) -> PercentileStats {
        PercentileStats {
            samples: self.total,
            p0_1: self.percentile(0.001),
            p1: self.percentile(0.01),
            p5: self.percentile(0.05),
            p10: self.percentile(0.10),
            p50: self.percentile(0.50),
            p90: self.percentile(0.90),
            p99: self.percentile(0.99),
            p99_9: self.percentile(0.999),
        }
    }

    /// Non-empty buckets as (lower bound, count), ascending.
    fn occupied(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(i, &c)| (lower_bound(i), c))
    }
}

impl<T> Default for Histogram<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for Histogram<T> {
    fn clone(&self) -> Self {
        Histogram {
            counts: self.counts.clone(),
            total: self.total,
            _slot: PhantomData,
        }
    }
}

impl<T> PartialEq for Histogram<T> {
    fn eq(&self, other: &Self) -> bool {
        self.total == other.total && self.counts == other.counts
    }
}

impl<T> Eq for Histogram<T> {}

impl<T> fmt::Debug for Histogram<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histogram")
            .field("total", &self.total)
            .field("buckets", &self.occupied().collect::<Vec<_>>())
            .finish()
    }
}

/// Percentiles of a histogram (each a bucket's lower bound) and its sample count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PercentileStats {
    pub samples: u64,
    pub p0_1: u64,
    pub p1: u64,
    pub p5: u64,
    pub p10: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p99_9: u64,
}

impl fmt::Display for PercentileStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "n={} p0.1={} p1={} p5={} p10={} p50={} p90={} p99={} p99.9={}",
            self.samples,
            self.p0_1,
            self.p1,
            self.p5,
            self.p10,
            self.p50,
            self.p90,
            self.p99,
            self.p99_9
        )
    }
}

/// Several named histograms drawn as text, one bar per occupied bucket.
pub struct AsciiChart<T = ()> {
    series: Vec<(String, Histogram<T>)>,
}

impl<T> AsciiChart<T> {
    pub fn new() -> Self {
        AsciiChart { series: Vec::new() }
    }

    pub fn add(mut self, name: &str, hist: Histogram<T>) -> Self {
        self.series.push((name.to_string(), hist));
        self
    }

    /// Every series: its percentiles, then a bar per occupied bucket.
    pub fn detailed(&self) -> Detailed<'_, T> {
        Detailed(self)
    }
}

impl<T> Default for AsciiChart<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// [`AsciiChart::detailed`]'s rendering.
pub struct Detailed<'a, T>(&'a AsciiChart<T>);

impl<T> fmt::Display for Detailed<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const WIDTH: u64 = 40;
        for (name, hist) in &self.0.series {
            writeln!(f, "{name}: {}", hist.percentile_stats())?;
            let most = hist.occupied().map(|(_, c)| c).max().unwrap_or(0);
            for (low, count) in hist.occupied() {
                let bar = (count * WIDTH).div_ceil(most) as usize;
                writeln!(f, "  >= {low:>12} {:<40} {count}", "#".repeat(bar))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_u64_in_order_with_bounded_width() {
        assert_eq!(BUCKETS, 252);
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        for i in 0..BUCKETS {
            let low = lower_bound(i);
            assert_eq!(bucket_of(low), i, "bucket {i} starts at {low}");
            if i > 0 {
                assert_eq!(bucket_of(low - 1), i - 1, "bucket {i} follows on");
            }
            if i + 1 < BUCKETS {
                let width = lower_bound(i + 1) - low;
                assert!(width <= low.max(4) / 4 + 1, "bucket {i} too wide: {width}");
            }
        }
    }

    #[test]
    fn percentiles_fall_in_the_right_bucket() {
        let mut h = Histogram::<()>::new();
        assert_eq!(h.percentile_stats(), PercentileStats::default());
        for v in 1..=1000 {
            h.record(v);
        }
        let s = h.percentile_stats();
        assert_eq!(s.samples, 1000);
        assert_eq!(s.p0_1, 1);
        assert_eq!(s.p1, 10);
        // 500 lies in [448, 512); 990 and 999 in [896, 1024).
        assert_eq!(s.p50, 448);
        assert_eq!((s.p99, s.p99_9), (896, 896));
        assert!(s.p5 <= 50 && s.p5 * 5 / 4 >= 50, "{}", s.p5);
        assert!(s.p90 <= 900 && s.p90 * 5 / 4 >= 900, "{}", s.p90);
    }

    #[test]
    fn counts_and_equality() {
        let mut a = Histogram::<()>::new();
        let mut b = Histogram::<()>::new();
        a.record(7);
        a.record(7);
        b.record_n(7, 2);
        assert_eq!(a, b);
        b.record(1 << 40);
        assert_eq!(b.total(), 3);
        assert_eq!(b.percentile(1.0), 1 << 40);
        assert_eq!(b.percentile(0.5), 7);
        assert_ne!(a, b);
        let chart = AsciiChart::new().add("b", b.clone()).detailed().to_string();
        assert!(chart.starts_with("b: n=3 "), "{chart}");
        assert_eq!(chart.lines().count(), 3, "{chart}");
    }
}
