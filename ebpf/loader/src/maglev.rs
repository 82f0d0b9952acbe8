//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table of `m` slots (a
//! prime) filled from each backend's permutation of the slots, so every backend owns `m / n`
//! slots (±1) and removing one of `n` backends moves only the flows it owned, plus a small
//! fraction of others.
//!
//! Backends are identified by a stable name (`address:port`); the permutation depends only on
//! that name and `m`, so every node and every restart builds the same table.

/// Builds the table: `m` entries, each the index (into `names`) of the backend owning that
/// slot. Empty when `names` is empty. `m` must be a prime larger than `names.len()`.
pub fn build_table(names: &[String], m: u32) -> Vec<u32> {
    let n = names.len();
    if n == 0 || m == 0 {
        return Vec::new();
    }
    let m64 = m as u64;
    let perms: Vec<(u64, u64)> = names
        .iter()
        .map(|name| {
            let offset = hash64(name.as_bytes(), 0x5eed_0001) % m64;
            let skip = if m64 > 1 {
                hash64(name.as_bytes(), 0x5eed_0002) % (m64 - 1) + 1
            } else {
                1
            };
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; n];
    let mut table = vec![u32::MAX; m as usize];
    let mut filled = 0u32;
    'fill: loop {
        for (i, &(offset, skip)) in perms.iter().enumerate() {
            let mut c = (offset + next[i] * skip) % m64;
            while table[c as usize] != u32::MAX {
                next[i] += 1;
                c = (offset + next[i] * skip) % m64;
            }
            table[c as usize] = i as u32;
            next[i] += 1;
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    table
}

/// True when `n` is prime (Maglev needs a prime table size).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u32;
    while (d as u64) * (d as u64) <= n as u64 {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// A fixed 64-bit hash (FNV-1a with a seed, then the splitmix64 finalizer). Stable forever:
/// tables built by different Sluice versions and nodes must agree.
pub fn hash64(data: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.0.{}.{}:8080", i / 250, i % 250 + 1))
            .collect()
    }

    /// A deterministic stream of flow hashes (xorshift), like the kernel's 5-tuple hashes.
    fn flows(count: usize) -> Vec<u32> {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        (0..count)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 16) as u32
            })
            .collect()
    }

    #[test]
    fn primes() {
        assert!(is_prime(2) && is_prime(3) && is_prime(251) && is_prime(16381) && is_prime(65537));
        assert!(
            !is_prime(0) && !is_prime(1) && !is_prime(4) && !is_prime(16383) && !is_prime(65535)
        );
    }

    #[test]
    fn every_slot_is_filled_and_balanced() {
        let names = names(7);
        let t = build_table(&names, 251);
        assert_eq!(t.len(), 251);
        let mut counts = [0u32; 7];
        for &i in &t {
            counts[i as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(max - min <= 1, "unbalanced: {counts:?}");
    }

    #[test]
    fn empty_set_gives_empty_table() {
        assert!(build_table(&[], 251).is_empty());
    }

    #[test]
    fn same_names_same_table() {
        let a = build_table(&names(5), 16381);
        let b = build_table(&names(5), 16381);
        assert_eq!(a, b);
    }

    /// Removing 1 of 10 backends moves the flows of the removed backend (10%) plus only a
    /// little more: at most 12% of 10,000 flows.
    #[test]
    fn removing_one_of_ten_moves_about_a_tenth_of_flows() {
        let m = 16381;
        let all = names(10);
        let before = build_table(&all, m);
        let mut fewer = all.clone();
        let removed = fewer.remove(3);
        let after = build_table(&fewer, m);
        let flows = flows(10_000);
        let mut moved = 0;
        let mut on_removed = 0;
        for h in &flows {
            let slot = (*h % m) as usize;
            let b = &all[before[slot] as usize];
            let a = &fewer[after[slot] as usize];
            if b != a {
                moved += 1;
            }
            if *b == removed {
                on_removed += 1;
            }
        }
        let frac = moved as f64 / flows.len() as f64;
        println!(
            "maglev m={m}: removing 1 of 10 backends moved {moved} of 10000 flows ({:.2}%), \
             {on_removed} were on the removed backend",
            frac * 100.0
        );
        assert!(
            moved >= on_removed,
            "flows of the removed backend must move"
        );
        assert!(frac <= 0.12, "moved {:.2}% of flows", frac * 100.0);
    }

    /// Adding a backend takes roughly 1/(n+1) of the flows and leaves the rest in place.
    #[test]
    fn adding_one_backend_moves_about_its_share() {
        let m = 16381;
        let before_names = names(9);
        let after_names = names(10);
        let before = build_table(&before_names, m);
        let after = build_table(&after_names, m);
        let flows = flows(10_000);
        let moved = flows
            .iter()
            .filter(|h| {
                let s = (**h % m) as usize;
                before_names[before[s] as usize] != after_names[after[s] as usize]
            })
            .count();
        assert!(moved <= 1_200, "moved {moved} of 10000");
        assert!(
            moved >= 800,
            "the new backend must get its share, moved {moved}"
        );
    }
}
