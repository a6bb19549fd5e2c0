//! Load balancing over a cluster's host set. What does not depend on load is computed off
//! the hot path when the host set changes; a pick reads the worker's own state
//! (`WorkerLb`) and, for least request, the hosts' active request counts.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::consistent_hash::{Maglev, Ring};
use crate::config::cluster::{LbKind, LeastRequest};

/// The longest weighted round-robin schedule kept; larger weight sums are scaled down.
const MAX_SCHEDULE_LEN: u64 = 4096;

/// The most picks a new weighted least-request schedule skips to start at a random place:
/// the first request after a host set change pays for them.
const EDF_MAX_START_PICKS: u64 = 256;

/// A worker's own load-balancing state for one version of a cluster, so workers never
/// contend over it.
#[derive(Debug)]
pub struct WorkerLb {
    /// Position in round-robin orders.
    cursor: u64,
    /// Weighted least request: the worker's schedule for each priority level, made at the
    /// level's first pick (as each Envoy worker has its own).
    edf: Vec<Option<Edf>>,
}

impl Default for WorkerLb {
    /// A fresh state. The cursor starts at a random offset, as Envoy seeds each worker's
    /// round robin, so that workers do not all begin with the same host.
    fn default() -> WorkerLb {
        WorkerLb { cursor: fastrand::u64(..), edf: Vec::new() }
    }
}

impl WorkerLb {
    /// The state for a rebuilt version of the cluster: round robin goes on where it was;
    /// the weighted schedules start over, as Envoy's do when a host set changes.
    pub fn carried_over(&self) -> WorkerLb {
        WorkerLb { cursor: self.cursor, edf: Vec::new() }
    }
}

/// How one priority level picks among its eligible hosts (indices into the cluster's).
#[derive(Debug)]
enum Schedule {
    /// Round robin, or random, over host indices in smooth weighted round-robin order
    /// (each index `weight` times, interleaved).
    Order { random: bool, order: Box<[u32]> },
    /// Least request over hosts of equal weight: of `choices` hosts drawn at random (with
    /// replacement), the one with the fewest active requests; on a tie, the first drawn.
    Choices { choices: u32, hosts: Box<[u32]> },
    /// Least request over hosts of unequal weights: earliest deadline first, a picked host
    /// next due after `1 / weight`, its weight divided by `(active requests + 1)^bias` at
    /// the time of the pick.
    Weighted { bias: f64, hosts: Box<[(u32, u32)]> },
    /// Ring hash: the request's hash picks the host.
    Ring(Ring),
    /// Maglev: the request's hash picks the host.
    Maglev(Maglev),
}

impl Schedule {
    /// The schedule for hosts with these weights (indices into the caller's hosts); `key`
    /// names a host for ring hash and Maglev.
    fn new(kind: LbKind, weights: &[(u32, u32)], key: &dyn Fn(u32) -> String) -> Schedule {
        let keyed = || -> Vec<(u32, u32, String)> { weights.iter().map(|&(i, w)| (i, w, key(i))).collect() };
        match kind {
            LbKind::RingHash(ring) => Schedule::Ring(Ring::new(&keyed(), ring.min_size, ring.max_size)),
            LbKind::Maglev(maglev) => Schedule::Maglev(Maglev::new(&keyed(), maglev.table_size)),
            LbKind::RoundRobin | LbKind::Random => Schedule::Order {
                random: kind == LbKind::Random,
                order: smooth_weighted_order(weights).into_boxed_slice(),
            },
            // Envoy takes the weighted path only when the weights differ.
            LbKind::LeastRequest(LeastRequest { choice_count, .. })
                if weights.windows(2).all(|pair| pair[0].1 == pair[1].1) =>
            {
                Schedule::Choices { choices: choice_count, hosts: weights.iter().map(|&(i, _)| i).collect() }
            }
            LbKind::LeastRequest(LeastRequest { active_request_bias, .. }) => {
                Schedule::Weighted { bias: active_request_bias, hosts: weights.into() }
            }
        }
    }

    /// Whether there is no host to pick.
    fn is_empty(&self) -> bool {
        match self {
            Schedule::Order { order, .. } => order.is_empty(),
            Schedule::Choices { hosts, .. } => hosts.is_empty(),
            Schedule::Weighted { hosts, .. } => hosts.is_empty(),
            Schedule::Ring(ring) => ring.is_empty(),
            Schedule::Maglev(maglev) => maglev.is_empty(),
        }
    }

