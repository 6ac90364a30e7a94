//! Upload budgets per user, across their connections and REST calls on
//! this edge: how many uploads and how many bytes a minute (each a token
//! bucket holding one minute's worth). An upload is admitted while both
//! have something left, and its bytes are charged once staged, so one
//! user cannot fill the staging store for everyone.

use crate::limits::Bucket;
use natter_shared::ids::UserId;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Users remembered before the idle ones are forgotten.
const MAX_USERS: usize = 100_000;

pub struct UploadBudgets {
    per_min: u32,
    bytes_per_min: u64,
    users: Mutex<HashMap<UserId, Budget>>,
}

struct Budget {
    uploads: Bucket,
    bytes: Bucket,
    at: Instant,
}

impl UploadBudgets {
    pub fn new(per_min: u32, bytes_per_min: u64) -> Self {
        UploadBudgets { per_min, bytes_per_min, users: Mutex::new(HashMap::new()) }
    }

    fn with<T>(&self, user: UserId, f: impl FnOnce(&mut Budget) -> T) -> T {
        let now = Instant::now();
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if users.len() >= MAX_USERS {
            // A budget untouched for a minute is full again.
            users.retain(|_, b| now.duration_since(b.at) < Duration::from_secs(60));
        }
        let b = users.entry(user).or_insert_with(|| Budget {
            uploads: Bucket::with_burst(f64::from(self.per_min) / 60.0, f64::from(self.per_min)),
            bytes: Bucket::with_burst(self.bytes_per_min as f64 / 60.0, self.bytes_per_min as f64),
            at: now,
        });
        b.at = now;
        f(b)
    }

    /// Takes one upload from `user`'s budget, unless an upload or all its
    /// bytes are spent.
    pub fn admit(&self, user: UserId) -> bool {
        self.with(user, |b| b.bytes.available() >= 1.0 && b.uploads.take())
    }

    /// Charges what an admitted upload staged.
    pub fn charge(&self, user: UserId, bytes: u64) {
        self.with(user, |b| b.bytes.spend(bytes as f64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_and_bytes_are_both_bounded() {
        let u = UserId(mongodb::bson::oid::ObjectId::new());
        let b = UploadBudgets::new(5, 1000);
        assert_eq!((0..10).filter(|_| b.admit(u)).count(), 5);
        let v = UserId(mongodb::bson::oid::ObjectId::new());
        assert!(b.admit(v));
        b.charge(v, 5000);
        assert!(!b.admit(v), "bytes spent (in debt)");
    }
}
