//! Upload budgets per user, across their connections and REST calls on
//! this edge: how many uploads and how many bytes a minute (each a token
//! bucket holding one minute's worth). An upload is admitted while both
//! have something left, and its bytes are charged once staged, so one
//! user cannot fill the staging store for everyone.

use crate::rate::{Bucket, Keyed};
use natter_shared::ids::UserId;
use std::time::Duration;

/// Users remembered before the idle ones are forgotten.
const MAX_USERS: usize = 100_000;

pub struct UploadBudgets {
    per_min: u32,
    bytes_per_min: u64,
    users: Keyed<UserId, Budget>,
}

struct Budget {
    uploads: Bucket,
    bytes: Bucket,
}

impl UploadBudgets {
    pub fn new(per_min: u32, bytes_per_min: u64) -> Self {
        // A budget untouched for a minute is full again.
        UploadBudgets { per_min, bytes_per_min, users: Keyed::new(MAX_USERS, Duration::from_secs(60)) }
    }

    fn with<T>(&self, user: UserId, f: impl FnOnce(&mut Budget) -> T) -> T {
        let init = || Budget {
            uploads: Bucket::with_burst(f64::from(self.per_min) / 60.0, f64::from(self.per_min)),
            bytes: Bucket::with_burst(self.bytes_per_min as f64 / 60.0, self.bytes_per_min as f64),
        };
        self.users.with(user, init, f)
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
