//! The bounded cache of issued managed-identity tokens, keyed by (lower-case client id, resource): a repeat
//! request gets the same token with a smaller `expires_in`, as from the real service. The key holds a
//! client-chosen string (`resource`), so the cache is bounded: at most [`TOKEN_CACHE_CAPACITY`] entries, the
//! least recently used one dropped to make room (a later request for it simply gets a fresh token). Only the
//! token handler (`token`) and the state's reset/unassign use it. [`CachedToken`], its entry, is defined here so
//! that the state does not depend on the token handler.

use std::collections::HashMap;

/// A token the service handed out and will hand out again until it nears expiry.
#[derive(Debug, Clone)]
pub struct CachedToken {
    pub access_token: String,
    pub not_before: i64,
    pub expires_on: i64,
    /// The last response body rendered from this token: the second it was rendered in (`expires_in`
    /// changes every second) and the client id it names. Serialising the ~1.6 KB body (escaping the token)
    /// was the largest part of a cached token request's handler time (measured by `just bench`).
    pub(crate) rendered: Option<(i64, String, axum::body::Bytes)>,
}

impl CachedToken {
    /// A token as issued (its response body is rendered on first use).
    pub fn new(access_token: String, not_before: i64, expires_on: i64) -> Self {
        CachedToken {
            access_token,
            not_before,
            expires_on,
            rendered: None,
        }
    }
}

/// Most (identity, resource) pairs cached at once (~3 KB each: token plus rendered body, so ~3 MB in all).
/// A VM's clients ask for a handful of resources; only clients inventing resource spellings reach it.
pub const TOKEN_CACHE_CAPACITY: usize = 1024;

/// (lower-case client id, resource as requested).
pub type TokenKey = (String, String);

/// A least-recently-used map of tokens with a fixed capacity.
#[derive(Debug)]
pub struct TokenCache {
    capacity: usize,
    /// Use counter: the entry with the smallest stamp is the least recently used.
    clock: u64,
    entries: HashMap<TokenKey, (CachedToken, u64)>,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache::with_capacity(TOKEN_CACHE_CAPACITY)
    }
}

impl TokenCache {
    /// A cache of at most `capacity` entries (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        TokenCache {
            capacity: capacity.max(1),
            clock: 0,
            entries: HashMap::new(),
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The cached token for `key`, marked as just used.
    pub fn get_mut(&mut self, key: &TokenKey) -> Option<&mut CachedToken> {
        let now = self.tick();
        self.entries.get_mut(key).map(|(token, used)| {
            *used = now;
            token
        })
    }

    /// Caches `token` under `key`, dropping the least recently used entry when the cache is full. The scan
    /// for it is linear, but only runs when a new token was just signed (RSA signing costs far more).
    pub fn insert(&mut self, key: TokenKey, token: CachedToken) {
        let now = self.tick();
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(key, (token, now));
    }

    /// Keeps only the entries for which `keep` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(&TokenKey) -> bool) {
        self.entries.retain(|k, _| keep(k));
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(n: i64) -> CachedToken {
        CachedToken::new(format!("t{n}"), n, n + 100)
    }

    fn key(r: &str) -> TokenKey {
        ("client".into(), r.into())
    }

    #[test]
    fn least_recently_used_entry_goes_first() {
        let mut c = TokenCache::with_capacity(2);
        c.insert(key("a"), token(1));
        c.insert(key("b"), token(2));
        assert!(c.get_mut(&key("a")).is_some());
        c.insert(key("c"), token(3));
        assert_eq!(c.len(), 2);
        assert!(c.get_mut(&key("b")).is_none(), "b was least recently used");
        assert!(c.get_mut(&key("a")).is_some());
        assert!(c.get_mut(&key("c")).is_some());
        // Replacing an entry does not evict another.
        c.insert(key("c"), token(4));
        assert_eq!(c.len(), 2);
        assert_eq!(c.get_mut(&key("c")).map(|t| t.expires_on), Some(104));
    }

    #[test]
    fn many_resource_spellings_stay_bounded() {
        let mut c = TokenCache::default();
        for i in 0..20_000 {
            let spelling: String = "https://management.azure.com/"
                .chars()
                .enumerate()
                .map(|(j, ch)| {
                    if (i >> (j % 14)) & 1 == 1 {
                        ch.to_ascii_uppercase()
                    } else {
                        ch
                    }
                })
                .collect();
            c.insert(key(&format!("{spelling}{i}")), token(i));
        }
        assert_eq!(c.len(), TOKEN_CACHE_CAPACITY);
    }
}
