//! What the benchmarks under `examples/` share.

/// The number of rounds the benchmark's first argument asks for, else 10.
pub fn rounds() -> usize {
    std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10)
}

/// The median of `v` (sorted in place; the upper one of an even count).
pub fn median<T: PartialOrd + Copy>(v: &mut [T]) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}
