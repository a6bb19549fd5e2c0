//! Envoy's consistent hashing load balancers, built the way Envoy builds them, step for step,
//! so that a key lands on the same host in both. Ring hash: each host owns points on a ring
//! of 64-bit hashes (of `<address>_<n>`, by xxHash64), as many as its share of the weight
//! asks; a request's hash goes to the first point at or after it. Maglev: a prime-sized
//! table that the hosts fill in turn along their own permutations, a heavier host more often;
//! a request's hash indexes it.

/// xxHash64 (seed 0) of the concatenation of `parts`, as Envoy's `HashUtil::xxHash64` hashes
/// a span of strings.
pub fn xxhash64(parts: &[&[u8]]) -> u64 {
    match parts {
        [one] => xxh64(one, 0),
        _ => xxh64(&parts.concat(), 0),
    }
}

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

fn round(acc: u64, input: u64) -> u64 {
    acc.wrapping_add(input.wrapping_mul(P2)).rotate_left(31).wrapping_mul(P1)
}

fn merge_round(acc: u64, value: u64) -> u64 {
    (acc ^ round(0, value)).wrapping_mul(P1).wrapping_add(P4)
}

fn read64(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"))
}

fn xxh64(input: &[u8], seed: u64) -> u64 {
    let mut rest = input;
    let mut hash = if input.len() >= 32 {
        let mut v = [seed.wrapping_add(P1).wrapping_add(P2), seed.wrapping_add(P2), seed, seed.wrapping_sub(P1)];
        while rest.len() >= 32 {
            for (i, lane) in v.iter_mut().enumerate() {
                *lane = round(*lane, read64(&rest[i * 8..]));
            }
            rest = &rest[32..];
        }
        let mut hash = v[0]
            .rotate_left(1)
            .wrapping_add(v[1].rotate_left(7))
            .wrapping_add(v[2].rotate_left(12))
            .wrapping_add(v[3].rotate_left(18));
        for lane in v {
            hash = merge_round(hash, lane);
        }
        hash
    } else {
        seed.wrapping_add(P5)
    };
    hash = hash.wrapping_add(input.len() as u64);
    while rest.len() >= 8 {
        hash ^= round(0, read64(rest));
        hash = hash.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
        rest = &rest[8..];
    }
    if rest.len() >= 4 {
        let word = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
        hash ^= u64::from(word).wrapping_mul(P1);
        hash = hash.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
        rest = &rest[4..];
    }
    for &byte in rest {
        hash ^= u64::from(byte).wrapping_mul(P5);
        hash = hash.rotate_left(11).wrapping_mul(P1);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(P2);
    hash ^= hash >> 29;
    hash = hash.wrapping_mul(P3);
    hash ^ (hash >> 32)
}

/// A ring over one priority level's eligible hosts: points sorted by hash, each naming a
/// host (an index into the cluster's).
#[derive(Debug)]
pub struct Ring {
    points: Box<[(u64, u32)]>,
}

impl Ring {
    /// The ring for hosts `(index, weight, key)`: their weights normalized to shares of 1, the
    /// ring scaled so that the lightest host gets a whole number of points (at least
    /// `min_size` in all, at most `max_size`), points handed out by running sums so that the
    /// fractions add up, as Envoy's ring does.
    pub fn new(hosts: &[(u32, u32, String)], min_size: u64, max_size: u64) -> Ring {
        let sum: u64 = hosts.iter().map(|&(_, weight, _)| u64::from(weight)).sum();
        if hosts.is_empty() || sum == 0 {
            return Ring { points: Box::new([]) };
        }
        let shares: Vec<f64> = hosts.iter().map(|&(_, weight, _)| f64::from(weight) * 1.0 / sum as f64).collect();
        let min_share = shares.iter().copied().fold(1.0, f64::min);
        let scale = ((min_share * min_size as f64).ceil() / min_share).min(max_size as f64);
        let mut points = Vec::with_capacity(scale.ceil() as usize);
        let (mut current, mut target) = (0.0, 0.0);
        let mut key = String::new();
        for ((index, _, host_key), share) in hosts.iter().zip(shares) {
            target += scale * share;
            let mut n = 0u64;
            while current < target {
                key.clear();
                key.push_str(host_key);
                key.push('_');
                key.push_str(itoa::Buffer::new().format(n));
                points.push((xxh64(key.as_bytes(), 0), *index));
                n += 1;
                current += 1.0;
            }
        }
        points.sort_unstable_by_key(|&(hash, _)| hash);
        Ring { points: points.into_boxed_slice() }
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The host owning the first point at or after `hash` (wrapping to the first point);
    /// `attempt` moves that many points on, for a retry that must avoid the hosts tried.
    pub fn pick(&self, hash: u64, attempt: u32) -> Option<u32> {
        if self.points.is_empty() {
            return None;
        }
        // Ketama's search, as Envoy runs it: the first point whose hash is >= `hash` and whose
        // predecessor's is < it; past the end, the first point.
        let len = self.points.len() as i64;
        let (mut low, mut high) = (0i64, len);
        let mut mid;
        loop {
            mid = (low + high) / 2;
            if mid == len {
                mid = 0;
                break;
            }
            let at = self.points[mid as usize].0;
            let before = if mid == 0 { 0 } else { self.points[mid as usize - 1].0 };
            if hash <= at && hash > before {
                break;
            }
            if at < hash {
                low = mid + 1;
            } else {
                high = mid - 1;
            }
            if low > high {
                mid = 0;
                break;
            }
        }
        let slot = (mid as u64 + u64::from(attempt)) % len as u64;
        Some(self.points[slot as usize].1)
    }
}

/// A Maglev table over one priority level's eligible hosts: each slot names a host (an
/// index into the cluster's).
#[derive(Debug)]
pub struct Maglev {
    table: Box<[u32]>,
}

impl Maglev {
    /// The table of `size` (a prime) for hosts `(index, weight, key)`, filled as Envoy fills
    /// it: hosts in the order of their keys, each with its permutation (offset: the key's
    /// xxHash64 mod `size`; skip: its xxHash64 with seed 1, mod `size - 1`, plus 1), taking
    /// the next free slot on its permutation in each round its weight allows.
    pub fn new(hosts: &[(u32, u32, String)], size: u64) -> Maglev {
        let sum: u64 = hosts.iter().map(|&(_, weight, _)| u64::from(weight)).sum();
        if hosts.is_empty() || sum == 0 {
            return Maglev { table: Box::new([]) };
        }
        if let [(index, ..)] = hosts {
            return Maglev { table: Box::new([*index]) };
        }
        struct Entry {
            index: u32,
            skip: u64,
            weight: f64,
            target: f64,
            next: u64,
        }
        let mut sorted: Vec<&(u32, u32, String)> = hosts.iter().collect();
        sorted.sort_by(|a, b| a.2.cmp(&b.2));
        let mut entries: Vec<Entry> = sorted
            .iter()
            .map(|(index, weight, key)| Entry {
                index: *index,
                skip: xxh64(key.as_bytes(), 1) % (size - 1) + 1,
                weight: f64::from(*weight) * 1.0 / sum as f64,
                target: 0.0,
                next: xxh64(key.as_bytes(), 0) % size,
            })
            .collect();
        let max_weight = entries.iter().map(|e| e.weight).fold(0.0, f64::max);
        let mut table: Vec<Option<u32>> = vec![None; size as usize];
        let mut filled = 0;
        let mut round = 1u32;
        while filled < size {
            for entry in &mut entries {
                if filled == size {
                    break;
                }
                if f64::from(round) * entry.weight < entry.target {
                    continue;
                }
                entry.target += max_weight;
                let mut slot = entry.next;
                while table[slot as usize].is_some() {
                    slot = (slot + entry.skip) % size;
                }
                table[slot as usize] = Some(entry.index);
                entry.next = (slot + entry.skip) % size;
                filled += 1;
            }
            round += 1;
        }
        Maglev { table: table.into_iter().map(|slot| slot.expect("every slot filled")).collect() }
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The host in the slot of `hash`; a retry's `attempt` xors the hash with `-attempt`, as
    /// Envoy does.
    pub fn pick(&self, hash: u64, attempt: u32) -> Option<u32> {
        if self.table.is_empty() {
            return None;
        }
        let hash = if attempt > 0 { hash ^ u64::from(attempt).wrapping_neg() } else { hash };
        Some(self.table[(hash % self.table.len() as u64) as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xxhash64_matches_the_reference() {
        // Reference values of XXH64 with seed 0.
        assert_eq!(xxhash64(&[b""]), 0xEF46_DB37_51D8_E999);
        assert_eq!(xxhash64(&[b"a"]), 0xD24E_C4F1_A98C_6E5B);
        assert_eq!(xxhash64(&[b"abc"]), 0x44BC_2CF5_AD77_0999);
        let long = b"Nobody inspects the spammish repetition, and xxHash has four lanes to fill.";
        assert_eq!(xxhash64(&[&long[..30], &long[30..]]), xxh64(long, 0));
        assert_eq!(xxh64(b"", 1), 0xD5AF_BA13_36A3_BE4B);
        assert_eq!(xxh64(&[b'a'; 40], 1), 0x2502_7D69_FFD1_D46D);
    }

    #[test]
    fn maglev_shares_the_table_by_weight() {
        let hosts = [(0, 1, "a".to_owned()), (1, 2, "b".to_owned()), (2, 1, "c".to_owned())];
        let maglev = Maglev::new(&hosts, 65537);
        let count = |index| maglev.table.iter().filter(|&&i| i == index).count() as f64 / 65537.0;
        assert!((count(1) - 0.5).abs() < 0.01 && (count(0) - 0.25).abs() < 0.01, "{} {}", count(0), count(1));
        let one = Maglev::new(&hosts[..1], 65537);
        assert_eq!((one.pick(12345, 0), one.pick(1, 3)), (Some(0), Some(0)));
        assert_eq!(maglev.pick(7, 0), Some(maglev.table[7]));
        assert_eq!(maglev.pick(7, 1), Some(maglev.table[(7 ^ u64::MAX) as usize % 65537]));
    }

    #[test]
    fn weights_share_the_ring() {
        let hosts = [(0, 1, "a".to_owned()), (1, 2, "b".to_owned()), (2, 1, "c".to_owned())];
        let ring = Ring::new(&hosts, 1024, 8 << 20);
        let count = |index| ring.points.iter().filter(|&&(_, i)| i == index).count();
        assert_eq!((count(0), count(1), count(2)), (256, 512, 256));
        // A hash maps to the owner of the first point at or after it, past the end to the first.
        let (first, last) = (ring.points[0], ring.points[ring.points.len() - 1]);
        assert_eq!(ring.pick(first.0, 0), Some(first.1));
        assert_eq!(ring.pick(last.0 + 1, 0), Some(first.1));
        assert_eq!(ring.pick(ring.points[5].0 - 1, 0), Some(ring.points[5].1));
        assert_eq!(ring.pick(ring.points[5].0 - 1, 2), Some(ring.points[7].1));
    }

    #[test]
    fn small_rings_keep_whole_points() {
        let hosts = [(0, 1, "a".to_owned()), (1, 1, "b".to_owned()), (2, 1, "c".to_owned())];
        let ring = Ring::new(&hosts, 4, 6);
        // 3 hosts, at least 4 points: 2 each (6), within the maximum.
        assert_eq!(ring.points.len(), 6);
        assert!(Ring::new(&[], 1024, 1024).pick(1, 0).is_none());
    }
}
