//! Traffic limits per route: token-bucket rate limits (per client address or per
//! user) and a cap on concurrent requests per client address. Local to this replica.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portcullis_config::snapshot::RateLimit;

const SHARDS: usize = 32;
/// Buckets idle this long are full again and can be forgotten.
const IDLE: Duration = Duration::from_secs(120);

struct Bucket {
    tokens: f64,
    updated: Instant,
}

#[derive(Default)]
struct Shard {
    buckets: HashMap<(String, String), Bucket>,
    inserts: usize,
}

/// Token buckets, sharded by key so concurrent requests rarely contend.
pub struct RateLimiter {
    shards: Vec<Mutex<Shard>>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl RateLimiter {
    /// Takes one token for `key` on `route`; `Err` carries how long until one is back.
    pub fn check(&self, route: &str, key: &str, limit: &RateLimit) -> Result<(), Duration> {
        self.check_at(route, key, limit, Instant::now())
    }

    fn check_at(&self, route: &str, key: &str, limit: &RateLimit, now: Instant) -> Result<(), Duration> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (route, key).hash(&mut hasher);
        let shard = &self.shards[hasher.finish() as usize % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        let rate = limit.per_second();
        let burst = f64::from(limit.burst);
        shard.inserts += 1;
        if shard.inserts % 4096 == 0 {
            shard.buckets.retain(|_, b| now.duration_since(b.updated) < IDLE);
        }
        let bucket = shard
            .buckets
            .entry((route.to_string(), key.to_string()))
            .or_insert(Bucket {
                tokens: burst,
                updated: now,
            });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }
}

/// Concurrent requests per (route, client address).
#[derive(Default)]
pub struct ConcurrencyLimiter {
    counts: Mutex<HashMap<(String, IpAddr), u32>>,
}

/// Holds one slot until dropped (when the response body is finished).
pub struct Slot {
    limiter: Arc<ConcurrencyLimiter>,
    key: (String, IpAddr),
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.limiter.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

impl ConcurrencyLimiter {
    pub fn acquire(self: &Arc<Self>, route: &str, client: IpAddr, max: u32) -> Option<Slot> {
        let key = (route.to_string(), client);
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(key.clone()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            limiter: self.clone(),
            key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_config::snapshot::RateLimitKey;

    fn limit(rate: u32, burst: u32) -> RateLimit {
        RateLimit {
            rate,
            per: Duration::from_secs(1),
            burst,
            key: RateLimitKey::Client,
        }
    }

    #[test]
    fn buckets_allow_the_burst_then_refill_at_the_rate() {
        let l = RateLimiter::default();
        let t0 = Instant::now();
        let lim = limit(10, 3);
        for _ in 0..3 {
            assert!(l.check_at("r", "a", &lim, t0).is_ok());
        }
        let wait = l.check_at("r", "a", &lim, t0).unwrap_err();
        assert!(
            wait <= Duration::from_millis(100) && wait > Duration::ZERO,
            "{wait:?}"
        );
        // Other keys and other routes have their own buckets.
        assert!(l.check_at("r", "b", &lim, t0).is_ok());
        assert!(l.check_at("s", "a", &lim, t0).is_ok());
        // 100 ms later one token is back, not more.
        let t1 = t0 + Duration::from_millis(100);
        assert!(l.check_at("r", "a", &lim, t1).is_ok());
        assert!(l.check_at("r", "a", &lim, t1).is_err());
    }

    #[test]
    fn concurrency_slots_are_released_on_drop() {
        let l = Arc::new(ConcurrencyLimiter::default());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = l.acquire("r", ip, 2).unwrap();
        let _b = l.acquire("r", ip, 2).unwrap();
        assert!(l.acquire("r", ip, 2).is_none());
        assert!(l.acquire("r", "192.0.2.2".parse().unwrap(), 2).is_some());
        drop(a);
        assert!(l.acquire("r", ip, 2).is_some());
    }
}
