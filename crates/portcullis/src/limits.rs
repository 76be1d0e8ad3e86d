//! Traffic limits per route: token-bucket rate limits (per client address or per
//! user) and a cap on concurrent requests per client address. Rate limits are counted
//! on this replica, or in Redis when configured so that every replica shares them;
//! if Redis cannot answer quickly the gateway counts locally for a while instead,
//! and says so: it neither fails open nor holds requests waiting on Redis.

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
        if shard.inserts.is_multiple_of(4096) {
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

/// How long one Redis call may take before the request is counted locally instead.
const REDIS_TIMEOUT: Duration = Duration::from_millis(100);
/// After a failure, Redis is left alone this long (requests are counted locally).
const REDIS_BACKOFF: Duration = Duration::from_secs(5);

/// A token bucket in Redis, atomic in one script. The time comes from Redis, so
/// replicas with skewed clocks still share one bucket.
const BUCKET_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = math.ceil((1 - tokens) / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate) + 1000)
return {allowed, wait}
"#;

/// Rate limits shared by every replica, through Redis.
pub struct GlobalLimiter {
    connection: redis::aio::ConnectionManager,
    script: redis::Script,
    /// While set and in the future, Redis is skipped.
    backoff_until: Mutex<Option<Instant>>,
    fallbacks: prometheus_client::metrics::counter::Counter,
    up: prometheus_client::metrics::gauge::Gauge,
}

impl GlobalLimiter {
    /// Connects lazily: the gateway starts whether or not Redis is there.
    pub fn new(
        url: &str,
        fallbacks: prometheus_client::metrics::counter::Counter,
        up: prometheus_client::metrics::gauge::Gauge,
    ) -> Result<GlobalLimiter, String> {
        let client = redis::Client::open(url).map_err(|e| format!("rateLimits.redis: {e}"))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1);
        let connection = client
            .get_connection_manager_lazy(config)
            .map_err(|e| format!("rateLimits.redis: {e}"))?;
        up.set(1);
        Ok(GlobalLimiter {
            connection,
            script: redis::Script::new(BUCKET_SCRIPT),
            backoff_until: Mutex::new(None),
            fallbacks,
            up,
        })
    }

    /// `None` when Redis is not answering: count locally instead.
    pub async fn check(&self, route: &str, key: &str, limit: &RateLimit) -> Option<Result<(), Duration>> {
        {
            let backoff = self.backoff_until.lock().unwrap_or_else(|e| e.into_inner());
            if backoff.is_some_and(|until| Instant::now() < until) {
                self.fallbacks.inc();
                return None;
            }
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, format!("{route}\0{key}").as_bytes());
        let redis_key = format!(
            "portcullis:rl:{}",
            digest.as_ref()[..16]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let per_ms = limit.per_second() / 1000.0;
        let mut connection = self.connection.clone();
        let mut call = self.script.key(redis_key);
        call.arg(per_ms).arg(limit.burst);
        let answer =
            tokio::time::timeout(REDIS_TIMEOUT, call.invoke_async::<(i64, i64)>(&mut connection)).await;
        match answer {
            Ok(Ok((allowed, wait_ms))) => {
                self.up.set(1);
                Some(if allowed == 1 {
                    Ok(())
                } else {
                    Err(Duration::from_millis(wait_ms.max(1) as u64))
                })
            }
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_string(),
                };
                *self.backoff_until.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(Instant::now() + REDIS_BACKOFF);
                self.fallbacks.inc();
                self.up.set(0);
                tracing::warn!(error = %why, backoff = ?REDIS_BACKOFF, "Redis rate limiting unavailable: counting limits on this replica");
                None
            }
        }
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
