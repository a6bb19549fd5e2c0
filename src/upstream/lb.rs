//! Load balancing over a cluster's host set. The schedule is built off the hot path when
//! the host set changes; picking is an index into it with a per-worker cursor.

use crate::config::cluster::LbKind;

/// The longest weighted round-robin schedule kept; larger weight sums are scaled down.
const MAX_SCHEDULE_LEN: u64 = 4096;

/// A precomputed pick order over host indices.
#[derive(Debug, Clone)]
pub struct Schedule {
    kind: LbKind,
    /// Host indices in smooth weighted round-robin order (each index `weight` times,
    /// interleaved). Empty when there are no hosts.
    order: Box<[u32]>,
}

impl Schedule {
    /// Builds the schedule for hosts with these weights (indices into the caller's hosts).
    pub fn new(kind: LbKind, weights: &[(u32, u32)]) -> Schedule {
        Schedule { kind, order: smooth_weighted_order(weights).into_boxed_slice() }
    }

    /// Whether there is no host to pick.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Picks a host index. `cursor` is the calling worker's own position, so workers
    /// never contend; it starts at a random offset, as Envoy seeds each worker's
    /// round robin, so that workers do not all begin with the same host.
    pub fn pick(&self, cursor: &mut u64) -> Option<u32> {
        if self.order.is_empty() {
            return None;
        }
        let len = self.order.len() as u64;
        let slot = match self.kind {
            LbKind::RoundRobin => {
                let slot = *cursor % len;
                *cursor = cursor.wrapping_add(1);
                slot
            }
            LbKind::Random => fastrand::u64(..len),
        };
        Some(self.order[slot as usize])
    }
}

/// Smooth weighted round robin (each step: add every weight to its current value, pick
/// the largest, subtract the total), which spreads a heavy host's turns evenly instead of
/// sending it a burst. With equal weights it is plain round robin.
fn smooth_weighted_order(weights: &[(u32, u32)]) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let divisor = weights.iter().fold(0u64, |g, &(_, w)| gcd(g, u64::from(w))).max(1);
    let mut scaled: Vec<(u32, u64)> = weights.iter().map(|&(i, w)| (i, u64::from(w) / divisor)).collect();
    let total: u64 = scaled.iter().map(|&(_, w)| w).sum();
    if total > MAX_SCHEDULE_LEN {
        // Keep proportions approximately, never dropping a host.
        for (_, w) in &mut scaled {
            *w = (*w * MAX_SCHEDULE_LEN / total).max(1);
        }
    }
    let total: i64 = scaled.iter().map(|&(_, w)| w as i64).sum();
    let mut current = vec![0i64; scaled.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (k, &(_, w)) in scaled.iter().enumerate() {
            current[k] += w as i64;
            if current[k] > current[best] {
                best = k;
            }
        }
        current[best] -= total;
        order.push(scaled[best].0);
    }
    order
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(schedule: &Schedule, picks: usize, hosts: usize) -> Vec<usize> {
        let mut cursor = 0;
        let mut counts = vec![0; hosts];
        for _ in 0..picks {
            counts[schedule.pick(&mut cursor).unwrap() as usize] += 1;
        }
        counts
    }

    #[test]
    fn equal_weights_alternate() {
        let s = Schedule::new(LbKind::RoundRobin, &[(0, 1), (1, 1), (2, 1)]);
        let mut cursor = 0;
        let picks: Vec<u32> = (0..6).map(|_| s.pick(&mut cursor).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weights_are_honoured_and_interleaved() {
        let s = Schedule::new(LbKind::RoundRobin, &[(0, 3), (1, 1)]);
        assert_eq!(counts(&s, 400, 2), [300, 100]);
        let s = Schedule::new(LbKind::RoundRobin, &[(0, 1), (1, 1), (2, 2)]);
        let mut cursor = 0;
        let order: Vec<u32> = (0..8).map(|_| s.pick(&mut cursor).unwrap()).collect();
        // Within one cycle the heavy host never takes two turns in a row.
        assert!(order[..4].windows(2).all(|w| w[0] != w[1]), "a heavy host's turns are spread, not bunched: {order:?}");
        assert_eq!(order.iter().filter(|&&h| h == 2).count(), 4);
    }

    #[test]
    fn huge_weights_are_scaled_without_dropping_hosts() {
        let s = Schedule::new(LbKind::RoundRobin, &[(0, 1_000_000), (1, 1)]);
        assert!(s.order.len() as u64 <= MAX_SCHEDULE_LEN + 1);
        assert!(s.order.contains(&1));
    }

    #[test]
    fn empty_has_no_pick() {
        let s = Schedule::new(LbKind::RoundRobin, &[]);
        assert_eq!(s.pick(&mut 0), None);
    }
}