    /// Picks a host index with the worker's round-robin `cursor` and its weighted
    /// schedule for this level, `edf`; `active` gives a host's active requests, `hash` the
    /// request's hash and how many picks of it came before (read by ring hash and Maglev).
    fn pick(
        &self,
        cursor: &mut u64,
        edf: &mut Option<Edf>,
        active: &impl Fn(u32) -> u64,
        (hash, attempt): (u64, u32),
    ) -> Option<u32> {
        if self.is_empty() {
            return None;
        }
        match self {
            Schedule::Order { random, order } => {
                let len = order.len() as u64;
                let slot = if *random { fastrand::u64(..len) } else { *cursor % len };
                *cursor = cursor.wrapping_add(1);
                Some(order[slot as usize])
            }
            Schedule::Choices { choices, hosts } => {
                let draw = || hosts[fastrand::usize(..hosts.len())];
                let mut best = draw();
                let mut best_active = active(best);
                for _ in 1..*choices {
                    let candidate = draw();
                    let candidate_active = active(candidate);
                    if candidate_active < best_active {
                        (best, best_active) = (candidate, candidate_active);
                    }
                }
                Some(best)
            }
            Schedule::Weighted { bias, hosts } => {
                let weight = |slot: u32| {
                    let (index, weight) = hosts[slot as usize];
                    effective_weight(weight, active(index), *bias)
                };
                let edf = edf.get_or_insert_with(|| Edf::new(hosts, &weight));
                Some(hosts[edf.pick_and_add(&weight) as usize].0)
            }
            Schedule::Ring(ring) => ring.pick(hash, attempt),
            Schedule::Maglev(maglev) => maglev.pick(hash, attempt),
        }
    }
}

/// Envoy's least-request weight: `weight / (active + 1)^bias`.
fn effective_weight(weight: u32, active: u64, bias: f64) -> f64 {
    let load = active.saturating_add(1) as f64;
    let weight = f64::from(weight);
    if bias == 1.0 {
        weight / load
    } else if bias == 0.0 {
        weight
    } else {
        weight / load.powf(bias)
    }
}

/// An earliest-deadline-first schedule over the slots of a `Schedule::Weighted`: each slot
/// is due `1 / weight` after the time it was last picked at; the earliest due is picked
/// next, ties in the order they were added.
#[derive(Debug)]
struct Edf {
    now: f64,
    added: u64,
    due: BinaryHeap<Due>,
}

#[derive(Debug)]
struct Due {
    at: f64,
    added: u64,
    slot: u32,
}

