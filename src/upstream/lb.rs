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

/// Envoy's default `healthy_panic_threshold`: below 50 % healthy hosts, a priority level
/// balances over all its hosts.
const HEALTHY_PANIC_THRESHOLD_PERCENT: u32 = 50;

/// What the selector needs to know of a host.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    /// Index into the cluster's hosts.
    pub index: u32,
    pub priority: u32,
    pub weight: u32,
    pub healthy: bool,
}

/// One priority level: its share of requests (percent) and its pick order.
#[derive(Debug)]
struct Level {
    load: u32,
    schedule: Schedule,
    panic: bool,
}

/// Picks a host across priority levels the way Envoy does: each level is worth
/// `healthy / total × overprovisioning_factor` (capped at 100 %), levels take load in
/// priority order up to their worth, and a level with fewer than half its hosts healthy
/// balances over all of them (panic mode).
#[derive(Debug)]
pub struct HostSelector {
    levels: Vec<Level>,
}

impl HostSelector {
    /// Builds the selector for `hosts` with `overprovisioning_factor` in percent.
    pub fn new(kind: LbKind, hosts: &[Candidate], overprovisioning_factor: u32) -> HostSelector {
        let max_priority = hosts.iter().map(|h| h.priority).max();
        let mut levels = Vec::new();
        let mut healths = Vec::new();
        for priority in 0..=max_priority.unwrap_or(0) {
            let level: Vec<&Candidate> = hosts.iter().filter(|h| h.priority == priority).collect();
            let total = level.len() as u64;
            let healthy = level.iter().filter(|h| h.healthy).count() as u64;
            let health =
                (healthy * u64::from(overprovisioning_factor)).checked_div(total).map_or(0, |h| h.min(100) as u32);
            let panic = total > 0 && healthy * 100 < total * u64::from(HEALTHY_PANIC_THRESHOLD_PERCENT);
            let eligible: Vec<(u32, u32)> =
                level.iter().filter(|h| panic || h.healthy).map(|h| (h.index, h.weight)).collect();
            healths.push(health);
            levels.push(Level { load: 0, schedule: Schedule::new(kind, &eligible), panic });
        }
        let total_health: u32 = healths.iter().sum::<u32>().min(100);
        let mut remaining = 100;
        for (level, health) in levels.iter_mut().zip(&healths) {
            level.load = (health * 100).checked_div(total_health).unwrap_or(0).min(remaining);
            remaining -= level.load;
        }
        // Rounding leftovers go to the first level that takes load; with nothing healthy
        // anywhere, everything goes to the first level that has hosts, in panic.
        let first = if total_health == 0 {
            levels.iter_mut().find(|l| !l.schedule.is_empty())
        } else {
            levels.iter_mut().find(|l| l.load > 0)
        };
        if let Some(level) = first {
            level.load += remaining;
        }
        levels.retain(|l| l.load > 0);
        HostSelector { levels }
    }

    /// Picks a host index with the worker's `cursor`; also says whether the level was in
    /// panic. `None`: no host to pick.
    pub fn pick(&self, cursor: &mut u64) -> Option<(u32, bool)> {
        let level = match self.levels.as_slice() {
            [] => return None,
            [only] => only,
            levels => {
                let mut draw = fastrand::u32(..100);
                levels.iter().find(|l| draw.checked_sub(l.load).map(|rest| draw = rest).is_none())?
            }
        };
        level.schedule.pick(cursor).map(|index| (index, level.panic))
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

    fn candidates(spec: &[(u32, bool)]) -> Vec<Candidate> {
        spec.iter()
            .enumerate()
            .map(|(i, &(priority, healthy))| Candidate { index: i as u32, priority, weight: 1, healthy })
            .collect()
    }

    fn spread(selector: &HostSelector, picks: usize, hosts: usize) -> Vec<usize> {
        let mut cursor = 0;
        let mut counts = vec![0; hosts];
        for _ in 0..picks {
            counts[selector.pick(&mut cursor).unwrap().0 as usize] += 1;
        }
        counts
    }

    #[test]
    fn a_healthy_first_priority_takes_everything() {
        let s = HostSelector::new(LbKind::RoundRobin, &candidates(&[(0, true), (0, true), (1, true)]), 140);
        assert_eq!(spread(&s, 100, 3), [50, 50, 0]);
    }

    #[test]
    fn a_degraded_first_priority_spills_over_by_the_overprovisioning_factor() {
        // P0: 1 of 2 healthy → worth 70 %; P1 healthy takes the remaining 30 %.
        let hosts = candidates(&[(0, true), (0, false), (1, true)]);
        let s = HostSelector::new(LbKind::RoundRobin, &hosts, 140);
        let counts = spread(&s, 10_000, 3);
        assert_eq!(counts[1], 0, "the unhealthy host gets nothing");
        assert!((6_500..7_500).contains(&counts[0]), "{counts:?}");
        // With a factor of 100, P0 is worth only 50 %.
        let s = HostSelector::new(LbKind::RoundRobin, &hosts, 100);
        let counts = spread(&s, 10_000, 3);
        assert!((4_500..5_500).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn panic_mode_balances_over_all_hosts_of_a_level() {
        // 1 of 3 healthy in the only level: below 50 %, so all three take traffic.
        let s = HostSelector::new(LbKind::RoundRobin, &candidates(&[(0, true), (0, false), (0, false)]), 140);
        let mut cursor = 0;
        assert!(s.pick(&mut cursor).unwrap().1, "the pick reports panic mode");
        assert_eq!(spread(&s, 300, 3), [100, 100, 100]);
        // Nothing healthy at all: still served, in panic, by the first level.
        let s = HostSelector::new(LbKind::RoundRobin, &candidates(&[(0, false), (1, false)]), 140);
        assert_eq!(spread(&s, 10, 2), [10, 0]);
    }

    #[test]
    fn empty_has_no_pick() {
        let s = Schedule::new(LbKind::RoundRobin, &[]);
        assert_eq!(s.pick(&mut 0), None);
    }
}
