//! Locking habits: short critical sections under `std::sync::Mutex`, which every service
//! keeps consistent at every step, so a lock poisoned by a panic elsewhere is still usable.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, ignoring poisoning (see the module docs).
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