impl Ord for Due {
    /// Reversed, so that the max-heap yields the earliest due first.
    fn cmp(&self, other: &Due) -> Ordering {
        other.at.total_cmp(&self.at).then(other.added.cmp(&self.added))
    }
}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Due) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Due {
    fn eq(&self, other: &Due) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Due {}

impl Edf {
    /// Every slot due at `1 / weight`, then advanced by a random number of picks below
    /// the weights' sum (at most `EDF_MAX_START_PICKS`), so that workers do not all start
    /// at the same place in the cycle.
    fn new(hosts: &[(u32, u32)], weight: &impl Fn(u32) -> f64) -> Edf {
        let mut edf = Edf { now: 0.0, added: 0, due: BinaryHeap::with_capacity(hosts.len()) };
        for slot in 0..hosts.len() as u32 {
            edf.add(slot, weight(slot));
        }
        let cycle: u64 = hosts.iter().map(|&(_, w)| u64::from(w)).sum();
        for _ in 0..fastrand::u64(..cycle.clamp(1, EDF_MAX_START_PICKS)) {
            edf.pick_and_add(weight);
        }
        edf
    }

    fn add(&mut self, slot: u32, weight: f64) {
        // A weight of 0 (or less) would never come due again; the smallest positive keeps
        // the slot in the schedule, as last.
        let at = self.now + 1.0 / weight.max(f64::MIN_POSITIVE);
        self.due.push(Due { at, added: self.added, slot });
        self.added += 1;
    }

    /// Takes the earliest due slot and puts it back due after its weight as of now.
    fn pick_and_add(&mut self, weight: &impl Fn(u32) -> f64) -> u32 {
        let Due { at, slot, .. } = self.due.pop().expect("an EDF schedule holds every slot");
        self.now = at;
        self.add(slot, weight(slot));
        slot
    }
}

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
/// priority order up to their worth, and a level with a healthy share below the panic
/// threshold balances over all its hosts (panic mode). With no level worth anything, all
/// are in panic and take load by their number of hosts, unless the threshold is 0, which
/// turns panic off: then there is no host to pick.
#[derive(Debug)]
pub struct HostSelector {
    /// Every priority level, by priority, those without load too: a retry avoiding the
    /// priorities it tried (`previous_priorities`) may send load there.
    levels: Vec<Level>,
    /// Each level's health: healthy share × overprovisioning factor, at most 100 %.
    health: Box<[u32]>,
    /// The levels with load: none, just one (picked without a draw), or several.
    loaded: Loaded,
    /// Nothing is healthy anywhere and panic is on. A cluster without hosts is such a one:
    /// as in Envoy, its picks find nothing but still count as made in panic.
    total_panic: bool,
}

#[derive(Debug, Clone, Copy)]
enum Loaded {
    None,
    One(usize),
    Several,
}

impl HostSelector {
    /// Builds the selector for `hosts` with `overprovisioning_factor` and
    /// `panic_threshold` in percent; `key` names a host for ring hash and Maglev (its
    /// address, or its hostname).
    pub fn new(
        kind: LbKind,
        hosts: &[Candidate],
        overprovisioning_factor: u32,
        panic_threshold: u32,
        key: &dyn Fn(u32) -> String,
    ) -> HostSelector {
        let max_priority = hosts.iter().map(|h| h.priority).max().unwrap_or(0);
        let by_level: Vec<Vec<&Candidate>> =
            (0..=max_priority).map(|p| hosts.iter().filter(|h| h.priority == p).collect()).collect();
        let healthy = |level: &[&Candidate]| level.iter().filter(|h| h.healthy).count() as u64;
        let healths: Vec<u32> = by_level
            .iter()
            .map(|level| {
                (healthy(level) * u64::from(overprovisioning_factor))
                    .checked_div(level.len() as u64)
                    .map_or(0, |h| h.min(100) as u32)
            })
            .collect();
        let total_health: u32 = healths.iter().sum::<u32>().min(100);
        let total_panic = total_health == 0;
        if total_panic && panic_threshold == 0 {
            return HostSelector {
                levels: Vec::new(),
                health: healths.into(),
                loaded: Loaded::None,
                total_panic: false,
            };
        }
        let mut levels: Vec<Level> = by_level
            .iter()
            .map(|level| {
                let total = level.len() as u64;
                let panic = total_panic || healthy(level) * 100 < total * u64::from(panic_threshold);
                let eligible: Vec<(u32, u32)> =
                    level.iter().filter(|h| panic || h.healthy).map(|h| (h.index, h.weight)).collect();
                Level { load: 0, schedule: Schedule::new(kind, &eligible, key), panic }
            })
            .collect();
        let mut remaining = 100;
        for (i, level) in levels.iter_mut().enumerate() {
            let load = if total_panic {
                (100 * by_level[i].len() / hosts.len().max(1)) as u32
            } else {
                healths[i] * 100 / total_health
            };
            level.load = load.min(remaining);
            remaining -= level.load;
        }
        // Rounding leftovers go to the first level with hosts to pick.
        if let Some(level) = levels.iter_mut().find(|l| !l.schedule.is_empty()) {
            level.load += remaining;
        }
        let mut with_load = levels.iter().enumerate().filter(|(_, l)| l.load > 0).map(|(i, _)| i);
        let loaded = match (with_load.next(), with_load.next()) {
            (None, _) => Loaded::None,
            (Some(i), None) => Loaded::One(i),
            (Some(_), Some(_)) => Loaded::Several,
        };
        HostSelector { levels, health: healths.into(), loaded, total_panic }
    }

    /// The loads by priority with the `excluded` priorities (a bit each) taking none, the
    /// others sharing all of it by their health, as Envoy's `previous_priorities` retry
    /// priority shares it; `None` when nothing else is healthy.
    pub fn loads_without(&self, excluded: u64) -> Option<Box<[u32]>> {
        let kept = |p: usize| p >= 64 || excluded & (1 << p) == 0;
        let health: Vec<u32> = self.health.iter().enumerate().map(|(p, &h)| if kept(p) { h } else { 0 }).collect();
        let total = health.iter().sum::<u32>().min(100);
        if total == 0 {
            return None;
        }
        let mut loads = vec![0; health.len()];
        let mut left = 100;
        // Each round hands every level its share of what is left, until all of it is given.
        while left != 0 {
            for (load, &h) in loads.iter_mut().zip(&health) {
                let delta = (h * 100 / total).min(left);
                *load += delta;
                left -= delta;
            }
        }
        Some(loads.into())
    }

    /// Picks a host index with the worker's `state` (`None`: no host to pick); `active`
    /// gives a host's active requests (read by least request only), `hash` the request's
    /// hash and how many picks of it came before (ring hash and Maglev: without a hash, a
    /// random one), `loads` the loads by priority when a retry changed them. Also says
    /// whether the pick was made in panic.
    pub fn pick(
        &self,
        state: &mut WorkerLb,
        active: &impl Fn(u32) -> u64,
        (hash, attempt): (Option<u64>, u32),
        loads: Option<&[u32]>,
    ) -> (Option<u32>, bool) {
        let hashed =
            matches!(self.levels.first(), Some(Level { schedule: Schedule::Ring(_) | Schedule::Maglev(_), .. }));
        let hash = if hashed { hash.unwrap_or_else(|| fastrand::u64(..)) } else { 0 };
        let position = match (loads, self.loaded) {
            (None, Loaded::None) => return (None, self.total_panic),
            (None, Loaded::One(position)) => position,
            (loads, _) => {
                // A hash picks its level as it picks its host, as in Envoy.
                let draw = if hashed { (hash % 100) as u32 } else { fastrand::u32(..100) };
                let position = match loads {
                    Some(loads) => draw_level(draw, loads.iter().copied()),
                    None => draw_level(draw, self.levels.iter().map(|l| l.load)),
                };
                match position {
                    Some(position) if position < self.levels.len() => position,
                    _ => return (None, self.total_panic),
                }
            }
        };
        let level = &self.levels[position];
        if state.edf.len() < self.levels.len() {
            state.edf.resize_with(self.levels.len(), || None);
        }
        (level.schedule.pick(&mut state.cursor, &mut state.edf[position], active, (hash, attempt)), level.panic)
    }
}

/// The level a draw from 0 to 99 falls in, by the levels' loads (which add up to 100).
fn draw_level(mut draw: u32, loads: impl Iterator<Item = u32>) -> Option<usize> {
    for (position, load) in loads.enumerate() {
        match draw.checked_sub(load) {
            Some(rest) => draw = rest,
            None => return Some(position),
        }
    }
    None
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
    use std::cell::RefCell;

    use super::*;

    fn idle(_: u32) -> u64 {
        0
    }

    fn index_key(index: u32) -> String {
        index.to_string()
    }

    /// `n` picks from a fresh worker state, the cursor at 0.
    fn picks(schedule: &Schedule, n: usize, active: &impl Fn(u32) -> u64) -> Vec<u32> {
        let (mut cursor, mut edf) = (0, None);
        (0..n).map(|_| schedule.pick(&mut cursor, &mut edf, active, (0, 0)).unwrap()).collect()
    }

    fn counts(picked: &[u32], hosts: usize) -> Vec<usize> {
        let mut counts = vec![0; hosts];
        for &index in picked {
            counts[index as usize] += 1;
        }
        counts
    }

    #[test]
    fn equal_weights_alternate() {
        let s = Schedule::new(LbKind::RoundRobin, &[(0, 1), (1, 1), (2, 1)], &index_key);
        assert_eq!(picks(&s, 6, &idle), [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weights_are_honoured_and_interleaved() {
        let s = Schedule::new(LbKind::RoundRobin, &[(0, 3), (1, 1)], &index_key);
        assert_eq!(counts(&picks(&s, 400, &idle), 2), [300, 100]);
        let s = Schedule::new(LbKind::RoundRobin, &[(0, 1), (1, 1), (2, 2)], &index_key);
        let order = picks(&s, 8, &idle);
        // Within one cycle the heavy host never takes two turns in a row.
        assert!(order[..4].windows(2).all(|w| w[0] != w[1]), "a heavy host's turns are spread, not bunched: {order:?}");
        assert_eq!(order.iter().filter(|&&h| h == 2).count(), 4);
    }

    #[test]
    fn huge_weights_are_scaled_without_dropping_hosts() {
        let Schedule::Order { order, .. } = Schedule::new(LbKind::RoundRobin, &[(0, 1_000_000), (1, 1)], &index_key)
        else {
            panic!("round robin keeps an order");
        };
        assert!(order.len() as u64 <= MAX_SCHEDULE_LEN + 1);
        assert!(order.contains(&1));
    }

    fn least_request(choice_count: u32, active_request_bias: f64) -> LbKind {
        LbKind::LeastRequest(LeastRequest { choice_count, active_request_bias })
    }

    #[test]
    fn least_request_over_equal_weights_takes_the_less_busy_of_its_choices() {
        let s = Schedule::new(least_request(2, 1.0), &[(0, 1), (1, 1), (2, 1)], &index_key);
        assert!(matches!(s, Schedule::Choices { choices: 2, .. }), "{s:?}");
        // Host 0 busy: it is picked only when both draws land on it, 1 in 9.
        let busy = |i: u32| if i == 0 { 5 } else { 0 };
        let spread = counts(&picks(&s, 9_000, &busy), 3);
        assert!((700..1_300).contains(&spread[0]), "{spread:?}");
        // With as many draws as it takes to see every host, the busy one never wins.
        let s = Schedule::new(least_request(64, 1.0), &[(0, 1), (1, 1), (2, 1)], &index_key);
        assert_eq!(counts(&picks(&s, 1_000, &busy), 3)[0], 0);
        // All idle: the first draw stands, so the spread is even.
        let spread = counts(&picks(&s, 9_000, &idle), 3);
        assert!(spread.iter().all(|c| (2_700..3_300).contains(c)), "{spread:?}");
    }

    #[test]
    fn least_request_over_unequal_weights_follows_the_weights_scaled_by_load() {
        // Weights whose reciprocals binary fractions hold exactly, so no deadlines tie by
        // rounding.
        let s = Schedule::new(least_request(2, 1.0), &[(0, 4), (1, 1)], &index_key);
        assert!(matches!(s, Schedule::Weighted { .. }), "{s:?}");
        // Idle hosts: exactly the weights, interleaved.
        let order = picks(&s, 400, &idle);
        assert_eq!(counts(&order, 2), [320, 80]);
        assert!(order.windows(5).all(|w| w.contains(&1)), "the light host comes every fifth pick: {order:?}");
        // Each request stays active: a host's next turn comes `(active + 1) / weight` after
        // its last, so its n-th comes at about n² / (2 × weight), and the load splits as
        // the square roots of the weights, 2 : 1 here.
        let active = RefCell::new([0u64; 2]);
        let (mut cursor, mut edf) = (0, None);
        for _ in 0..400 {
            let picked = s.pick(&mut cursor, &mut edf, &|i| active.borrow()[i as usize], (0, 0)).unwrap();
            active.borrow_mut()[picked as usize] += 1;
        }
        let [heavy, light] = *active.borrow();
        assert!((257..=277).contains(&heavy) && heavy + light == 400, "{heavy} / {light}");
        // A bias of 0 ignores load: plain weighted round robin.
        let s = Schedule::new(least_request(2, 0.0), &[(0, 4), (1, 1)], &index_key);
        let busy = |i: u32| if i == 0 { 1_000 } else { 0 };
        assert_eq!(counts(&picks(&s, 400, &busy), 2), [320, 80]);
        // A busy heavy host under the default bias gives way to the idle light one.
        let s = Schedule::new(least_request(2, 1.0), &[(0, 4), (1, 1)], &index_key);
        assert!(counts(&picks(&s, 400, &busy), 2)[1] > 390);
    }

    fn candidates(spec: &[(u32, bool)]) -> Vec<Candidate> {
        spec.iter()
            .enumerate()
            .map(|(i, &(priority, healthy))| Candidate { index: i as u32, priority, weight: 1, healthy })
            .collect()
    }

    fn spread(selector: &HostSelector, picks: usize, hosts: usize) -> Vec<usize> {
        let mut state = WorkerLb { cursor: 0, edf: Vec::new() };
        let mut counts = vec![0; hosts];
        for _ in 0..picks {
            counts[selector.pick(&mut state, &idle, (None, 0), None).0.unwrap() as usize] += 1;
        }
        counts
    }

    #[test]
    fn a_healthy_first_priority_takes_everything() {
        let s =
            HostSelector::new(LbKind::RoundRobin, &candidates(&[(0, true), (0, true), (1, true)]), 140, 50, &index_key);
        assert_eq!(spread(&s, 100, 3), [50, 50, 0]);
    }

    #[test]
    fn a_degraded_first_priority_spills_over_by_the_overprovisioning_factor() {
        // P0: 1 of 2 healthy → worth 70 %; P1 healthy takes the remaining 30 %.
        let hosts = candidates(&[(0, true), (0, false), (1, true)]);
        let s = HostSelector::new(LbKind::RoundRobin, &hosts, 140, 50, &index_key);
        let counts = spread(&s, 10_000, 3);
        assert_eq!(counts[1], 0, "the unhealthy host gets nothing");
        assert!((6_500..7_500).contains(&counts[0]), "{counts:?}");
        // With a factor of 100, P0 is worth only 50 %.
        let s = HostSelector::new(LbKind::RoundRobin, &hosts, 100, 50, &index_key);
        let counts = spread(&s, 10_000, 3);
        assert!((4_500..5_500).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn panic_mode_balances_over_all_hosts_of_a_level() {
        // 1 of 3 healthy in the only level: below 50 %, so all three take traffic.
        let hosts = candidates(&[(0, true), (0, false), (0, false)]);
        let s = HostSelector::new(LbKind::RoundRobin, &hosts, 140, 50, &index_key);
        assert!(s.pick(&mut WorkerLb::default(), &idle, (None, 0), None).1, "the pick reports panic mode");
        assert_eq!(spread(&s, 300, 3), [100, 100, 100]);
        // A threshold of 34 % puts 1 of 3 (33.3 %) in panic, 33 % does not.
        assert_eq!(
            spread(&HostSelector::new(LbKind::RoundRobin, &hosts, 140, 34, &index_key), 300, 3),
            [100, 100, 100]
        );
        assert_eq!(spread(&HostSelector::new(LbKind::RoundRobin, &hosts, 140, 33, &index_key), 300, 3), [300, 0, 0]);
    }

    #[test]
    fn with_nothing_healthy_every_level_is_in_panic_and_takes_load_by_its_hosts() {
        let hosts = candidates(&[(0, false), (1, false), (1, false), (1, false)]);
        let counts = spread(&HostSelector::new(LbKind::RoundRobin, &hosts, 140, 50, &index_key), 10_000, 4);
        assert!((2_000..3_000).contains(&counts[0]), "P0 has a quarter of the hosts: {counts:?}");
        assert!(counts[1..].iter().all(|c| (2_000..3_000).contains(c)), "{counts:?}");
    }

    #[test]
    fn a_panic_threshold_of_0_turns_panic_off() {
        // 1 of 3 healthy: only that one serves.
        let s = HostSelector::new(
            LbKind::RoundRobin,
            &candidates(&[(0, true), (0, false), (0, false)]),
            140,
            0,
            &index_key,
        );
        assert!(!s.pick(&mut WorkerLb::default(), &idle, (None, 0), None).1);
        assert_eq!(spread(&s, 30, 3), [30, 0, 0]);
        // Nothing healthy: nothing to pick (Envoy's "no healthy upstream").
        let s = HostSelector::new(LbKind::RoundRobin, &candidates(&[(0, false), (1, false)]), 140, 0, &index_key);
        assert_eq!(s.pick(&mut WorkerLb::default(), &idle, (None, 0), None), (None, false));
    }

    #[test]
    fn loads_without_the_excluded_priorities_follow_health() {
        // Priority 0 whole, 1 at half health (70 % with overprovisioning), 2 whole.
        let hosts = candidates(&[(0, true), (1, true), (1, false), (2, true)]);
        let s = HostSelector::new(LbKind::RoundRobin, &hosts, 140, 50, &index_key);
        assert_eq!(s.loads_without(0b001).as_deref(), Some(&[0, 70, 30][..]));
        assert_eq!(s.loads_without(0b011).as_deref(), Some(&[0, 0, 100][..]));
        assert_eq!(s.loads_without(0b111), None);
        // A level with no load of its own takes the retry's.
        let picked = s.pick(&mut WorkerLb::default(), &idle, (None, 0), Some(&[0, 0, 100]));
        assert_eq!(picked, (Some(3), false));
    }

    #[test]
    fn a_cluster_without_hosts_is_in_panic() {
        let s = HostSelector::new(LbKind::RoundRobin, &[], 140, 50, &index_key);
        assert_eq!(s.pick(&mut WorkerLb::default(), &idle, (None, 0), None), (None, true));
        let s = HostSelector::new(LbKind::RoundRobin, &[], 140, 0, &index_key);
        assert_eq!(s.pick(&mut WorkerLb::default(), &idle, (None, 0), None), (None, false));
    }

    #[test]
    fn empty_has_no_pick() {
        for kind in [LbKind::RoundRobin, LbKind::Random, least_request(2, 1.0)] {
            assert_eq!(Schedule::new(kind, &[], &index_key).pick(&mut 0, &mut None, &idle, (0, 0)), None);
        }
    }
}
